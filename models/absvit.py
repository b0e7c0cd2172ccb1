"""AbSViT: timm's VisionTransformer with analysis-by-synthesis top-down attention.

Only how a ViT block takes its top-down signal lives here; the prior, the decoders, the two passes
and the variational loss are in ``models/topdown.py``. Parameter names and shapes equal the
reference release (timm ViT keys + ``prompt`` + ``decoders.{i}.linear/linear2.weight``).

The release projects the top-down tokens with the full qkv and keeps only v:
``v = W_v x + b_v + W_v td + b_v``. We fold it into one value projection,
``v = W_v (x + td) + 2 b_v``, so the second pass costs what a plain ViT pass costs.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, register_model, generate_default_cfgs
from timm.models.vision_transformer import Attention, Block, VisionTransformer, _cfg

from .topdown import TopDownMixin

__all__ = ['TopDownAttention', 'TopDownBlock', 'AbSViT']

# How each top-down mode enters the attention (see topdown.TD_MODES).
_ATTN_SIGNAL = {'abs': 'value', 'feedback': 'value', 'qkv': 'qkv', 'maskatt': 'mask', 'perceiver': 'value'}


class TopDownAttention(Attention):
    """timm's Attention that also takes a top-down signal ``td`` in its second pass.

    ``signal`` says how: ``value`` (AbSViT: td added to v only, through v's own projection and bias),
    ``qkv`` (td added to q, k and v), ``mask`` (``td`` is a (B, N, 1) token mask multiplying v).
    With ``record_weights`` set, the softmax attention weights of the last call are kept in
    ``attn_weights`` (B, heads, N, N) for inspection.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.signal = 'value'
        self.record_weights = False
        self.attn_weights: Optional[torch.Tensor] = None

    def _qkv(self, x: torch.Tensor, td: Optional[torch.Tensor]):
        B, N, _ = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        heads = lambda t, n: t.reshape(B, N, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if td is not None and self.signal == 'value':
            # W_v x + b_v + W_v td + b_v, folded: one value projection of (x + td)
            d = self.attn_dim
            q, k = heads(F.linear(x, w[:2 * d], None if b is None else b[:2 * d]), 2).unbind(0)
            v = heads(F.linear(x + td, w[2 * d:], None if b is None else 2 * b[2 * d:]), 1)[0]
        elif td is not None and self.signal == 'qkv':
            q, k, v = heads(F.linear(x + td, w, None if b is None else 2 * b), 3).unbind(0)
        elif td is None or self.signal == 'mask':
            q, k, v = heads(self.qkv(x), 3).unbind(0)
            if td is not None:
                v = v * td.reshape(B, 1, N, 1).to(v.dtype)
        else:
            raise ValueError(f'unknown top-down signal {self.signal!r}')
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if td is None and not self.record_weights:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError('attention masks are not supported with a top-down signal')
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self._qkv(x, td)
        if self.record_weights:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            self.attn_weights = attn.detach()
            x = self.attn_drop(attn) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class TopDownBlock(Block):
    """timm's Block whose attention receives the block's top-down signal."""

    def __init__(self, *args, attn_layer=TopDownAttention, **kwargs):
        super().__init__(*args, attn_layer=attn_layer, **kwargs)
        if not isinstance(self.attn, TopDownAttention):
            raise TypeError(f'TopDownBlock needs a TopDownAttention, got {type(self.attn).__name__}')

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), td)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class AbSViT(TopDownMixin, VisionTransformer):
    """Vision Transformer with AbS top-down attention (and the paper's comparison modes).

    Args (beyond timm's VisionTransformer):
        td_mode: one of ``topdown.TD_MODES``; ``abs`` is AbSViT.
        alpha: default scale of the prior reweighting.
    """

    def __init__(self, *args, td_mode: str = 'abs', alpha: float = 1.0, **kwargs):
        kwargs.setdefault('block_fn', TopDownBlock)
        kwargs.setdefault('attn_layer', TopDownAttention)  # timm hands its own default to every block
        super().__init__(*args, **kwargs)
        self.init_top_down([self.embed_dim] * len(self.blocks), td_mode=td_mode, alpha=alpha)
        if self.decoders is not None:
            for dec in self.decoders:  # the release initialises decoders like every timm ViT linear
                trunc_normal_(dec.linear.weight, std=.02)
                trunc_normal_(dec.linear2.weight, std=.02)
        for blk in self.blocks:
            blk.attn.signal = _ATTN_SIGNAL[td_mode]

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | self.no_weight_decay_top_down()

    def forward_features(self, x: torch.Tensor, td: Optional[Sequence[torch.Tensor]] = None,
                         collect: bool = False):
        """Tokens after the final norm. ``td``: one signal per block (second pass).
        ``collect``: also return every block's input and output tokens."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        if td is None and not collect:
            x = checkpoint_seq(self.blocks, x) if checkpointing else self.blocks(x)
            return self.norm(x)
        if td is not None and len(td) != len(self.blocks):
            raise ValueError(f'{len(td)} top-down signals for {len(self.blocks)} blocks')
        ins: List[torch.Tensor] = []
        outs: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            ins.append(x)
            signal = None if td is None else td[i]
            x = checkpoint(blk, x, signal, use_reentrant=False) if checkpointing else blk(x, signal)
            outs.append(x)
        x = self.norm(x)
        return (x, ins, outs) if collect else x

    def tokens_to_map(self, tokens: torch.Tensor, img_hw) -> torch.Tensor:
        """(B, N, C) tokens (prefix tokens included) to a (B, C, H/p, W/p) map of the patch tokens."""
        ph, pw = self.patch_embed.patch_size
        h, w = img_hw[0] // ph, img_hw[1] // pw
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


# ---------------------------------------------------------------------------------------------
# Registry. Names and configs follow the reference release; no weights are hosted, so the
# pretrained configs carry no URL: load release files with checkpoint_path= or models.load_checkpoint.

def _abs_cfg(**kwargs):
    # the release trains and evaluates with DeiT's ImageNet mean/std (timm's ViT default is 0.5/0.5)
    return _cfg(**{'url': '', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, **kwargs})


FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)

default_cfgs = generate_default_cfgs({
    'absvit_tiny_patch16_224': _abs_cfg(),
    'absvit_small_patch16_224': _abs_cfg(),
    'absvit_base_patch16_224': _abs_cfg(),
    'absvit_tiny_patch8_224_gap': _abs_cfg(),
    'vit_tiny_patch8_224_gap': _abs_cfg(),
    'absvit_micro_patch4_28_gap': _abs_cfg(input_size=(1, 28, 28), crop_pct=1.0, mean=FMNIST_MEAN, std=FMNIST_STD,
                                           num_classes=10),
    'vit_micro_patch4_28_gap': _abs_cfg(input_size=(1, 28, 28), crop_pct=1.0, mean=FMNIST_MEAN, std=FMNIST_STD,
                                        num_classes=10),
})


def _create(variant: str, pretrained: bool = False, cls=AbSViT, **kwargs):
    return build_model_with_cfg(cls, variant, pretrained, **kwargs)


_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)
_MICRO = dict(patch_size=4, embed_dim=64, depth=4, num_heads=4, img_size=28, in_chans=1, num_classes=10,
              global_pool='avg')


@register_model
def absvit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-Ti (6.6M params)."""
    return _create('absvit_tiny_patch16_224', pretrained, **{**_TINY, 'patch_size': 16, **kwargs})


