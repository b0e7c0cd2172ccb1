"""Test-only registrations for timm's model suite (``tests/test_timm_suite.py``), so that its default
run covers every code path at micro cost:

* ``absvit_micro_patch4_28_gap_<mode>``: the micro AbSViT in every other ``td_mode``, and
  ``absvit_micro_patch4_28_token`` with class-token pooling (prefix tokens, final norm);
* ``dat_micro``, ``absdat_micro``, ``absdat_micro_feedback``: a 2-2-2-2 block DAT++ 16-32-64-128 wide
  at 128 px (every block type in every stage, the layout of ``tests/test_dat.py``'s golden micro);
* ``rvt_micro``, ``absrvt_micro``, ``absrvt_micro_maskatt``: a two-stage RVT (2 blocks at 32, 1 at 64
  wide, 64 px), so the pooling, the feedback bridge and maskatt's repeated mask all run;
* ``fan_micro``, ``absfan_micro``, ``absfan_micro_qkv``: a 3-block, 32-wide FAN-ViT at 64 px with
  its two class-attention blocks.

Imported by the suite's plugin in its subprocess, and by ``tests/test_backbone_contract.py``, whose
backbone contract runs on ``contract_models()``; the project's zoo (``models``) does not register these
names. Each calls the registered entrypoint of its full-size model with its own pretrained config (its
base's, with the micro input size and its own record: top-down or not, and its bottom-up twin) and the
micro arguments.
"""
from dataclasses import replace
from typing import List

import timm
from timm.models import generate_default_cfgs, register_model

import models

DAT_MICRO = dict(img_size=128, dim_stem=16, dims=[16, 32, 64, 128], depths=[2, 2, 2, 2], heads=[1, 1, 2, 4],
                 groups=[1, 1, 1, 2], stage_spec=[['N', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D']], drop_path_rate=0.)
DAT_MICRO_CFG = dict(input_size=(3, 128, 128), pool_size=(4, 4))

RVT_MICRO = dict(img_size=64, base_dims=[16, 16], depth=[2, 1], heads=[2, 4])
RVT_MICRO_CFG = dict(input_size=(3, 64, 64), pool_size=(2, 2))
FAN_MICRO = dict(img_size=64, embed_dim=32, depth=3, num_heads=2)
FAN_MICRO_CFG = dict(input_size=(3, 64, 64))

#: name -> (registered model it shrinks or re-moded, its arguments, its pretrained config beyond its base's)
VARIANTS = {
    **{f'absvit_micro_patch4_28_gap_{mode}': ('absvit_micro_patch4_28_gap', dict(td_mode=mode), None)
       for mode in models.TD_MODES if mode != 'abs'},
    'absvit_micro_patch4_28_token': ('absvit_micro_patch4_28_gap', dict(global_pool='token'), None),
    'dat_micro': ('dat_tiny', DAT_MICRO, DAT_MICRO_CFG),
    'absdat_micro': ('absdat_tiny', DAT_MICRO, DAT_MICRO_CFG),
    'absdat_micro_feedback': ('absdat_tiny', dict(DAT_MICRO, td_mode='feedback'), DAT_MICRO_CFG),
    'rvt_micro': ('rvt_tiny', RVT_MICRO, RVT_MICRO_CFG),
    'absrvt_micro': ('absrvt_tiny', RVT_MICRO, RVT_MICRO_CFG),
    'absrvt_micro_maskatt': ('absrvt_tiny', dict(RVT_MICRO, td_mode='maskatt'), RVT_MICRO_CFG),
    'fan_micro': ('fan_tiny_12_p16_224', FAN_MICRO, FAN_MICRO_CFG),
    'absfan_micro': ('absfan_tiny_12_p16_224', FAN_MICRO, FAN_MICRO_CFG),
    'absfan_micro_qkv': ('absfan_tiny_12_p16_224', dict(FAN_MICRO, td_mode='qkv'), FAN_MICRO_CFG),
}

#: top-down micro model -> its bottom-up twin; the class-token AbSViT has none (its twin would pool the token)
TWINS = {
    **{f'absvit_micro_patch4_28_gap_{mode}': 'vit_micro_patch4_28_gap' for mode in models.TD_MODES if mode != 'abs'},
    'absvit_micro_patch4_28_token': None,
    'absdat_micro': 'dat_micro', 'absdat_micro_feedback': 'dat_micro',
    'absrvt_micro': 'rvt_micro', 'absrvt_micro_maskatt': 'rvt_micro',
    'absfan_micro': 'fan_micro', 'absfan_micro_qkv': 'fan_micro',
}

__all__ = []
default_cfgs = generate_default_cfgs({
    name: replace(timm.models.get_pretrained_cfg(base), **(cfg or {}), top_down=name in TWINS,
                  bottom_up_twin=TWINS.get(name))
    for name, (base, _, cfg) in VARIANTS.items()})


def contract_models() -> List[str]:
    """The micro top-down model of every backbone in its default mode, with a bottom-up twin: what the
    backbone contract (``tests/test_backbone_contract.py``) runs on. The project's own micro AbSViT joins
    the entries of ``VARIANTS``, so a new backbone is picked up by adding its micro pair there."""
    names = ['absvit_micro_patch4_28_gap'] + [n for n, (_, args, _) in VARIANTS.items() if 'td_mode' not in args]
    return [n for n in names if timm.models.get_pretrained_cfg(n).bottom_up_twin]


def _entrypoint(name: str, base: str, args: dict):
    def create(pretrained: bool = False, pretrained_cfg=None, **kwargs):
        cfg = pretrained_cfg or timm.models.get_pretrained_cfg(name)
        return timm.models.model_entrypoint(base)(pretrained, pretrained_cfg=cfg, **{**args, **kwargs})
    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f'{base} with {args} (test-only registration).'
    return create


for _name, (_base, _args, _) in VARIANTS.items():
    globals()[_name] = register_model(_entrypoint(_name, _base, _args))
