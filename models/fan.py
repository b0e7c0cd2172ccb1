"""FAN-ViT (Zhou et al., "Understanding The Robustness in Vision Transformers", ICML 2022): the
FAN-ViT-Ti/S/B of the AbSViT paper's Table 2, written from the release (NVlabs/FAN ``models/fan.py``,
class ``FAN`` without a hybrid backbone) so that its checkpoints load with ``strict=True`` and give its
logits. Module and parameter names are the release's (``patch_embed.proj.{0,2,4,6}.{0,1}``,
``pos_embed.token_projection``, ``blocks.{i}.attn.{q,kv,proj}``, ``blocks.{i}.mlp.{q,temperature,
mlp_v,norm_v}``, ``cls_attn_blocks``, ``norm``, ``head``); the patch embedding, Fourier position
encoding and class-attention blocks are timm's XCiT modules, which compute what the release's do.

A FAN block is token mixing (self-attention whose keys and values come from one ``kv`` projection)
then *channel processing*: a channel-attention gate computed from the block input (queries softmaxed
over tokens, keys averaged over channels, ``sigmoid(q k) * temperature``, one gate per channel)
multiplying an MLP of the input (linear, depthwise-conv pair with its own scale ``gamma``, linear,
LayerNorm). Details kept because they change outputs or training:

* every block gets the full drop-path rate (constant, not increasing with depth);
* ``norm_v`` is a LayerNorm with PyTorch's eps 1e-5 (the other norms use 1e-6);
* the class-attention blocks normalise all tokens (``tokens_norm``) and their residual doubles the
  patch tokens (as XCiT's); only the class token reaches the head;
* initialisation: linears truncated-normal(0.02) with zero bias, the depthwise convs of channel
  processing normal with std ``sqrt(2 / fan_out)``, every other conv PyTorch's default;
* weight decay spares only ``cls_token`` (the release's list also names ``pos_embed``, a module, which
  its optimiser never matched; per-module ``temperature`` exemptions were never collected).

The default config marks the input size as flexible: the conv embedding and Fourier encoding work
at any size (the release's flag says fixed).
"""
from functools import partial
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.xcit import ClassAttentionBlock, ConvPatchEmbed, PositionalEncodingFourier

from .backbone import OnePassBackbone, recorded_cfgs
from .topdown import PassOutput, TopDownAttentionMixin, TopDownMixin

__all__ = ['FAN', 'AbSFAN', 'TokenMixing', 'ChannelProcessing', 'FANBlock']


class TokenMixing(TopDownAttentionMixin, nn.Module):
    """FAN's self-attention: queries from ``q``, keys and values from one ``kv`` projection.

    ``td`` is the block's top-down signal (second pass of an AbS model); ``signal`` (a constructor
    argument, the AbS mode's) says how it enters ``q`` (no value rows) and ``kv`` (value rows last): the
    switch and the weight recording (``record_weights`` / ``attn_weights``) are
    ``topdown.TopDownAttentionMixin``'s.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., signal: str = 'value', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.init_signal(signal)

    def _qkv(self, x: torch.Tensor, td: Optional[torch.Tensor]):
        B, N, C = x.shape
        # A value signal projects kv before q, the other modes q first: autograd sums x's gradient in
        # that order, and keeping it keeps the trained weights bit for bit what they were
        if td is not None and self.route.v and not self.route.qk:
            k, v = self.project(x, td, self.kv.weight, self.kv.bias, C)
            q, _ = self.project(x, td, self.q.weight, self.q.bias, None)
        else:
            q, _ = self.project(x, td, self.q.weight, self.q.bias, None)
            k, v = self.project(x, td, self.kv.weight, self.kv.bias, C)
        kv = k if v is None else torch.cat([k, v], -1)
        q = q.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, self.signal_value(v, td)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x, td)
        x = self.attend(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class DWConv(nn.Module):
    """Depthwise 3x3 conv -> GELU -> BatchNorm -> depthwise 3x3 conv on tokens of an H x W map."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim, **dd)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        for conv in (self.conv1, self.conv2):  # the release's fan-out normal init (9 taps per channel)
            nn.init.normal_(conv.weight, 0, (2.0 / 9) ** 0.5)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.flatten(2).transpose(1, 2)


