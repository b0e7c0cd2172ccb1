"""2-D neighbourhood attention with NATTEN's semantics, in pure PyTorch (natten only if it agrees).

Each query at ``(i, j)`` attends to the ``k x k`` keys of a window that starts, per axis, at
``clamp(i - k // 2, 0, L - k)``: centred on the query inside the map, shifted inwards at the borders
so that every query sees exactly ``k * k`` keys. The relative-position bias of a key is
``rpb[head, key_y - query_y + k - 1, key_x - query_x + k - 1]``. Maps must be at least ``k`` on each
side (NATTEN's rule; callers pad smaller maps, as the DAT++ release does).

``q, k, v`` are ``(B, heads, H, W, d)`` as natten 0.14 lays them out.

The pure-PyTorch path is the default everywhere. The compiled natten kernels are used only when
``natten`` imports, exposes a known API, and reproduces the pure path on a small probe for the
device, dtype and kernel size at hand (checked once, cached); anything else falls back with a
warning. ``set_backend('torch')`` forces the pure path.
"""
import functools
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ['window_start', 'neighborhood_attention', 'set_backend', 'get_backend']

_BACKENDS = ('auto', 'torch', 'natten')
_backend = 'auto'
_checked: Dict[Tuple[str, torch.dtype, int], bool] = {}


