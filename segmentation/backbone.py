"""Zoo models as MMSeg backbones: any top-down model (AbSViT, AbS-RVT, AbS-FAN, ...) or its bottom-up
twin, giving dense multi-level maps.

A segmentation backbone differs from the classification model only in how it meets images of any size
and in what it returns, so that is all this module adds (``DenseBackbone``):

* the input is zero-padded at the bottom/right to a multiple of the coarsest map taken (a ViT's patch:
  mmseg's ``AdaptivePadding(padding='corner')``);
* the maps are the outputs of blocks ``out_indices`` of the reported pass, from the model's own
  ``forward_intermediates`` (a ViT's class token dropped), as ``(B, C, h, w)``; the last block, when
  taken, after the model's final norm ``norm`` over the channels, as the release takes it.

The reported pass is the top-down (second) one of a top-down model: the two passes, the prior and the
feedback are the zoo model's own; the prior is the learned prompt and alpha is the model's unless a
caller steers (``steering.py``). A bottom-up model has one pass. What a model is comes from the model
(``is_top_down``) and its registry record (``top_down``, ``bottom_up_twin``), never from its name.

Two registered backbones build the model:

* ``ZooBackbone(model=NAME, top_down=True, model_kwargs={...})``: ``timm.create_model`` of a zoo name
  (``top_down=False``: the name's recorded bottom-up twin, with the same arguments);
* ``AbSViTBackbone(top_down=..., embed_dim=..., ...)``: the release's segmentation ViT (``ViT_Top_Down``),
  whose position embedding is resampled to the padded grid with ``F.interpolate(mode='bicubic',
  align_corners=False)`` and no antialias (timm's resampler antialiases, which changes the features);
  ``top_down=False`` is its bottom-up twin (timm's ViT), the paper's ViT-B baseline.

The model is kept as ``vit`` (the release's name), so that checkpoints keep it under ``backbone.vit.``.
"""
import logging
from functools import partial
from typing import Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.models.vision_transformer import VisionTransformer

import models  # noqa: F401  (registers the zoo with timm)
from models.absvit import AbSViT
from models.pos_embed import resample_pos_embed  # the release's resampling; re-exported
from segmentation.exceptions import BackboneInputError
from segmentation.weights import load_classification_weights

__all__ = ['DenseBackbone', 'ZooBackbone', 'AbSViTBackbone', 'zoo_model_name', 'resample_pos_embed', 'pad_to_patch']


def pad_to_patch(x: torch.Tensor, patch: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad bottom/right to a multiple of the patch, as mmseg's AdaptivePadding 'corner'."""
    pad_h, pad_w = (-x.shape[-2]) % patch[0], (-x.shape[-1]) % patch[1]
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def zoo_model_name(name: str, top_down: bool) -> str:
    """The registered model to build: ``name`` when it is what ``top_down`` asks for, its recorded
    bottom-up twin when a bottom-up backbone is asked of a top-down name. timm's own models carry no
    record and are bottom-up."""
    if not timm.is_model(name):
        raise BackboneInputError(f'unknown model {name!r}: not registered with timm (is it a zoo name?)')
    record = timm.models.get_pretrained_cfg(name)
    recorded = bool(getattr(record, 'top_down', False))
    if recorded == top_down:
        return name
    twin = getattr(record, 'bottom_up_twin', None)
    if recorded and twin:
        return twin
    wanted, has = ('top-down', 'bottom-up') if top_down else ('bottom-up', 'top-down')
    raise BackboneInputError(f'a {wanted} backbone was asked of {name!r}, which is {has} and records no '
                             f'{wanted} variant: name a {wanted} model')


class DenseBackbone(BaseModule):
    """What every segmentation backbone does with its zoo model ``vit``: pad, run the reported pass and
    return the maps at ``out_indices`` (see the module docstring). Subclasses build the model.

    ``prior`` / ``alpha``: steering (``steering.py``), another prior than the learned prompt and another
    scale than the model's; ``None``: the model's own."""

    def __init__(self, vit: nn.Module, out_indices: Sequence[int], in_chans: int, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not hasattr(vit, 'forward_intermediates'):
            raise BackboneInputError(f'{type(vit).__name__} has no forward_intermediates: it cannot give dense maps')
        n = len(vit.feature_info)
        check_out_indices(out_indices, n)
        self.vit = vit
        self.top_down = bool(getattr(vit, 'is_top_down', False))
        self.out_indices = tuple(int(i) for i in out_indices)
        self.last_block = n - 1
        stride = max(int(vit.feature_info[i]['reduction']) for i in self.out_indices)
        self.stride = (stride, stride)
        self.in_chans = in_chans
        self.prior: Optional[torch.Tensor] = None  #: steering: another prior than the learned prompt
        self.alpha: Optional[float] = None  #: steering: another scale than the model's

    @property
    def width(self) -> int:
        """The channels of the final tokens: what a steering prior must have."""
        return self.vit.num_features

    def init_weights(self) -> None:
        """Load ``init_cfg``'s classification checkpoint, if any. Never timm's re-initialisation: the
        weights were initialised at construction, and mmengine calls this once more on resume."""
        if self.init_cfg and self.init_cfg.get('type') == 'Pretrained' and self.init_cfg.get('checkpoint'):
            report = load_classification_weights(self.vit, self.init_cfg['checkpoint'])
            print_log(report.summary(), logger='current')
        else:
            print_log(f'{type(self).__name__}: no classification checkpoint (init_cfg.checkpoint), the backbone '
                      'starts from random weights', logger='current', level=logging.WARNING)
        self._is_init = True

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, C, H, W) images of any size -> one (B, C_i, ceil(H/s), ceil(W/s_i)) map per out index, where
        ``s`` is the coarsest reduction taken and ``s_i`` the block's own."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise BackboneInputError(f'expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}')
        maps = self.vit.forward_intermediates(pad_to_patch(x, self.stride), **self._pass_options())
        return tuple(self._final_norm(m) if i == self.last_block else m for i, m in zip(self.out_indices, maps))

    def _pass_options(self) -> dict:
        """``forward_intermediates``' keywords: the maps at ``out_indices``, and the steering of a top-down
        model's reported pass."""
        options = dict(indices=list(self.out_indices), output_fmt='NCHW', intermediates_only=True)
        if self.top_down:
            options.update(top_down=True, prior=self.prior, alpha=self.alpha)
        elif self.prior is not None:
            raise BackboneInputError('a bottom-up backbone has no top-down pass to steer')
        return options

    def _final_norm(self, m: torch.Tensor) -> torch.Tensor:
        """The model's final norm over the channels of a (B, C, h, w) map (none where it has no ``norm``)."""
        norm = getattr(self.vit, 'norm', None)
        if norm is None:
            return m
        return norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def check_out_indices(out_indices: Sequence[int], n_blocks: int) -> None:
    """Block indices in ``[0, n_blocks)``: one clear error otherwise."""
    if not out_indices or any(not 0 <= i < n_blocks for i in out_indices):
        raise BackboneInputError(f'out_indices must be block indices in [0, {n_blocks}), got {tuple(out_indices)}')


