"""AbSViT / ViT as MMSeg backbones: the zoo's models (``models/``) giving dense multi-level maps.

The release's segmentation backbone (``ViT_Top_Down``) differs from the classification model only in
how it meets images of any size and in what it returns, so that is all this module adds:

* the input is zero-padded at the bottom/right to a multiple of the patch (mmseg's
  ``AdaptivePadding(padding='corner')``);
* the position embedding is resampled to the padded grid with ``F.interpolate(mode='bicubic',
  align_corners=False)`` and no antialias (timm's resampler antialiases, which changes the features);
* the maps are the outputs of blocks ``out_indices`` of the top-down (second) pass, class token
  dropped, a block that is the last one taken after the final norm, as ``(B, C, H/p, W/p)``.

The two passes, the prior and the feedback are the zoo model's own (``forward_intermediates``); the
prior is the learned prompt and alpha is 1 unless a caller steers (``steering.py``). ``top_down=False``
builds the bottom-up twin (timm's ViT), the paper's ViT-B baseline.
"""
import logging
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.models.vision_transformer import VisionTransformer

from models.absvit import AbSViT
from models.pos_embed import resample_pos_embed  # the release's resampling; re-exported
from segmentation.errors import BackboneInputError
from segmentation.weights import load_classification_weights

__all__ = ['AbSViTBackbone', 'resample_pos_embed', 'pad_to_patch']


def pad_to_patch(x: torch.Tensor, patch: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad bottom/right to a multiple of the patch, as mmseg's AdaptivePadding 'corner'."""
    pad_h, pad_w = (-x.shape[-2]) % patch[0], (-x.shape[-1]) % patch[1]
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


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
class AbSViTBackbone(BaseModule):
    """MMSeg backbone: AbSViT (``top_down=True``) or its bottom-up twin ViT, four dense maps.

    Args mirror the release's config (ViT-B/16 at 512: embed_dim 768, depth 12, 12 heads, drop path
    0.1, out_indices (2, 5, 8, 11)). ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads a
    classification checkpoint of this project or of the release (``segmentation.weights``).
    """

    def __init__(self, top_down: bool = True, img_size: int = 512, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, drop_path_rate: float = 0.1, out_indices: Sequence[int] = (2, 5, 8, 11),
                 layernorm_eps: float = 1e-6, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not out_indices or any(not 0 <= i < depth for i in out_indices):
            raise BackboneInputError(f'out_indices must be block indices in [0, {depth}), got {tuple(out_indices)}')
        self.top_down = top_down
        self.out_indices = tuple(int(i) for i in out_indices)
        cls = SegAbSViT if top_down else SegViT
        self.vit = cls(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                       num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate,
                       norm_layer=partial(nn.LayerNorm, eps=layernorm_eps), num_classes=0, global_pool='token',
                       class_token=True, dynamic_img_size=True)
        self.prior: Optional[torch.Tensor] = None  #: steering: another prior than the learned prompt
        self.alpha: Optional[float] = None  #: steering: another scale than the model's (1)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s classification checkpoint, if any. Never timm's re-initialisation: the
        weights were initialised at construction, and mmengine calls this once more on resume."""
        if self.init_cfg and self.init_cfg.get('type') == 'Pretrained' and self.init_cfg.get('checkpoint'):
            report = load_classification_weights(self.vit, self.init_cfg['checkpoint'])
            print_log(report.summary(), logger='current')
        else:
            print_log('AbSViTBackbone: no classification checkpoint (init_cfg.checkpoint), the backbone starts '
                      'from random weights', logger='current', level=logging.WARNING)
        self._is_init = True

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, C, H, W) images of any size -> one (B, embed_dim, ceil(H/p), ceil(W/p)) map per out index."""
        if x.dim() != 4 or x.shape[1] != self.vit.patch_embed.proj.in_channels:
            raise BackboneInputError(f'expected images (B, {self.vit.patch_embed.proj.in_channels}, H, W), '
                                     f'got shape {tuple(x.shape)}')
        x = pad_to_patch(x, self.vit.patch_embed.patch_size)
        tokens = self._block_tokens(x)
        grid = [s // p for s, p in zip(x.shape[-2:], self.vit.patch_embed.patch_size)]
        last = len(self.vit.blocks) - 1
        outs = [self.vit.norm(t) if i == last else t for i, t in zip(self.out_indices, tokens)]
        return tuple(t.reshape(t.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for t in outs)

    def _block_tokens(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Patch tokens (B, N, C) of the reported pass at ``out_indices``, before any final norm."""
        kwargs = dict(indices=list(self.out_indices), output_fmt='NLC', intermediates_only=True)
        if self.top_down:
            kwargs.update(top_down=True, prior=self.prior, alpha=self.alpha)
        elif self.prior is not None:
            raise BackboneInputError('the bottom-up ViT backbone has no top-down pass to steer')
        return self.vit.forward_intermediates(x, **kwargs)