@register_model
def absvit_small_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-S (25.6M params)."""
    return _create('absvit_small_patch16_224', pretrained, **{**_SMALL, 'patch_size': 16, **kwargs})


@register_model
def absvit_base_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-B (100.7M params)."""
    return _create('absvit_base_patch16_224', pretrained, **{**_BASE, 'patch_size': 16, **kwargs})


@register_model
def absvit_tiny_patch8_224_gap(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-Ti at patch 8 with global average pooling: the release's model for attention demos."""
    return _create('absvit_tiny_patch8_224_gap', pretrained,
                   **{**_TINY, 'patch_size': 8, 'global_pool': 'avg', **kwargs})


@register_model
def vit_tiny_patch8_224_gap(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Bottom-up twin of ``absvit_tiny_patch8_224_gap`` (plain timm ViT, fc_norm after pooling)."""
    return _create('vit_tiny_patch8_224_gap', pretrained, cls=VisionTransformer,
                   **{**_TINY, 'patch_size': 8, 'global_pool': 'avg', **kwargs})


@register_model
def absvit_micro_patch4_28_gap(pretrained: bool = False, **kwargs) -> AbSViT:
    """4-block, 64-wide AbSViT for 28x28 grey images (the default Fashion-MNIST job)."""
    return _create('absvit_micro_patch4_28_gap', pretrained, **{**_MICRO, **kwargs})


@register_model
def vit_micro_patch4_28_gap(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Bottom-up twin of ``absvit_micro_patch4_28_gap``."""
    return _create('vit_micro_patch4_28_gap', pretrained, cls=VisionTransformer, **{**_MICRO, **kwargs})
