"""DAT++ (Xia et al., "DAT++: Spatially Dynamic Vision Transformer with Deformable Attention") and
AbS-DAT, DAT++ with the analysis-by-synthesis top-down attention of ``models/topdown.py``.

Written from the DAT++ release (LeapLabTHU/DAT) so that its checkpoints load with ``strict=True`` and
give its logits: module and parameter names are the release's (``patch_proj``, ``stages.{i}.attns``,
``layer_norms`` with an inner ``norm``, ``down_projs``, ``cls_norm``, ``cls_head``, ...), and so are
the details that change outputs:

* deformable attention samples at ``reference + offset`` where the reference grid is
  ``(j + 0.5) / (Hk - 1) * 2 - 1`` (not centred: it overshoots +1 on the far side) and, with the
  DAT++ setting ``offset_range_factor < 0``, the raw offsets are added unscaled and the sum clamped
  to ``[-1, 1]``; all sampling is bilinear with ``align_corners=True``;
* its relative-position bias is read bilinearly from a ``(heads, 2h-1, 2w-1)`` table (``h, w`` the
  stage's map at the construction size) at half the query-minus-sample displacement;
* neighbourhood attention zero-pads maps smaller than its kernel on the right/bottom *before* the
  qkv projection, so padded tokens take part as keys with the projection's bias;
* one drop-path module serves both residuals of a block; LayerNorms use eps 1e-5.

The release's ``reset_parameters`` never touches a module (it iterates parameters), so its models
train from PyTorch's default initialisation; we keep that (plus its truncated-normal bias tables).

Inputs must give every deformable block a map of at least 2x2 (images of 33 px or more for the
DAT++ layout; the release itself returns NaN below that).

timm: ``forward_features`` gives the final map channel-last (``output_fmt = 'NHWC'``), the four stages
are the features (``feature_info``, ``features_only`` through ``forward_intermediates``), FX tracing
works with timm's tracer settings (the neighbourhood attention is a leaf module). TorchScript does not:
see ``NeighborhoodAttention2D.__prepare_scriptable__``.
"""
import itertools
import logging
from collections import OrderedDict
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, register_notrace_function, register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .backbone import OnePassBackbone, recorded_cfgs
from .neighborhood_attention import neighborhood_attention
from .topdown import PassOutput, TopDownMixin, fold_value_signal

__all__ = ['DAT', 'AbSDAT', 'DeformableAttention', 'NeighborhoodAttention2D', 'dat_kwargs_from_release']

_logger = logging.getLogger(__name__)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of (B, C, H, W); the wrapper keeps the release's ``*.norm.*`` keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-5)  # nn.LayerNorm's default, which the release uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class LayerScale(nn.Module):
    """Per-channel residual scale of (B, C, H, W) (release key ``weight``)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(-1, 1, 1)


class ConvMlp(nn.Module):
    """DAT++'s MLP: 1x1 conv up, depthwise 3x3 residual, GELU, 1x1 conv down (release names)."""

    def __init__(self, dim: int, expansion: int, drop: float):
        super().__init__()
        hidden = dim * expansion
        self.linear1 = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.drop1 = nn.Dropout(drop)
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.linear2 = nn.Sequential(nn.Conv2d(hidden, dim, 1))
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.linear1(x))
        x = self.act(x + self.dwc(x))
        return self.drop2(self.linear2(x))


