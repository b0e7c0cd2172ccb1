"""RVT (Mao et al., "Towards Robust Vision Transformer", CVPR 2022): the plain RVT-Ti/S/B of the
AbSViT paper's Table 2, written from the release (vtddggg/Robust-Vision-Transformer,
``robust_models.py``, class ``PoolingTransformer``) so that its checkpoints load with ``strict=True``
and give its logits. Module and parameter names are the release's (``patch_embed.proj.{0,1,3}``,
``transformers.{s}.blocks.{i}``, ``pools.{s}.conv``, ``norm``, ``head``), and so are the details that
change outputs:

* the stem is 7x7/2 conv (padding 2) -> BatchNorm -> 3x3/2 max-pool -> 4x4/4 conv, with no activation;
  there is no position embedding and no class token;
* a block's FFN is a conv FFN (1x1 conv, BN, GELU, depthwise 3x3, BN, GELU, 1x1 conv, BN) unless the
  width is 768 (RVT-B), where it is the plain two-linear MLP;
* one drop-path module serves both residuals; its rate grows as ``rate * i / n_blocks`` (never
  reaching ``rate``); LayerNorms use eps 1e-6;
* RVT-Ti has two stages joined by a depthwise-grouped 3x3/2 conv ("pooling", 192 -> 384 channels);
* the head is global average pooling -> LayerNorm -> linear. (The release squeezes the pooled map,
  which also drops the batch axis at batch 1; here pooling keeps it.)

The release initialises nothing but its LayerNorms (to their defaults), so RVTs train from
PyTorch's default initialisation; we keep that.

**RVT\\* position-aware attention scaling** (``use_mask=True``, ``masked_block=k``): the first ``k``
blocks of stage 0 multiply their attention logits by ``sigmoid(att_mask)`` before the softmax, a
learned (heads, N, N) matrix for the N tokens of the construction size (196 at 224), so such a model
runs only at that size. The release creates ``att_mask`` uninitialised (whatever memory holds); here
it starts at zero, i.e. a uniform scale of 0.5 on every logit (no position preferred) where the
sigmoid's slope is largest. Table 2 uses plain RVT; RVT* is the option, not a registered name.
"""
import itertools
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .backbone import OnePassBackbone, recorded_cfgs
from .topdown import PassOutput, TopDownAttentionMixin, TopDownMixin

__all__ = ['RVT', 'AbSRVT', 'RVTAttention', 'RVTBlock']

STEM_REDUCTION = 16