class ChannelMlp(nn.Module):
    """The MLP that channel processing gates (release ``Mlp``): fc1, a scaled depthwise-conv residual,
    fc2. (The release's ``act`` is never applied; it has no parameters and is left out.)"""

    def __init__(self, dim: int, hidden: int, drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.dwconv = DWConv(hidden, **dd)
        self.gamma = nn.Parameter(torch.ones(hidden, **dd))
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.drop(self.gamma * self.dwconv(x, H, W)) + x
        return self.drop(self.fc2(x))


class ChannelProcessing(nn.Module):
    """FAN's fully-attentional channel processing: ``norm_v(mlp_v(x))`` times a per-channel gate.

    The gate of head ``h``, channel ``c`` is ``temperature_h * sigmoid(sum_n softmax_n(q)[n, c] *
    mean_c' softmax_n(x)[n, c'])``: queries ``q = W_q x`` softmaxed over tokens, keys (the input
    itself) softmaxed over tokens and averaged over the head's channels.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True, attn_drop: float = 0.,
                 drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1, **dd))
        self.mlp_v = ChannelMlp(dim, mlp_hidden, drop, **dd)
        self.norm_v = nn.LayerNorm(dim, **dd)
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, C / heads, 1): the channel gate."""
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
        k = x.reshape(B, N, self.num_heads, -1).transpose(1, 2)
        k = k.softmax(dim=-2).mean(dim=-1, keepdim=True)
        return torch.sigmoid(q.softmax(dim=-2).transpose(-1, -2) @ k) * self.temperature

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        gate = self.attn_drop(self.gate(x))
        return self.norm_v(self.mlp_v(x, H, W)) * gate.reshape(B, 1, C)


class FANBlock(nn.Module):
    """Token mixing then channel processing, pre-norm residuals scaled by ``gamma1``/``gamma2``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., eta: float = 1., signal: str = 'value', device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = TokenMixing(dim, num_heads, qkv_bias, attn_drop, drop, signal, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = ChannelProcessing(dim, num_heads, int(dim * mlp_ratio), qkv_bias, attn_drop, drop, **dd)
        self.gamma1 = nn.Parameter(torch.full((dim,), float(eta), **dd))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(eta), **dd))

    def forward(self, x: torch.Tensor, H: int, W: int, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x), td))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), H, W))


class FAN(OnePassBackbone):
    """FAN-ViT image classifier. Arguments are the release's ``FAN`` ones for FAN-ViT (``sr_ratio``
    and ``sharpen_attn`` are accepted for its configs; its blocks ignore them) plus timm's
    ``global_pool`` (``'token'``: the class token, as the release; ``'avg'``; ``''``) and
    ``td_signal``, how token mixing takes a top-down signal (set by the AbS variant from its mode)."""
    global_pools = ('token', 'avg', '')

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = 'token', embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4., qkv_bias: bool = True, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., sr_ratio: Optional[List[float]] = None, sharpen_attn: bool = False,
                 cls_attn_layers: int = 2, use_pos_embed: bool = True, eta: float = 1., tokens_norm: bool = False,
                 head_init_scale: float = 1.0, td_signal: str = 'value', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.num_prefix_tokens = 1
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, self.check_global_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim, nn.GELU, **dd)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim, **dd) if use_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, eta,
                     td_signal, **dd)
            for _ in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                norm_layer=norm, eta=eta, tokens_norm=tokens_norm, **dd)
            for _ in range(cls_attn_layers)])
        self.norm = norm(embed_dim, **dd)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        """The release's: class token and every linear truncated-normal(0.02), zero biases; head scaled."""
        trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    # -- timm interface ----------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=r'^blocks\.(\d+)',
                    cls_attn_blocks=[(r'^cls_attn_blocks\.(\d+)', None), (r'^norm', (99999,))])

    def check_global_pool(self, global_pool: str) -> str:
        """``OnePassBackbone``'s check, and ``'token'`` only while the class token exists (pruning can
        remove it)."""
        super().check_global_pool(global_pool)
        if global_pool == 'token' and not self.num_prefix_tokens:
            raise ValueError("token pooling needs the class token, which pruning removed")
        return global_pool

    # -- forward -----------------------------------------------------------------------------------
    def grid(self, img_hw: Tuple[int, int]) -> Tuple[int, int]:
        """The token grid of an image: every stride-2 conv of the patch embedding maps n to (n + 1) // 2."""
        h, w = img_hw
        for _ in range(self.patch_embed.patch_size.bit_length() - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward_pass(self, x: torch.Tensor, td: Optional[List[torch.Tensor]] = None, collect: bool = False,
                     depth: Optional[int] = None) -> PassOutput:
        """One pass: all tokens after the final norm, class token first (B, 1 + N, C) and, with
        ``collect``, every FAN block's input and output patch tokens (B, N, C). ``td``: one (B, T, c)
        signal per block whose last N rows are the patch tokens' (the top-down pass); ``depth``: only
        the first blocks (their patch tokens are then the pass's tokens: no class attention, no norm)."""
        if td is not None and len(td) != len(self.blocks):
            raise ValueError(f'{len(td)} top-down signals for {len(self.blocks)} blocks')
        n = len(self.blocks) if depth is None else depth
        x, (H, W) = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.shape[0], H, W).reshape(x.shape[0], -1, x.shape[1]).transpose(1, 2)
        x = self.pos_drop(x)
        ins: List[torch.Tensor] = []
        outs: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):  # no break or slicing: TorchScript unrolls this loop
            if i < n:
                sig: Optional[torch.Tensor] = None
                if td is not None:  # an AbS signal made from all final tokens: the patch rows are last
                    sig = td[i][:, td[i].shape[1] - x.shape[1]:]
                if collect:
                    ins.append(x)
                if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(blk, x, H, W, sig, use_reentrant=False)
                else:
                    x = blk(x, H, W, sig)
                if collect:
                    outs.append(x)
        return PassOutput(self.forward_cls(x) if n >= len(self.blocks) else x, ins, outs)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token, run the class-attention blocks and the final norm."""
        if self.cls_attn_blocks is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            for blk in self.cls_attn_blocks:
                x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    # -- intermediates -----------------------------------------------------------------------------
    def pass_intermediates(self, x: torch.Tensor, td: Optional[List[torch.Tensor]],
                           indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                           stop_early: bool = False, output_fmt: str = 'NCHW'):
        """(final tokens, block outputs at ``indices``) of the pass with signals ``td`` (None: bottom-up),
        what FAN's and AbS-FAN's ``forward_intermediates`` report: the blocks' patch tokens as maps
        (``NCHW``) or tokens (``NLC``), with the final norm if ``norm``, and the final tokens
        (``forward_pass``'s)."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        H, W = self.grid((x.shape[-2], x.shape[-1]))
        out = self.forward_pass(x, td, collect=True, depth=max_index + 1 if stop_early else None)
        feats = [self.norm(out.block_outputs[i]) if norm else out.block_outputs[i] for i in take]
        if output_fmt == 'NCHW':
            feats = [f.transpose(1, 2).reshape(f.shape[0], -1, H, W) for f in feats]
        return out.tokens, feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and, with the head, the class attention)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_attn_blocks = None
            self.cls_token = None
            self.num_prefix_tokens = 0
            self.reset_classifier(0, '')
        return take