@MODELS.register_module()
class ZooBackbone(DenseBackbone):
    """MMSeg backbone: the zoo model ``model`` (``timm.create_model(model, num_classes=0, **model_kwargs)``)
    or, with ``top_down=False``, its recorded bottom-up twin with the same arguments.

    ``out_indices`` are block indices of the model's ``feature_info`` (every block of a multi-stage
    model, in order); ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads a classification
    checkpoint (``segmentation.weights``).
    """

    def __init__(self, model: str, top_down: bool = True, out_indices: Sequence[int] = (0,),
                 model_kwargs: Optional[dict] = None, init_cfg: Optional[dict] = None):
        vit = timm.create_model(zoo_model_name(model, top_down), **{'num_classes': 0, **(model_kwargs or {})})
        first_conv = vit.get_submodule(vit.pretrained_cfg['first_conv'])  # the registry record names it
        super().__init__(vit, out_indices, first_conv.in_channels, init_cfg)


class ReleasePosEmbed:
    """Mixin for a timm ViT built with ``dynamic_img_size=True``: its patch embedding hands over an
    NHWC grid, and this adds the class token and the release's (not timm's) resampled embedding."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        pos = resample_pos_embed(self.pos_embed, (H, W), self.patch_embed.grid_size, self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], dim=1)
        return self.pos_drop(x + pos)


class SegAbSViT(ReleasePosEmbed, AbSViT):
    """The zoo's AbSViT with the release's position-embedding resampling."""


class SegViT(ReleasePosEmbed, VisionTransformer):
    """timm's ViT (the bottom-up twin) with the release's position-embedding resampling."""


@MODELS.register_module()
class AbSViTBackbone(DenseBackbone):
    """MMSeg backbone: the release's AbSViT (``top_down=True``) or its bottom-up twin ViT, four dense maps.

    Args mirror the release's config (ViT-B/16 at 512: embed_dim 768, depth 12, 12 heads, drop path
    0.1, out_indices (2, 5, 8, 11)). ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads a
    classification checkpoint of this project or of the release (``segmentation.weights``).
    """

    def __init__(self, top_down: bool = True, img_size: int = 512, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, drop_path_rate: float = 0.1, out_indices: Sequence[int] = (2, 5, 8, 11),
                 layernorm_eps: float = 1e-6, init_cfg: Optional[dict] = None):
        check_out_indices(out_indices, depth)  # before building a ViT-B
        cls = SegAbSViT if top_down else SegViT
        vit = cls(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                  num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
                  norm_layer=partial(nn.LayerNorm, eps=layernorm_eps), num_classes=0, global_pool='token',
                  class_token=True, dynamic_img_size=True)
        super().__init__(vit, out_indices, in_chans, init_cfg)