def set_backend(name: str) -> None:
    """``'auto'`` (natten when installed and equal, else PyTorch), ``'torch'`` or ``'natten'`` (required)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


# ------------------------------------------------------------------------------------------------
# Pure PyTorch
#
# Gathering k*k keys per query copies k*k times the map and is memory-bound on CPU. Instead, queries
# are cut into k x k tiles; all windows of a tile lie in a (2k-1) x (2k-1) key region, so each tile
# is one small dense attention (two batched matmuls) with the keys outside a query's window masked.
# That is ~3.4x the exact MACs but 3-7x faster on CPU than gathering, and keeps less for backward.

def window_start(length: int, kernel_size: int) -> torch.Tensor:
    """Per axis, the first key position of every query's window, ``(length,)``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be odd and positive, got {kernel_size}')
    if length < kernel_size:
        raise ValueError(f'neighbourhood attention needs maps of at least kernel_size={kernel_size} per side, '
                         f'got {length}; pad the map first (as NeighborhoodAttention2D does)')
    return (torch.arange(length, device='cpu') - kernel_size // 2).clamp(0, length - kernel_size)


@functools.lru_cache(maxsize=128)
def _axis_plan(length: int, kernel_size: int):
    """One axis of the tiling: query tiles ``(n, T)`` (the last one shifted to end at ``length``), their
    key regions ``(n, R)``, the in-window mask and bias row ``(n, T, R)``, and where each query's output
    sits in the tiled result ``(length,)``."""
    T = kernel_size
    start = window_start(length, kernel_size)
    n = -(-length // T)
    arange = functools.partial(torch.arange, device='cpu')  # cached: never on an ambient device
    first = (arange(n) * T).clamp(max=length - T)
    queries = first[:, None] + arange(T)
    R = min(2 * kernel_size - 1, length)
    regions = start[queries[:, 0]].clamp(max=length - R)[:, None] + arange(R)
    rel = regions[:, None, :] - start[queries][:, :, None]  # key position inside each query's window
    inside = (rel >= 0) & (rel < kernel_size)
    bias_row = (regions[:, None, :] - queries[:, :, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    pos = arange(length)
    tile = (pos // T).clamp(max=n - 1)
    return queries, regions, inside, bias_row, tile * T + pos - first[tile]


@functools.lru_cache(maxsize=128)
def _plan(H: int, W: int, kernel_size: int, device: torch.device, dtype: torch.dtype):
    """Both axes: index tensors plus the flat rpb index and additive mask of every (tile, query, key),
    on ``device`` (cached per device, so nothing is copied per call)."""
    qy, ry, my, by, oy = _axis_plan(H, kernel_size)
    qx, rx, mx, bx, ox = _axis_plan(W, kernel_size)
    rows, cols = (slice(None), None) * 3, (None, slice(None)) * 3  # broadcast to (nY, nX, T, T, Ry, Rx)
    inside = my[rows] & mx[cols]
    shape = (qy.shape[0], qx.shape[0], qy.shape[1] * qx.shape[1], ry.shape[1] * rx.shape[1])
    bias_index = (by[rows] * (2 * kernel_size - 1) + bx[cols]).expand(inside.shape).reshape(-1)
    mask = torch.zeros(inside.shape, device='cpu').masked_fill(~inside, float('-inf')).reshape(shape)
    return tuple(t.to(device) for t in (qy, qx, ry, rx, oy, ox, bias_index)) + (mask.to(device, dtype),)


def _tiles(t: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """(B, h, H, W, d) -> (B, h, nY, nX, a * b, d) for row tiles ``iy`` (nY, a) and column tiles ``ix`` (nX, b)."""
    B, h, _, _, d = t.shape
    (nY, a), (nX, b) = iy.shape, ix.shape
    t = t.index_select(2, iy.flatten()).index_select(3, ix.flatten())
    return t.view(B, h, nY, a, nX, b, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, h, nY, nX, a * b, d)


def _na_torch(q, k, v, rpb, kernel_size, attn_drop=None):
    B, h, H, W, d = q.shape
    qy, qx, ry, rx, oy, ox, bias_index, mask = _plan(H, W, kernel_size, q.device, q.dtype)
    if rpb is not None:
        mask = rpb.reshape(h, -1).index_select(1, bias_index).view(h, *mask.shape) + mask
    attn = (_tiles(q, qy, qx) @ _tiles(k, ry, rx).transpose(-1, -2) + mask).softmax(dim=-1)
    if attn_drop is not None:
        attn = attn_drop(attn)
    out = attn @ _tiles(v, ry, rx)  # (B, h, nY, nX, T*T, d)
    nY, T = qy.shape
    nX = qx.shape[0]
    out = out.view(B, h, nY, nX, T, T, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, h, nY * T, nX * T, d)
    return out.index_select(2, oy).index_select(3, ox)


# ------------------------------------------------------------------------------------------------
# natten, when present and equal

def _natten_ops() -> Optional[Tuple[Callable, Callable]]:
    """natten's (qk + rpb, av) as ``qk(q, k, rpb, ks)``, ``av(attn, v, ks)``, or None."""
    try:
        import natten.functional as nf
    except Exception:  # not installed, or built against another torch
        return None
    if hasattr(nf, 'na2d_qk') and hasattr(nf, 'na2d_av'):  # natten 0.15 - 0.17
        return (lambda q, k, rpb, ks: nf.na2d_qk(q, k, ks, 1, rpb=rpb),
                lambda a, v, ks: nf.na2d_av(a, v, ks, 1))
    if hasattr(nf, 'natten2dqkrpb') and hasattr(nf, 'natten2dav'):  # natten 0.14 (the release's)
        return (lambda q, k, rpb, ks: nf.natten2dqkrpb(q, k, rpb, ks, 1),
                lambda a, v, ks: nf.natten2dav(a, v, ks, 1))
    return None


def _na_natten(ops, q, k, v, rpb, kernel_size, attn_drop=None):
    attn = ops[0](q, k, rpb, kernel_size).softmax(dim=-1)
    if attn_drop is not None:
        attn = attn_drop(attn)
    return ops[1](attn, v, kernel_size)


def _natten_agrees(ops, device, dtype, kernel_size) -> bool:
    """Run natten and the pure path on a small random problem (borders included) and compare."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 2, kernel_size + 2, kernel_size + 3, 8)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen).to(device, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    try:
        with torch.no_grad():
            got = _na_natten(ops, q, k, v, rpb, kernel_size).float()
        same = torch.allclose(got, _na_torch(q, k, v, rpb, kernel_size).float(), atol=tol, rtol=tol)
    except Exception as e:  # unsupported device / kernel size / dtype
        warnings.warn(f'natten is installed but failed on {device} {dtype} kernel {kernel_size} ({e}); '
                      'using the pure-PyTorch neighbourhood attention')
        return False
    if not same:
        warnings.warn(f'natten disagrees with the reference neighbourhood attention on {device} {dtype} '
                      f'kernel {kernel_size}; using the pure-PyTorch path')
    return same


def _natten_for(q: torch.Tensor, kernel_size: int):
    """natten's ops when they should be used for this call, else None."""
    if _backend == 'torch':
        return None
    ops = _natten_ops()
    if ops is None:
        if _backend == 'natten':
            raise RuntimeError("backend 'natten' was requested but natten is not importable or has an unknown "
                               "API; install a natten that matches your torch, or set_backend('auto')")
        return None
    key = (q.device.type, q.dtype, kernel_size)
    if key not in _checked:
        _checked[key] = _natten_agrees(ops, q.device, q.dtype, kernel_size)
    if not _checked[key]:
        if _backend == 'natten':
            raise RuntimeError(f'natten does not reproduce neighbourhood attention for {key}; see the warning')
        return None
    return ops


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
                           kernel_size: int, attn_drop: Optional[Callable] = None) -> torch.Tensor:
    """softmax(q . k + rpb) v over each query's window, ``q`` already scaled; (B, heads, H, W, d).

    ``attn_drop`` (optional) is applied to the attention probabilities.
    """
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f'q, k, v must be equal (B, heads, H, W, d); got {tuple(q.shape)}, {tuple(k.shape)}, '
                         f'{tuple(v.shape)}')
    if rpb is not None and rpb.shape != (q.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(f'rpb must be (heads, 2k-1, 2k-1) = ({q.shape[1]}, {2 * kernel_size - 1}, '
                         f'{2 * kernel_size - 1}); got {tuple(rpb.shape)}')
    window_start(min(q.shape[2], q.shape[3]), kernel_size)  # validates kernel and map size
    ops = _natten_for(q, kernel_size)
    if ops is not None:
        return _na_natten(ops, q, k, v, rpb, kernel_size, attn_drop)
    return _na_torch(q, k, v, rpb, kernel_size, attn_drop)