class AbSFAN(TopDownMixin, FAN):
    """FAN-ViT with AbS top-down attention (and the paper's comparison modes, ``td_mode``).

    One decoder per FAN block (``decoders``, AbSViT's names; the two class-attention blocks have
    none); each block's token mixing takes its signal through the value slice of its ``kv``
    (``v = W_v (x + td) + 2 b_v``). The prior, the reweighting and the feedback work on the final
    tokens, as AbSViT's; the class token joins only after the FAN blocks, so its row of the
    signals is dropped there. Release FAN weights load with only ``prompt`` and ``decoders.*`` missing.
    """

    def __init__(self, *args, td_mode: str = 'abs', alpha: float = 1.0, **kwargs):
        mode = self.resolve_td_mode(td_mode)
        super().__init__(*args, td_signal=mode.signal, **kwargs)
        self.init_top_down([self.embed_dim] * len(self.blocks), mode, alpha, device=kwargs.get('device'),
                           dtype=kwargs.get('dtype'))

    def tokens_to_map(self, tokens: torch.Tensor, img_hw) -> torch.Tensor:
        """(B, T, C) tokens to the (B, C, h, w) map of their last h * w (the patch tokens)."""
        h, w = self.grid((int(img_hw[0]), int(img_hw[1])))
        return tokens[:, tokens.shape[1] - h * w:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


# ---------------------------------------------------------------------------------------------
# Registry. No weights are hosted: load the release's files with checkpoint_path= or models.load_weights.

def _cfg(**kwargs) -> dict:
    """The release's evaluation: resize to 224 (crop_pct 1.0), bicubic, ImageNet mean/std."""
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 1.0,
            'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
            'first_conv': 'patch_embed.proj.0.0', 'classifier': 'head', **kwargs}