class TokenMlp(nn.Module):
    """Plain token MLP of DAT+ (``use_dwc_mlps: False``), release names under ``chunk``."""

    def __init__(self, dim: int, expansion: int, drop: float):
        super().__init__()
        self.chunk = nn.Sequential(OrderedDict([
            ('linear1', nn.Linear(dim, dim * expansion)), ('act', nn.GELU()), ('drop1', nn.Dropout(drop)),
            ('linear2', nn.Linear(dim * expansion, dim)), ('drop2', nn.Dropout(drop))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chunk(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register_notrace_module
class NeighborhoodAttention2D(nn.Module):
    """Neighbourhood attention (kernel ``k``, relative-position bias) on (B, C, H, W) maps.

    ``td`` (same shape as ``x``) is the top-down signal, added to the value only (before AV). A leaf
    module for FX: its padding and tiling plan depend on the map size.
    """

    def __init__(self, dim: int, kernel_size: int, num_heads: int, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f'nat_ksize must be an odd number >= 3, got {kernel_size}')
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by heads {num_heads}')
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=.02)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, C, H0, W0 = x.shape
        x = x.permute(0, 2, 3, 1)
        ks = self.kernel_size
        pad_h, pad_w = max(0, ks - H0), max(0, ks - W0)
        if pad_h or pad_w:  # the release pads the input, so padded keys/values are the qkv bias
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        H, W = x.shape[1:3]
        w, b = self.qkv.weight, self.qkv.bias
        qk = F.linear(x, w[:2 * C], b[:2 * C])
        if td is not None:
            td = td.permute(0, 2, 3, 1)
            if pad_h or pad_w:
                td = F.pad(td, (0, 0, 0, pad_w, 0, pad_h))
        xv, bv = fold_value_signal(x, td, b[2 * C:])
        v = F.linear(xv, w[2 * C:], bv)
        qkv = torch.cat([qk, v], -1).reshape(B, H, W, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.unbind(0)
        out = neighborhood_attention(q * self.scale, k, v, self.rpb, ks, self.attn_drop)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)[:, :H0, :W0]
        return self.proj_drop(self.proj(out)).permute(0, 3, 1, 2)

    def __prepare_scriptable__(self):
        """TorchScript calls this before compiling, so scripting any model that holds this module fails
        here, with the reason: the tiling plan (index tensors cached per map size and device) and the
        optional natten kernels are chosen in Python at run time, which TorchScript could only call out
        to (``torch.jit.ignore``: a scripted model that cannot be saved). Use eager, ``torch.compile``
        or FX (timm's tracer keeps this module a leaf)."""
        raise RuntimeError('NeighborhoodAttention2D (DAT++) is not scriptable: its tiling plan and the optional '
                           'natten kernels are chosen in Python at run time; use eager, torch.compile or FX tracing')


@register_notrace_function  # FX: sizes from the traced tensors' shapes (torch < 2.10 cannot trace arange on them)
def reference_points(Hk: int, Wk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(Hk, Wk, 2) as (y, x): the release's ``(j + 0.5) / (n - 1) * 2 - 1`` grid (kept for exactness)."""
    ys = (torch.arange(Hk, dtype=dtype, device=device) + 0.5).div(Hk - 1.0).mul(2.0).sub(1.0)
    xs = (torch.arange(Wk, dtype=dtype, device=device) + 0.5).div(Wk - 1.0).mul(2.0).sub(1.0)
    return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1)


@register_notrace_function
def query_grid(H: int, W: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H, W, 2) as (y, x): query positions in [-1, 1] (align_corners convention)."""
    ys = torch.arange(H, dtype=dtype, device=device).div(H - 1.0).mul(2.0).sub(1.0)
    xs = torch.arange(W, dtype=dtype, device=device).div(W - 1.0).mul(2.0).sub(1.0)
    return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1)


class DeformableAttention(nn.Module):
    """DAT++'s deformable attention on (B, C, H, W) maps (release ``DAttentionBaseline``).

    Queries ask an offset network (on their projection, per group) where to sample ``Hk x Wk`` keys
    and values from the input; every query attends to all sampled points, with a bias read from a
    continuous relative-position table. ``td`` (same shape as ``x``) is the top-down signal: it is
    sampled at the same deformed points and added to the value only.
    """

    def __init__(self, q_size: Sequence[int], n_heads: int, n_head_channels: int, n_groups: int,
                 attn_drop: float, proj_drop: float, stride: int, offset_range_factor: float, use_pe: bool,
                 ksize: int):
        super().__init__()
        nc = n_heads * n_head_channels
        if n_heads % n_groups:
            raise ValueError(f'heads ({n_heads}) must be divisible by groups ({n_groups})')
        self.n_heads, self.n_head_channels, self.n_groups = n_heads, n_head_channels, n_groups
        self.n_group_channels = nc // n_groups
        self.n_group_heads = n_heads // n_groups
        self.scale = n_head_channels ** -0.5
        self.offset_range_factor = offset_range_factor
        self.stride = stride
        gc = self.n_group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, ksize, stride, ksize // 2 if ksize != stride else 0, groups=gc),
            ChannelNorm(gc),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, 1, 0, bias=False),
        )
        self.proj_q = nn.Conv2d(nc, nc, 1)
        self.proj_k = nn.Conv2d(nc, nc, 1)
        self.proj_v = nn.Conv2d(nc, nc, 1)
        self.proj_out = nn.Conv2d(nc, nc, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_pe:
            qh, qw = q_size
            self.rpe_table = nn.Parameter(torch.zeros(n_heads, 2 * qh - 1, 2 * qw - 1))
            trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None

    def sample_positions(self, q: torch.Tensor) -> torch.Tensor:
        """Deformed sampling positions (B * groups, Hk, Wk, 2) as (y, x) in [-1, 1] from the queries."""
        B, C, H, W = q.shape
        offset = _checked_key_grid(self.conv_offset(q.reshape(B * self.n_groups, self.n_group_channels, H, W)),
                                   H, W)
        Hk, Wk = offset.shape[2], offset.shape[3]
        if self.offset_range_factor >= 0:  # DAT (v1) setting: bounded offsets, no clamp
            scale = offset.new_tensor([1.0 / (Hk - 1.0), 1.0 / (Wk - 1.0)]).view(1, 2, 1, 1)
            offset = offset.tanh().mul(scale).mul(self.offset_range_factor)
        pos = offset.permute(0, 2, 3, 1) + reference_points(Hk, Wk, q.dtype, q.device)
        return pos if self.offset_range_factor >= 0 else pos.clamp(-1., 1.)

    def _sample(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of (B, C, H, W) at ``pos`` -> (B, C, Hk, Wk)."""
        B, C, H, W = x.shape
        xs = F.grid_sample(x.reshape(B * self.n_groups, self.n_group_channels, H, W), pos.flip(-1),
                           mode='bilinear', align_corners=True)
        return xs.reshape(B, C, pos.shape[1], pos.shape[2])

    def position_bias(self, pos: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B * heads, H * W, Hk * Wk) bias, read bilinearly from the table at half the displacement."""
        Bg, Hk, Wk, _ = pos.shape
        qg = query_grid(H, W, pos.dtype, pos.device).reshape(1, H * W, 1, 2)
        disp = (qg - pos.reshape(Bg, 1, Hk * Wk, 2)).mul(0.5)
        table = self.rpe_table.reshape(self.n_groups, self.n_group_heads, self.rpe_table.shape[1],
                                       self.rpe_table.shape[2])
        table = table.repeat(Bg // self.n_groups, 1, 1, 1)
        bias = F.grid_sample(table, disp.flip(-1), mode='bilinear', align_corners=True)
        return bias.reshape(Bg * self.n_group_heads, H * W, Hk * Wk)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.proj_q(x)
        pos = self.sample_positions(q)
        ns = pos.shape[1] * pos.shape[2]
        x_s = self._sample(x, pos)
        k = self.proj_k(x_s)
        xv, bv = fold_value_signal(x_s, None if td is None else self._sample(td, pos), self.proj_v.bias)
        v = F.conv2d(xv, self.proj_v.weight, bv)
        hc = self.n_head_channels
        q = q.reshape(B * self.n_heads, hc, H * W)
        k = k.reshape(B * self.n_heads, hc, ns)
        v = v.reshape(B * self.n_heads, hc, ns)
        attn = torch.einsum('bcm,bcn->bmn', q, k).mul(self.scale)
        if self.rpe_table is not None:
            attn = attn + self.position_bias(pos, H, W)
        attn = self.attn_drop(attn.softmax(dim=2))
        out = torch.einsum('bmn,bcn->bcm', attn, v).reshape(B, C, H, W)
        return self.proj_drop(self.proj_out(out))


@torch.fx.wrap
@register_notrace_function
def _checked_key_grid(offset: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The offsets (B * groups, 2, Hk, Wk), checked: a leaf for FX, so traced models check too."""
    Hk, Wk = offset.shape[-2:]
    if min(H, W, Hk, Wk) < 2:
        raise ValueError(f'deformable attention needs maps and key grids of at least 2x2, got map {H}x{W}, '
                         f'keys {Hk}x{Wk}: the input image is too small (DAT++ needs 33 px or more)')
    return offset


class TransformerStage(nn.Module):
    """One DAT stage: blocks of LPU (depthwise 3x3 residual), attention and MLP (pre-norm residuals).

    The release keeps per-block parts in parallel lists (``attns``, ``mlps``, ``layer_norms`` with two
    per block, ...); we keep that layout for its keys. Tensors are (B, C, H, W).
    """

    def __init__(self, fmap_size: int, dim_in: int, dim: int, depth: int, spec: Sequence[str], groups: int,
                 use_pe: bool, heads: int, stride: int, offset_range_factor: float, attn_drop: float, drop: float,
                 expansion: int, drop_path: Sequence[float], use_dwc_mlp: bool, ksize: int, nat_ksize: int,
                 layer_scale_value: float, use_lpu: bool):
        super().__init__()
        self.depth, self.spec = depth, list(spec)
        self.proj = nn.Conv2d(dim_in, dim, 1) if dim_in != dim else nn.Identity()
        self.layer_norms = nn.ModuleList([ChannelNorm(dim) for _ in range(2 * depth)])
        mlp = ConvMlp if use_dwc_mlp else TokenMlp
        self.mlps = nn.ModuleList([mlp(dim, expansion, drop) for _ in range(depth)])
        self.attns = nn.ModuleList([
            NeighborhoodAttention2D(dim, nat_ksize, heads, attn_drop, drop) if s == 'N' else
            DeformableAttention((fmap_size, fmap_size), heads, dim // heads, groups, attn_drop, drop, stride,
                                offset_range_factor, use_pe, ksize)
            for s in self.spec])
        self.layer_scales = nn.ModuleList([
            LayerScale(dim, layer_scale_value) if layer_scale_value > 0 else nn.Identity() for _ in range(2 * depth)])
        self.local_perception_units = nn.ModuleList([
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim) if use_lpu else nn.Identity() for _ in range(depth)])
        self.use_lpu = use_lpu
        self.drop_path = nn.ModuleList([DropPath(p) if p > 0 else nn.Identity() for p in drop_path])
        self.grad_checkpointing = False

    def block(self, d: int, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block ``d`` of the stage; ``td`` (B, C, H, W) goes to its attention's value."""
        if self.use_lpu:
            x = x + self.local_perception_units[d](x)
        x = x + self.drop_path[d](self.layer_scales[2 * d](self.attns[d](self.layer_norms[2 * d](x), td)))
        return x + self.drop_path[d](self.layer_scales[2 * d + 1](self.mlps[d](self.layer_norms[2 * d + 1](x))))

    def forward(self, x: torch.Tensor, td: Optional[Sequence[torch.Tensor]] = None,
                ins: Optional[List[torch.Tensor]] = None, outs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """``td``: one channel-last signal per block (may be larger than the map: cropped, see AbSDAT).
        ``ins``/``outs``: lists that receive every block's channel-last input and output."""
        x = self.proj(x)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for d in range(self.depth):
            signal = None if td is None else _signal_map(td[d], x)
            if ins is not None:
                ins.append(x.permute(0, 2, 3, 1))
            x = checkpoint(self.block, d, x, signal, use_reentrant=False) if use_ckpt else self.block(d, x, signal)
            if outs is not None:
                outs.append(x.permute(0, 2, 3, 1))
        return x


@torch.fx.wrap
@register_notrace_function
def _signal_map(td: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Channel-last signal (B, h, w, C) -> (B, C, H, W) of ``x``; ``h, w >= H, W`` (top-left kept)."""
    B, C, H, W = x.shape
    if td.dim() != 4 or td.shape[0] != B or td.shape[3] != C or td.shape[1] < H or td.shape[2] < W:
        raise ValueError(f'top-down signal {tuple(td.shape)} does not fit a block with map (B, H, W, C) = '
                         f'{(B, H, W, C)}')
    return td[:, :H, :W].permute(0, 3, 1, 2)


def _per_stage(name: str, value, n: int = 4) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f'{name} must be a list of {n} per-stage values, got {value!r}')
    return list(value)


#: Keys of the release's ``MODEL.DAT`` configs that this port has no use for: they configure block types
#: it does not implement (window, slide, pyramid and QnA attention) or, ``lower_lr_kvs``, a training option.
RELEASE_ONLY_KEYS = ('window_sizes', 'heads_q', 'sr_ratios', 'ns_per_pts', 'ksize_qnas', 'nqs', 'qna_activation',
                     'lower_lr_kvs')


def dat_kwargs_from_release(cfg: dict) -> dict:
    """``DAT`` keyword arguments from a release ``MODEL.DAT`` config (its YAML): the same keys less
    ``RELEASE_ONLY_KEYS``, which are dropped and logged. Options that would need those block types
    still raise in ``DAT`` (e.g. a ``stage_spec`` with them)."""
    dropped = sorted(k for k in cfg if k in RELEASE_ONLY_KEYS)
    if dropped:
        _logger.info('DAT: dropping release config keys this port does not use: %s', ', '.join(dropped))
    return {k: v for k, v in cfg.items() if k not in RELEASE_ONLY_KEYS}


def _check_layout(dims, depths, heads, stage_spec, patch_size, ablations: Dict[str, Sequence[bool]]) -> None:
    """The release's constraints on a config, and the ablations this port does not implement."""
    for name, flags in ablations.items():
        if any(_per_stage(name, flags)):
            raise NotImplementedError(f'{name}={list(flags)}: this DAT ablation is not implemented; '
                                      'the DAT++ configs set it False for every stage')
    for i, spec in enumerate(stage_spec):
        if len(spec) != depths[i]:
            raise ValueError(f'stage_spec[{i}] has {len(spec)} blocks but depths[{i}] = {depths[i]}')
        bad = sorted(set(spec) - {'N', 'D'})
        if bad:
            raise NotImplementedError(f'stage_spec[{i}] uses block types {bad}; only N (neighbourhood) and '
                                      'D (deformable) attention, the DAT++ blocks, are implemented')
        if dims[i] % heads[i]:
            raise ValueError(f'dims[{i}] = {dims[i]} is not divisible by heads[{i}] = {heads[i]}')
    for i in range(1, 4):
        if dims[i] != 2 * dims[i - 1]:  # the release feeds stage i 2 * dims[i-1] channels
            raise ValueError(f'dims must double from stage to stage (the release requires it); got {dims}')
    if patch_size % 2:
        raise ValueError(f'patch_size must be even, got {patch_size}')


def _stem(in_chans: int, dim_stem: int, patch_size: int, use_conv_patches: bool) -> nn.Sequential:
    if not use_conv_patches:
        return nn.Sequential(nn.Conv2d(in_chans, dim_stem, patch_size, patch_size), ChannelNorm(dim_stem))
    half = dim_stem // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, patch_size // 2, 1), ChannelNorm(half), nn.GELU(),
        nn.Conv2d(half, dim_stem, 3, patch_size // 2, 1), ChannelNorm(dim_stem))


class DAT(OnePassBackbone):
    """DAT++ image classifier. Arguments are the release's ``MODEL.DAT`` config keys; build from a
    release YAML with ``DAT(**dat_kwargs_from_release(cfg))``, which drops the keys that configure
    block types this port does not implement (``RELEASE_ONLY_KEYS``).

    Defaults build DAT-T++ (the release's defaults describe v1 DAT with window attention); options
    that would need other block types raise. ``in_chans``, ``global_pool`` (``'avg'`` or ``''``),
    ``device`` and ``dtype`` are timm's.
    """
    head_name = 'cls_head'

    def __init__(self, img_size=224, patch_size=4, num_classes=1000, expansion=4, dim_stem=64,
                 dims=(64, 128, 256, 512), depths=(2, 4, 18, 2), heads=(2, 4, 8, 16), drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.2, strides=(8, 4, 2, 1), offset_range_factor=(-1, -1, -1, -1),
                 stage_spec=(('N', 'D'), ('N', 'D') * 2, ('N', 'D') * 9, ('D', 'D')), groups=(1, 2, 4, 8),
                 use_pes=(True,) * 4, dwc_pes=(False,) * 4, fixed_pes=(False,) * 4, no_offs=(False,) * 4,
                 use_dwc_mlps=(True,) * 4, use_conv_patches=True, ksizes=(9, 7, 5, 3), nat_ksizes=(7, 7, 7, 7),
                 layer_scale_values=(-1,) * 4, use_lpus=(True,) * 4, log_cpb=(False,) * 4, in_chans=3,
                 global_pool='avg', device=None, dtype=None):
        super().__init__()
        dims, depths, heads, groups = (_per_stage(n, v) for n, v in
                                       (('dims', dims), ('depths', depths), ('heads', heads), ('groups', groups)))
        stage_spec = _per_stage('stage_spec', stage_spec)
        _check_layout(dims, depths, heads, stage_spec, patch_size,
                      dict(dwc_pes=dwc_pes, fixed_pes=fixed_pes, no_offs=no_offs, log_cpb=log_cpb))
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, self.check_global_pool(global_pool)
        self.num_features = self.head_hidden_size = dims[-1]
        self.depths, self.dims = depths, dims
        self.output_fmt = 'NHWC'  # forward_features' map, as timm reads it
        self.feature_info = [dict(num_chs=d, reduction=patch_size * 2 ** i, module=f'stages.{i}')
                             for i, d in enumerate(dims)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        ranges = _per_stage('offset_range_factor', offset_range_factor)
        per = {n: _per_stage(n, v) for n, v in (('use_pes', use_pes), ('strides', strides), ('ksizes', ksizes),
                                                ('nat_ksizes', nat_ksizes), ('use_dwc_mlps', use_dwc_mlps),
                                                ('layer_scale_values', layer_scale_values), ('use_lpus', use_lpus))}
        with torch.device(device) if device is not None else nullcontext():  # timm's factory placement
            self.patch_proj = _stem(in_chans, dim_stem, patch_size, use_conv_patches)
            self.stages = nn.ModuleList([TransformerStage(
                (img_size // patch_size) >> i, dim_stem if i == 0 else dims[i], dims[i], depths[i], stage_spec[i],
                groups[i], per['use_pes'][i], heads[i], per['strides'][i], ranges[i], attn_drop_rate, drop_rate,
                expansion, dpr[sum(depths[:i]):sum(depths[:i + 1])], per['use_dwc_mlps'][i], per['ksizes'][i],
                per['nat_ksizes'][i], per['layer_scale_values'][i], per['use_lpus'][i]) for i in range(4)])
            k, s, p = (3, 2, 1) if use_conv_patches else (2, 2, 0)
            self.down_projs = nn.ModuleList([nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], k, s, p, bias=False),
                                                           ChannelNorm(dims[i + 1])) for i in range(3)])
            self.cls_norm = ChannelNorm(dims[-1])
            self.cls_head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        if dtype is not None:
            self.to(dtype)

    # -- timm interface ----------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The deformable bias tables (the release exempts ``rpe_table``; NA's ``rpb`` keeps decay)."""
        return {n for n, _ in self.named_parameters() if n.endswith('rpe_table')}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep the stages up to the last of ``indices`` (timm's feature-extraction pruning). ``cls_norm``
        goes with ``prune_norm`` and whenever the last stage does (it has the last stage's width)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1 or prune_norm:
            self.cls_norm = nn.Identity()
        self.stages, self.down_projs = self.stages[:max_index + 1], self.down_projs[:max_index]
        self.depths = self.depths[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    # -- forward -----------------------------------------------------------------------------------
    def forward_pass(self, x: torch.Tensor, td: Optional[Sequence[torch.Tensor]] = None, collect: bool = False,
                     depth: Optional[int] = None) -> PassOutput:
        """One pass: the final map after ``cls_norm``, channel-last (B, H, W, C). ``td``: one channel-last
        signal per block (the top-down pass); ``collect``: every block's channel-last input and output;
        ``depth``: only the first blocks, by whole stages (the map is then not normed)."""
        n_blocks = sum(self.depths)
        if td is not None and len(td) != n_blocks:
            raise ValueError(f'{len(td)} top-down signals for {n_blocks} blocks')
        ins: List[torch.Tensor] = []
        outs: List[torch.Tensor] = []
        x = self.patch_proj(x)
        start = 0
        for i, stage in enumerate(self.stages):
            if depth is not None and start >= depth:
                break
            x = stage(x, None if td is None else td[start:start + stage.depth], ins if collect else None,
                      outs if collect else None)
            start += stage.depth
            if i < len(self.down_projs) and (depth is None or start < depth):
                x = self.down_projs[i](x)
        if start == n_blocks:
            x = self.cls_norm(x)
        return PassOutput(x.permute(0, 2, 3, 1), ins, outs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.cls_head(x)

    def pass_intermediates(self, x: torch.Tensor, td: Optional[Sequence[torch.Tensor]],
                           indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                           stop_early: bool = False, output_fmt: str = 'NCHW'):
        """(final map, stage outputs) of the pass with signals ``td`` (None: bottom-up), what DAT's and
        AbS-DAT's ``forward_intermediates`` report: the stage outputs as NCHW (or NHWC) maps and the
        final map (``forward_pass``'s). ``norm`` applies ``cls_norm`` to the last stage's map, the only
        one of its width."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        ends = list(itertools.accumulate(self.depths))
        out = self.forward_pass(x, td, collect=True, depth=ends[max_index] if stop_early else None)
        inter = []
        for i in take_indices:
            y = out.block_outputs[ends[i] - 1].permute(0, 3, 1, 2)  # the stage's output, NCHW
            if norm and i == len(self.stages) - 1:
                y = self.cls_norm(y)
            inter.append(y if output_fmt == 'NCHW' else y.permute(0, 2, 3, 1))
        return out.tokens, inter


class AbSDAT(TopDownMixin, DAT):
    """DAT++ with AbS top-down attention (``td_mode`` ``abs``, or ``feedback`` without the prior).

    One decoder per block (``decoders``, AbSViT's names); at each stage boundary the feedback walks
    through ``up_projs[i]``, a bias-free transposed 3x3 stride-2 conv that mirrors ``down_projs[i]``
    (it gives 2h x 2w; stages with an odd map use its top-left part). The bridges stay linear so the
    prior's scale ``alpha`` reaches every stage, and they learn from the task loss through pass 2,
    as ``linear2`` does; the variational loss is per block, as in AbSViT. Release DAT++ weights load
    with only ``prompt``, ``decoders.*`` and ``up_projs.*`` missing.
    """

    TD_MODES = ('abs', 'feedback')

    def __init__(self, *args, td_mode: str = 'abs', alpha: float = 1.0, **kwargs):
        mode = self.resolve_td_mode(td_mode)
        super().__init__(*args, **kwargs)
        self.up_projs = self.init_top_down([(d, d) for d, n in zip(self.dims, self.depths) for _ in range(n)], mode,
                                           alpha, bridges=self._up_projections, device=kwargs.get('device'),
                                           dtype=kwargs.get('dtype'))
        firsts = list(itertools.accumulate(self.depths))[:-1]
        self._stage_start = {b: s for s, b in enumerate(firsts)}  # first block of stage s+1 -> up_projs[s]

    def _up_projections(self, device=None, dtype=None) -> nn.ModuleList:
        return nn.ModuleList([nn.ConvTranspose2d(self.dims[i + 1], self.dims[i], 3, 2, 1, output_padding=1,
                                                 bias=False, device=device, dtype=dtype) for i in range(3)])

    def feedback_bridge(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """From block ``i``'s input space to block ``i-1``'s output space (channel-last)."""
        s = self._stage_start.get(i)
        if s is None:
            return x
        return self.up_projs[s](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Registry. No weights are hosted: load the release's files with checkpoint_path= or models.load_weights.

def _cfg(**kwargs) -> Dict:
    """The release's evaluation: resize to 256x256 (squash), centre-crop 224, bicubic. In timm terms
    ``crop_mode='squash'`` with ``crop_pct=224/256``; the 384 model resizes straight to 384x384."""
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
            'crop_pct': 224 / 256, 'crop_mode': 'squash', 'interpolation': 'bicubic',
            'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_proj.0',
            'classifier': 'cls_head', 'license': 'apache-2.0', **kwargs}


default_cfgs = generate_default_cfgs(recorded_cfgs({
    'dat_tiny': _cfg(), 'dat_small': _cfg(), 'dat_base': _cfg(),
    'dat_base_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'absdat_tiny': _cfg(), 'absdat_small': _cfg(), 'absdat_base': _cfg(),
}, twins={f'absdat_{size}': f'dat_{size}' for size in ('tiny', 'small', 'base')}))

_STAGE_SPEC = [['N', 'D'], ['N', 'D'] * 2, ['N', 'D'] * 9, ['D', 'D']]
_TINY = dict(dim_stem=64, dims=[64, 128, 256, 512], heads=[2, 4, 8, 16], groups=[1, 2, 4, 8], drop_path_rate=0.2)
_SMALL = dict(dim_stem=96, dims=[96, 192, 384, 768], heads=[3, 6, 12, 24], groups=[1, 2, 3, 6], drop_path_rate=0.4)
_BASE = dict(dim_stem=128, dims=[128, 256, 512, 1024], heads=[4, 8, 16, 32], groups=[2, 4, 8, 16],
             drop_path_rate=0.7)


def _create(variant: str, pretrained: bool, size: dict, cls=DAT, **kwargs):
    cfg = dict(img_size=224, patch_size=4, expansion=4, depths=[2, 4, 18, 2], stage_spec=_STAGE_SPEC,
               strides=[8, 4, 2, 1], offset_range_factor=[-1] * 4, use_pes=[True] * 4, use_dwc_mlps=[True] * 4,
               use_lpus=[True] * 4, use_conv_patches=True, ksizes=[9, 7, 5, 3], nat_ksizes=[7] * 4, **size)
    # features_only: the four stages through forward_intermediates (FeatureGetterNet)
    features = dict(out_indices=(0, 1, 2, 3), feature_cls='getter')
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=features, **{**cfg, **kwargs})


@register_model
def dat_tiny(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-T++ (24.0M params; release configs/dat_tiny.yaml)."""
    return _create('dat_tiny', pretrained, _TINY, **kwargs)


@register_model
def dat_small(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-S++ (release configs/dat_small.yaml)."""
    return _create('dat_small', pretrained, _SMALL, **kwargs)


@register_model
def dat_base(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-B++ (release configs/dat_base.yaml)."""
    return _create('dat_base', pretrained, _BASE, **kwargs)


@register_model
def dat_base_384(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-B++ fine-tuned at 384 (configs/dat_base_384.yaml): built at 224, as the release does, so its
    bias tables have the 224 shapes; it runs on 384 inputs (drop path 0.6)."""
    return _create('dat_base_384', pretrained, {**_BASE, 'drop_path_rate': 0.6}, **kwargs)


@register_model
def absdat_tiny(pretrained: bool = False, **kwargs) -> AbSDAT:
    """AbS-DAT-T: DAT-T++ with AbS top-down attention."""
    return _create('absdat_tiny', pretrained, _TINY, cls=AbSDAT, **kwargs)


@register_model
def absdat_small(pretrained: bool = False, **kwargs) -> AbSDAT:
    """AbS-DAT-S: DAT-S++ with AbS top-down attention."""
    return _create('absdat_small', pretrained, _SMALL, cls=AbSDAT, **kwargs)


@register_model
def absdat_base(pretrained: bool = False, **kwargs) -> AbSDAT:
    """AbS-DAT-B: DAT-B++ with AbS top-down attention."""
    return _create('absdat_base', pretrained, _BASE, cls=AbSDAT, **kwargs)
