"""The timm face of a backbone written as one pass: what DAT++, RVT and FAN-ViT have alike.

Such a backbone provides ``forward_pass(x, td=None, collect=False, depth=None) -> topdown.PassOutput``,
``pass_intermediates(x, td, indices, norm, stop_early, output_fmt) -> (final, intermediates)`` and
``forward_head``: the one-pass contract of ``topdown.TopDownMixin``, whose AbS variants run the same
methods with top-down signals ``td``. ``OnePassBackbone`` derives the plain (``td=None``) timm calls
from them, so that the plain model and its AbS variant report through one piece of code, and holds
the classifier handling these backbones share (they differ only in the classifier's name and the
poolings they know).

Also the registry's record of every model the project registers (``ModelCfg``, built by
``recorded_cfgs``): whether it is top-down and which registered model is its bottom-up twin, kept in
its timm ``pretrained_cfg`` so that tools (the benchmarks) read it instead of guessing from names.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from timm.models import PretrainedCfg

__all__ = ['OnePassBackbone', 'ModelCfg', 'recorded_cfgs']


@dataclass
class ModelCfg(PretrainedCfg):
    """timm's pretrained config plus what the model is, which timm carries into ``model.pretrained_cfg``
    (``timm.models.get_pretrained_cfg(name)`` has it before building):

    * ``top_down``: the model is a ``topdown.TopDownMixin`` model (two passes, ``return_aux``, the AbS
      loss); ``None`` means "not recorded", which readers must treat as an error, not as bottom-up;
    * ``bottom_up_twin``: the registered bottom-up model with the same backbone, whose weights its
      pass 1 takes (``None``: it has none, e.g. a bottom-up model).

    A dict with these keys cannot go through ``PretrainedCfg(**cfg)``: derive a variant's config with
    ``dataclasses.replace(timm.models.get_pretrained_cfg(name), ...)``.
    """
    top_down: Optional[bool] = None
    bottom_up_twin: Optional[str] = None


def recorded_cfgs(cfgs: Dict[str, dict], twins: Dict[str, Optional[str]]) -> Dict[str, ModelCfg]:
    """The configs of one module's registered models, each with its record, for timm's
    ``generate_default_cfgs``: the names in ``twins`` are top-down (each with its bottom-up twin, or
    ``None`` where it has none), every other name is bottom-up."""
    stray = sorted(set(twins) - set(cfgs))
    top_down_twins = sorted(t for t in twins.values() if t in twins)
    if stray or top_down_twins:
        raise ValueError(f'twins name models without a config {stray} or top-down twins {top_down_twins}')
    return {name: ModelCfg(**cfg, top_down=name in twins, bottom_up_twin=twins.get(name))
            for name, cfg in cfgs.items()}


class OnePassBackbone(nn.Module):
    """Plain timm model calls of a one-pass backbone (see the module docstring).

    Class attributes: ``head_name``, the classifier's attribute (the release's name is kept for its
    checkpoints); ``global_pools``, the poolings ``forward_head`` knows.
    """
    head_name = 'head'
    global_pools = ('avg', '')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final tokens of the plain pass (``forward_pass``'s, in the backbone's layout)."""
        return self.forward_pass(x).tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """timm's feature API: the intermediates at ``indices`` (last n if int, all if None) and the final
        tokens (``forward_features``); what they are, and what ``norm`` does, is the backbone's
        ``pass_intermediates``'s to say."""
        final, inter = self.pass_intermediates(x, None, indices, norm, stop_early, output_fmt)
        return inter if intermediates_only else (final, inter)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def check_global_pool(self, global_pool: str) -> str:
        """``global_pool`` if ``forward_head`` knows it; else a ValueError naming the choices."""
        if global_pool not in self.global_pools:
            *rest, last = [repr(p) for p in self.global_pools]
            choices = f"{', '.join(rest)} or {last}" if rest else last
            raise ValueError(f'{type(self).__name__}: global_pool must be {choices}, got {global_pool!r}')
        return global_pool

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (a linear, or none for 0 classes) on the model's device and dtype and in its
        train/eval mode, as timm's models make it; ``global_pool`` changes the pooling too."""
        if global_pool is not None:
            self.global_pool = self.check_global_pool(global_pool)
        self.num_classes = num_classes
        like = next(self.parameters(), None)  # (timm's get_device_dtype is 1.0.31+; the floor is 1.0.28)
        dd = {} if like is None else dict(device=like.device, dtype=like.dtype)
        head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        setattr(self, self.head_name, head.train(self.training))