_FAN_NAMES = ('fan_tiny_12_p16_224', 'fan_small_12_p16_224', 'fan_base_18_p16_224')
default_cfgs = generate_default_cfgs(recorded_cfgs({
    **{name: _cfg() for name in _FAN_NAMES}, **{'abs' + name: _cfg() for name in _FAN_NAMES},
}, twins={'abs' + name: name for name in _FAN_NAMES}))

#: The release's FAN-ViT sizes.
FAN_SIZES = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=4),
    'small': dict(embed_dim=384, depth=12, num_heads=8),
    'base': dict(embed_dim=448, depth=18, num_heads=8),
}


def _create(variant: str, pretrained: bool, size: str, cls=None, **kwargs):
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(cls or FAN, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
                                **{'patch_size': 16, 'eta': 1.0, 'tokens_norm': True, **FAN_SIZES[size], **kwargs})


@register_model
def fan_tiny_12_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-ViT-Ti: 12 blocks at 192, 4 heads (7.3M params)."""
    return _create('fan_tiny_12_p16_224', pretrained, 'tiny', **kwargs)


@register_model
def fan_small_12_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-ViT-S: 12 blocks at 384, 8 heads (28.3M params)."""
    return _create('fan_small_12_p16_224', pretrained, 'small', **kwargs)


@register_model
def fan_base_18_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-ViT-B: 18 blocks at 448, 8 heads (54.4M params)."""
    return _create('fan_base_18_p16_224', pretrained, 'base', **kwargs)


@register_model
def absfan_tiny_12_p16_224(pretrained: bool = False, **kwargs) -> AbSFAN:
    """AbS-FAN-Ti: FAN-ViT-Ti with AbS top-down attention (8.2M params)."""
    return _create('absfan_tiny_12_p16_224', pretrained, 'tiny', cls=AbSFAN, **kwargs)


@register_model
def absfan_small_12_p16_224(pretrained: bool = False, **kwargs) -> AbSFAN:
    """AbS-FAN-S: FAN-ViT-S with AbS top-down attention (31.9M params)."""
    return _create('absfan_small_12_p16_224', pretrained, 'small', cls=AbSFAN, **kwargs)


@register_model
def absfan_base_18_p16_224(pretrained: bool = False, **kwargs) -> AbSFAN:
    """AbS-FAN-B: FAN-ViT-B with AbS top-down attention (61.6M params)."""
    return _create('absfan_base_18_p16_224', pretrained, 'base', cls=AbSFAN, **kwargs)