class ConvStem(nn.Module):
    """The release's ``conv_embedding``: a /16 stem, (B, 3, H, W) -> (B, dim, H/16, W/16)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, 32, 7, 2, 2, **dd), nn.BatchNorm2d(32, **dd), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(32, dim, 4, 4, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvFFN(nn.Module):
    """RVT's FFN for widths other than 768, on tokens (B, H*W, C) of an H x W map (release names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Conv2d(dim, hidden, 1, **dd)
        self.bn1 = nn.BatchNorm2d(hidden, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd)
        self.bn2 = nn.BatchNorm2d(hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1, **dd)
        self.bn3 = nn.BatchNorm2d(dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.drop(self.act(self.bn1(self.fc1(x))))
        x = self.act(self.bn2(self.dwconv(x)))
        x = self.drop(self.bn3(self.fc2(x)))
        return x.flatten(2).transpose(1, 2)


class LinearFFN(nn.Module):
    """RVT-B's FFN (width 768): linear -> GELU -> linear, dropout after each (release names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class RVTAttention(TopDownAttentionMixin, nn.Module):
    """Multi-head self-attention (qkv with bias), optionally with RVT*'s position-aware scaling.

    ``td`` is the block's top-down signal (second pass of an AbS model); ``signal`` (a constructor
    argument, the AbS mode's) says how it enters, through ``qkv`` (value rows last): the switch and the
    weight recording (``record_weights`` / ``attn_weights``) are ``topdown.TopDownAttentionMixin``'s.
    RVT's own part is its logits: scaled after the product and, for RVT*, times ``sigmoid(att_mask)``.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0., proj_drop: float = 0.,
                 num_tokens: Optional[int] = None, signal: str = 'value', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if num_tokens is not None:
            self.att_mask = nn.Parameter(torch.zeros(num_heads, num_tokens, num_tokens, **dd))
        else:
            self.register_parameter('att_mask', None)
        self.init_signal(signal)

    def _qkv(self, x: torch.Tensor, td: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qk, v = self.project(x, td, self.qkv.weight, self.qkv.bias, 2 * C)
        qkv = qk if v is None else torch.cat([qk, v], -1)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, self.signal_value(v, td)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """RVT's logits: the product scaled after, times RVT*'s position-aware scaling where it has one."""
        attn = (q @ k.transpose(-2, -1)) * self.scale
        scaling = self.att_mask
        if scaling is not None:
            N = q.shape[-2]
            if scaling.shape[-1] != N:
                raise ValueError('position-aware attention scaling was built for ' + str(scaling.shape[-1])
                                 + ' tokens, got ' + str(N) + ': RVT* runs only at its construction size')
            attn = attn * torch.sigmoid(scaling)
        return attn.softmax(dim=-1)

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x, td)
        x = self.attend(q, k, v, explicit=self.att_mask is not None)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class RVTBlock(nn.Module):
    """Pre-norm attention and FFN residuals on tokens (B, H*W, C); one drop path for both (release)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., drop: float = 0., attn_drop: float = 0.,
                 drop_path: float = 0., num_tokens: Optional[int] = None, signal: str = 'value', device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.attn = RVTAttention(dim, num_heads, attn_drop, drop, num_tokens, signal, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        ffn = LinearFFN if dim == 768 else ConvFFN
        self.mlp = ffn(dim, int(dim * mlp_ratio), drop, **dd)

    def forward(self, x: torch.Tensor, H: int, W: int, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), td))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class Stage(nn.Module):
    """The release's ``Transformer``: a container of blocks of one width (key ``blocks``)."""

    def __init__(self, blocks: List[RVTBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class HeadPooling(nn.Module):
    """The release's ``conv_head_pooling``: depthwise-grouped 3x3/2 conv that halves the map and
    widens the channels (key ``conv``)."""

    def __init__(self, dim_in: int, dim_out: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, 2, 1, groups=dim_in, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _per_stage(name: str, value, n: int) -> list:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(value) != n:
        raise ValueError(f'{name} must have one entry per stage ({n}), got {value!r}')
    return value


@torch.fx.wrap
@register_notrace_function
def fit_signal(td: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """A channel-last signal (B, h, w, c) for a block's H x W map: a larger one (feedback bridged across
    a pooling, 2x the next map) keeps its top-left H x W; a smaller one (maskatt's single mask, made
    at the last stage) is repeated to H x W (nearest). A leaf for FX (it reads shapes)."""
    if td.shape[1] >= H and td.shape[2] >= W:
        return td[:, :H, :W]
    return F.interpolate(td.permute(0, 3, 1, 2), size=(H, W), mode='nearest').permute(0, 2, 3, 1)


class RVT(OnePassBackbone):
    """Plain RVT. Arguments are the release's ``PoolingTransformer`` ones (``image_size`` is accepted
    as the release spells it; ``patch_size``/``stride`` must be 16, the stem's fixed reduction), plus
    timm's ``global_pool`` (``'avg'``, or ``''`` for the map with norm and head per position) and
    ``td_signal``, how the attentions take a top-down signal (set by the AbS variant from its mode)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, stride: int = 16,
                 base_dims: Sequence[int] = (64,), depth: Sequence[int] = (12,), heads: Sequence[int] = (6,),
                 mlp_ratio: float = 4., num_classes: int = 1000, in_chans: int = 3, global_pool: str = 'avg',
                 attn_drop_rate: float = 0., drop_rate: float = 0., drop_path_rate: float = 0.,
                 use_mask: bool = False, masked_block: Optional[int] = None, image_size: Optional[int] = None,
                 td_signal: str = 'value', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        img_size = img_size if image_size is None else image_size
        if patch_size != STEM_REDUCTION or stride != STEM_REDUCTION:
            raise ValueError(f"RVT's conv stem reduces by 16; patch_size and stride must be 16, "
                             f'got {patch_size}, {stride}')
        if use_mask and masked_block is None:
            raise ValueError('use_mask (RVT* position-aware attention scaling) needs masked_block')
        n = len(depth)
        base_dims, heads = _per_stage('base_dims', base_dims, n), _per_stage('heads', heads, n)
        self.dims = [b * h for b, h in zip(base_dims, heads)]
        self.depths = list(depth)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, self.check_global_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = self.dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = ConvStem(in_chans, self.dims[0], **dd)
        self.pos_drop = nn.Dropout(drop_rate)
        total, masked = sum(depth), (masked_block or 0) if use_mask else 0
        num_tokens = (img_size // STEM_REDUCTION) ** 2
        starts = [0] + list(itertools.accumulate(depth))
        self.transformers = nn.ModuleList([Stage([
            RVTBlock(self.dims[s], heads[s], mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate * i / total,
                     num_tokens if s == 0 and i < masked else None, td_signal, **dd)
            for i in range(starts[s], starts[s + 1])]) for s in range(n)])
        self.pools = nn.ModuleList([HeadPooling(self.dims[s], self.dims[s + 1], **dd) for s in range(n - 1)])
        self.norm = nn.LayerNorm(self.dims[-1], eps=1e-6, **dd)
        self.head = nn.Linear(self.dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.output_fmt = 'NHWC'  # forward_features' map, as timm reads it
        self.feature_info = [dict(num_chs=self.dims[s], reduction=STEM_REDUCTION * 2 ** s,
                                  module=f'transformers.{s}.blocks.{j}') for s in range(n) for j in range(depth[s])]

    # -- timm interface ----------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's 1-d rule: the release's list names only ``pos_embed``, which RVT lacks."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^patch_embed', blocks=[(r'^transformers\.(\d+)\.blocks\.(\d+)', None),
                                                  (r'^pools\.(\d+)', (99999,)), (r'^norm', (99999,))])

    # -- forward -----------------------------------------------------------------------------------
    def _pool(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """``pools[index](x)``; TorchScript cannot index a ModuleList with a variable."""
        for j, pool in enumerate(self.pools):
            if j == index:
                x = pool(x)
        return x

    def forward_pass(self, x: torch.Tensor, td: Optional[List[torch.Tensor]] = None, collect: bool = False,
                     depth: Optional[int] = None) -> PassOutput:
        """One pass: the last block's map, channel-last (B, h, w, C) (RVT has no norm before pooling)
        and, with ``collect``, every block's channel-last input and output. ``td``: one channel-last
        signal per block (the top-down pass; see ``fit_signal``); ``depth``: only the first blocks."""
        n = sum(self.depths) if depth is None else depth
        if td is not None and len(td) != sum(self.depths):
            raise ValueError(f'{len(td)} top-down signals for {sum(self.depths)} blocks')
        ins: List[torch.Tensor] = []
        outs: List[torch.Tensor] = []
        x, i = self.pos_drop(self.patch_embed(x)), 0
        for s, stage in enumerate(self.transformers):  # no break: TorchScript unrolls this loop
            if s > 0 and i < n:
                x = self._pool(s - 1, x)
            B, C, H, W = x.shape
            t = x.flatten(2).transpose(1, 2)
            for blk in stage.blocks:
                if i < n:
                    sig: Optional[torch.Tensor] = None
                    if td is not None:
                        sig = fit_signal(td[i], H, W).reshape(B, H * W, -1)
                    if collect:
                        ins.append(t.reshape(B, H, W, C))
                    if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                        t = checkpoint(blk, t, H, W, sig, use_reentrant=False)
                    else:
                        t = blk(t, H, W, sig)
                    if collect:
                        outs.append(t.reshape(B, H, W, C))
                i += 1
            x = t.transpose(1, 2).reshape(B, C, H, W)
        return PassOutput(x.permute(0, 2, 3, 1), ins, outs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pooling, LayerNorm, linear (per position with ``global_pool=''``)."""
        if self.global_pool == 'avg':
            x = x.mean((1, 2))
        x = self.norm(x)
        return x if pre_logits else self.head(x)

    # -- intermediates -----------------------------------------------------------------------------
    def pass_intermediates(self, x: torch.Tensor, td: Optional[List[torch.Tensor]],
                           indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                           stop_early: bool = False, output_fmt: str = 'NCHW'):
        """(final map, block outputs at ``indices``) of the pass with signals ``td`` (None: bottom-up), what
        RVT's and AbS-RVT's ``forward_intermediates`` report: the blocks (all stages, in order) as
        ``NCHW`` or ``NHWC`` maps or ``NLC`` tokens, and the last block's map (``forward_pass``'s).
        ``norm`` is accepted and has no effect: RVT's final norm acts on the pooled vector only (as
        timm's PiT)."""
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(sum(self.depths), indices)
        out = self.forward_pass(x, td, collect=True, depth=max_index + 1 if stop_early else None)
        maps = [out.block_outputs[i] for i in take]
        if output_fmt == 'NCHW':
            maps = [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        elif output_fmt == 'NLC':
            maps = [m.flatten(1, 2) for m in maps]
        return out.tokens, maps

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks (and stages, pools) after the last of ``indices``; returns the kept indices."""
        take, max_index = feature_take_indices(sum(self.depths), indices)
        starts = [0] + list(itertools.accumulate(self.depths))
        s_last = max(s for s in range(len(self.depths)) if starts[s] <= max_index)
        kept = max_index + 1 - starts[s_last]
        stage = self.transformers[s_last]
        stage.blocks = stage.blocks[:kept]
        self.transformers = self.transformers[:s_last + 1]
        self.pools = self.pools[:s_last]
        self.depths = self.depths[:s_last] + [kept]
        prune_end = max_index < starts[-1] - 1
        if prune_norm or prune_head or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.dims[s_last]
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take


class AbSRVT(TopDownMixin, RVT):
    """RVT with AbS top-down attention (and the paper's comparison modes, ``td_mode``).

    One decoder per block (``decoders``, AbSViT's names); each attention takes its block's signal
    through the value slice of its ``qkv`` (``v = W_v (x + td) + 2 b_v``). The prior compares with the
    last block's tokens: RVT normalises only the pooled vector, so these are what its head pools.

    RVT-Ti's stage boundary: the feedback crosses the pooling (192 -> 384 channels, 14x14 -> 7x7)
    through ``up_projs.0``, a bias-free transposed 3x3 stride-2 conv grouped as the pooling is, i.e.
    a learned map of exactly the shape of the pooling's adjoint (3,456 weights). It keeps the
    pooling's locality and channel grouping, stays linear so that the prior's scale ``alpha``
    reaches stage 0, and learns from the task loss through pass 2 as ``linear2`` does (the choice of
    AbS-DAT's bridges); odd maps keep its top-left part (``fit_signal``). ``maskatt``'s one mask is
    repeated to stage 0's map. Release RVT weights load with only ``prompt``, ``decoders.*`` and
    ``up_projs.*`` missing.
    """

    def __init__(self, *args, td_mode: str = 'abs', alpha: float = 1.0, **kwargs):
        mode = self.resolve_td_mode(td_mode)
        super().__init__(*args, td_signal=mode.signal, **kwargs)
        self.bridge_blocks: List[int] = list(itertools.accumulate(self.depths))[:-1]  # first blocks of stages 1..
        bridges = self._up_projections if mode.decoders and self.bridge_blocks else None
        ups = self.init_top_down([(d, d) for d, n in zip(self.dims, self.depths) for _ in range(n)], mode, alpha,
                                 bridges=bridges, device=kwargs.get('device'), dtype=kwargs.get('dtype'))
        self.up_projs = nn.ModuleList() if ups is None else ups

    def _up_projections(self, device=None, dtype=None) -> nn.ModuleList:
        return nn.ModuleList([nn.ConvTranspose2d(self.dims[s + 1], self.dims[s], 3, 2, 1, output_padding=1,
                                                 groups=self.dims[s], bias=False, device=device, dtype=dtype)
                              for s in range(len(self.dims) - 1)])

    def feedback_bridge(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """From block ``i``'s input space to block ``i-1``'s output space (channel-last maps)."""
        for s, up in enumerate(self.up_projs):
            if i == self.bridge_blocks[s]:
                x = up(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


# ---------------------------------------------------------------------------------------------
# Registry. No weights are hosted: load the release's files with checkpoint_path= or models.load_weights.

def _cfg(**kwargs) -> dict:
    """The release's evaluation (DeiT's): resize 256, centre-crop 224, bicubic, ImageNet mean/std."""
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
            'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN,
            'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_embed.proj.0', 'classifier': 'head', **kwargs}


default_cfgs = generate_default_cfgs(recorded_cfgs({
    'rvt_tiny': _cfg(pool_size=(7, 7)), 'rvt_small': _cfg(), 'rvt_base': _cfg(),
    'absrvt_tiny': _cfg(pool_size=(7, 7)), 'absrvt_small': _cfg(), 'absrvt_base': _cfg(),
}, twins={f'absrvt_{size}': f'rvt_{size}' for size in ('tiny', 'small', 'base')}))

#: The release's sizes (``rvt_tiny``, ``rvt_small``, ``rvt_base``).
RVT_SIZES = {
    'tiny': dict(base_dims=[32, 32], depth=[10, 2], heads=[6, 12]),
    'small': dict(base_dims=[64], depth=[12], heads=[6]),
    'base': dict(base_dims=[64], depth=[12], heads=[12]),
}


def _create(variant: str, pretrained: bool, size: str, cls=None, **kwargs):
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(cls or RVT, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
                                **{'mlp_ratio': 4, **RVT_SIZES[size], **kwargs})


@register_model
def rvt_tiny(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-Ti: two stages (10 blocks at 192, 2 at 384), 8.6M params."""
    return _create('rvt_tiny', pretrained, 'tiny', **kwargs)


@register_model
def rvt_small(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-S: 12 blocks at 384, 22.1M params."""
    return _create('rvt_small', pretrained, 'small', **kwargs)


@register_model
def rvt_base(pretrained: bool = False, **kwargs) -> RVT:
    """RVT-B: 12 blocks at 768 (linear FFN), 86.2M params."""
    return _create('rvt_base', pretrained, 'base', **kwargs)


@register_model
def absrvt_tiny(pretrained: bool = False, **kwargs) -> AbSRVT:
    """AbS-RVT-Ti: RVT-Ti with AbS top-down attention (10.0M params)."""
    return _create('absrvt_tiny', pretrained, 'tiny', cls=AbSRVT, **kwargs)


@register_model
def absrvt_small(pretrained: bool = False, **kwargs) -> AbSRVT:
    """AbS-RVT-S: RVT-S with AbS top-down attention (25.7M params)."""
    return _create('absrvt_small', pretrained, 'small', cls=AbSRVT, **kwargs)


@register_model
def absrvt_base(pretrained: bool = False, **kwargs) -> AbSRVT:
    """AbS-RVT-B: RVT-B with AbS top-down attention (100.4M params)."""
    return _create('absrvt_base', pretrained, 'base', cls=AbSRVT, **kwargs)
