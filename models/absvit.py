"""AbSViT: timm's VisionTransformer with analysis-by-synthesis top-down attention.

Only how a ViT block takes its top-down signal lives here; the prior, the decoders, the two passes
and the variational loss are in ``models/topdown.py``. Parameter names and shapes equal the
reference release (timm ViT keys + ``prompt`` + ``decoders.{i}.linear/linear2.weight``).

The release projects the top-down tokens with the full qkv and keeps only v:
``v = W_v x + b_v + W_v td + b_v``. We fold it into one value projection,
``v = W_v (x + td) + 2 b_v`` (``topdown.fold_value_signal``), so the second pass costs what a plain
ViT pass costs.

timm: ``forward_features`` / ``forward_intermediates`` / ``features_only`` report the top-down pass
(``forward_intermediates(top_down=False)`` the bottom-up one); TorchScript and FX tracing work in every
``td_mode`` and keep the steering inputs (``prior``, ``classes``, ``alpha``); both give the logits
(``return_aux=True`` needs the eager model).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, checkpoint_seq, register_model, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Attention, Block, VisionTransformer, _cfg

from .backbone import recorded_cfgs
from .topdown import SIGNALS, PassOutput, TopDownAttentionMixin, TopDownMixin

__all__ = ['TopDownAttention', 'TopDownBlock', 'AbSViT']


class TopDownAttention(TopDownAttentionMixin, Attention):
    """timm's Attention that also takes a top-down signal ``td`` in its second pass.

    ``signal`` (a constructor argument) says how (``topdown.SIGNAL_ROUTES``): ``value`` (AbSViT: td added
    to v only, through v's own projection and bias), ``qkv``, ``mask`` or ``none``; the switch and the
    weight recording (``record_weights`` / ``attn_weights``) are ``TopDownAttentionMixin``'s. All this
    class says is that ``qkv`` projects q, k, v (value rows last) and timm's gate and norms around them.
    Attention masks are not supported (AbSViT never masks).
    """
    default_signal = 'value'

    def __init__(self, *args, signal: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_signal(self.default_signal if signal is None else signal)

    @staticmethod
    def for_signal(signal: str) -> type:
        """This class with ``signal`` as its default: timm's Block builds its attention from a class
        (``attn_layer``), so that is how a ViT hands the mode's signal to every attention it builds."""
        return _ATTENTION_FOR_SIGNAL[signal]

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """(B, N, n * heads * d) -> (n, B, heads, N, d)."""
        return t.reshape(t.shape[0], t.shape[1], n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _qkv(self, x: torch.Tensor, td: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qk, v = self.project(x, td, self.qkv.weight, self.qkv.bias, 2 * self.attn_dim)
        if v is None:
            q, k, v = self._heads(qk, 3).unbind(0)
        else:
            q, k = self._heads(qk, 2).unbind(0)
            v = self._heads(v, 1)[0]
        return self.q_norm(q), self.k_norm(k), self.signal_value(v, td)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError('attention masks are not supported by TopDownAttention')
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self._qkv(x, td)
        x = self.attend(q, k, v, explicit=not self.fused_attn)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def _attention_class(signal: str) -> type:
    name = f'TopDownAttention{signal.capitalize()}'
    cls = type(name, (TopDownAttention,), {'default_signal': signal, '__module__': __name__,
                                             '__doc__': f'TopDownAttention with signal {signal!r}.'})
    globals()[name] = cls  # importable by name (pickling)
    return cls


_ATTENTION_FOR_SIGNAL: Dict[str, type] = {s: _attention_class(s) for s in SIGNALS}


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
        mode = self.resolve_td_mode(td_mode)
        kwargs.setdefault('block_fn', TopDownBlock)
        # timm hands its attn_layer to every block: each attention is built with the mode's signal
        kwargs.setdefault('attn_layer', TopDownAttention.for_signal(mode.signal))
        super().__init__(*args, **kwargs)
        self.init_top_down([self.embed_dim] * len(self.blocks), mode, alpha, device=kwargs.get('device'),
                           dtype=kwargs.get('dtype'))

    def forward_pass(self, x: torch.Tensor, td: Optional[List[torch.Tensor]] = None, collect: bool = False,
                     depth: Optional[int] = None) -> PassOutput:
        """One pass: tokens after the final norm. ``td``: one signal per block (the top-down pass);
        ``collect``: also every block's input and output tokens; ``depth``: only the first blocks."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        ins: List[torch.Tensor] = []
        outs: List[torch.Tensor] = []
        if td is None and not collect and depth is None:
            if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint_seq(self.blocks, x)
            else:
                x = self.blocks(x)
            return PassOutput(self.norm(x), ins, outs)
        if td is not None and len(td) != len(self.blocks):
            raise ValueError(f'{len(td)} top-down signals for {len(self.blocks)} blocks')
        if torch.jit.is_scripting() or depth is None:
            blocks = self.blocks
        else:
            blocks = self.blocks[:depth]
        for i, blk in enumerate(blocks):
            signal = None if td is None else td[i]
            if collect:
                ins.append(x)
            if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, signal, use_reentrant=False)
            else:
                x = blk(x, signal)
            if collect:
                outs.append(x)
        return PassOutput(self.norm(x), ins, outs)

    def pass_intermediates(self, x: torch.Tensor, td: Optional[List[torch.Tensor]],
                           indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                           stop_early: bool = False, output_fmt: str = 'NCHW', return_prefix_tokens: bool = False,
                           output_dict: bool = False):
        """(final tokens, intermediates) of the pass with signals ``td`` (None: bottom-up), as timm's
        ``VisionTransformer.forward_intermediates`` reports them: with ``output_dict`` the intermediates
        are its dict (``TopDownMixin.forward_intermediates`` adds ``image_features``)."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        tokens, _, outs = self.forward_pass(x, td, collect=True, depth=max_index + 1 if stop_early else None)
        inter, prefix = self._split_tokens([self.norm(outs[i]) if norm else outs[i] for i in take_indices],
                                           x.shape[-2:], output_fmt)
        if output_dict:
            result = {'image_intermediates': inter}
            if prefix is not None and return_prefix_tokens:
                result['image_intermediates_prefix'] = prefix
            return tokens, result
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))
        return tokens, inter

    def _split_tokens(self, tokens: List[torch.Tensor], img_hw, output_fmt: str):
        """Block outputs -> (patch features as NCHW maps or NLC tokens, prefix tokens or None)."""
        n = self.num_prefix_tokens
        prefix = [t[:, :n] for t in tokens] if n else None
        patches = [t[:, n:] for t in tokens]
        if output_fmt == 'NCHW':
            H, W = self.patch_embed.dynamic_feat_size((img_hw[0], img_hw[1]))
            patches = [t.reshape(t.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous() for t in patches]
        return patches, prefix

    def tokens_to_map(self, tokens: torch.Tensor, img_hw) -> torch.Tensor:
        """(B, N, C) tokens (prefix tokens included) to a (B, C, H/p, W/p) map of the patch tokens."""
        ph, pw = self.patch_embed.patch_size
        h, w = img_hw[0] // ph, img_hw[1] // pw
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


# ---------------------------------------------------------------------------------------------
# Registry. Names and configs follow the reference release; no weights are hosted, so the
# pretrained configs carry no URL: load release files with checkpoint_path= or models.load_weights.

def _abs_cfg(**kwargs):
    # the release trains and evaluates with DeiT's ImageNet mean/std (timm's ViT default is 0.5/0.5)
    return _cfg(**{'url': '', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, **kwargs})


FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)

#: top-down model -> its bottom-up twin (the patch-16 ones are timm's own ViTs); the rest is bottom-up
TWINS = {
    'absvit_tiny_patch16_224': 'vit_tiny_patch16_224', 'absvit_small_patch16_224': 'vit_small_patch16_224',
    'absvit_base_patch16_224': 'vit_base_patch16_224', 'absvit_tiny_patch8_224_gap': 'vit_tiny_patch8_224_gap',
    'absvit_micro_patch4_28_gap': 'vit_micro_patch4_28_gap',
}
default_cfgs = generate_default_cfgs(recorded_cfgs({
    'absvit_tiny_patch16_224': _abs_cfg(),
    'absvit_small_patch16_224': _abs_cfg(),
    'absvit_base_patch16_224': _abs_cfg(),
    'absvit_tiny_patch8_224_gap': _abs_cfg(),
    'vit_tiny_patch8_224_gap': _abs_cfg(),
    'absvit_micro_patch4_28_gap': _abs_cfg(input_size=(1, 28, 28), crop_pct=1.0, mean=FMNIST_MEAN, std=FMNIST_STD,
                                           num_classes=10),
    'vit_micro_patch4_28_gap': _abs_cfg(input_size=(1, 28, 28), crop_pct=1.0, mean=FMNIST_MEAN, std=FMNIST_STD,
                                        num_classes=10),
}, TWINS))


def _create(variant: str, pretrained: bool = False, cls=AbSViT, **kwargs):
    # features_only as timm's ViT: the last 3 blocks through forward_intermediates (FeatureGetterNet)
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(out_indices=3, feature_cls='getter'),
                                **kwargs)


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
