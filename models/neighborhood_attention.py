"""2-D neighbourhood attention with NATTEN's semantics, in pure PyTorch (natten only if it agrees).

Each query at ``(i, j)`` attends to the ``k x k`` keys of a window that starts, per axis, at
``clamp(i - k // 2, 0, L - k)``: centred on the query inside the map, shifted inwards at the borders
so that every query sees exactly ``k * k`` keys. The relative-position bias of a key is
``rpb[head, key_y - query_y + k - 1, key_x - query_x + k - 1]``. Maps must be at least ``k`` on each
side (NATTEN's rule; callers pad smaller maps, as the DAT++ release does).

Tensors are laid out as natten 0.14 lays them out: ``q, k, v`` are ``(B, heads, H, W, d)``, the
attention weights ``(B, heads, H, W, k * k)`` with the window flattened row-major.

The pure-PyTorch path is the default everywhere. The compiled natten kernels are used only when
``natten`` imports, exposes a known API, and reproduces the pure path on a small probe for the
device, dtype and kernel size at hand (checked once, cached); anything else falls back with a
warning. ``set_backend('torch')`` forces the pure path.
"""
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ['window_index', 'na2d_qk', 'na2d_av', 'neighborhood_attention', 'set_backend', 'get_backend']

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

def window_index(length: int, kernel_size: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per axis, the key positions ``(L, k)`` of every query's window and their bias rows ``(L, k)``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be odd and positive, got {kernel_size}')
    if length < kernel_size:
        raise ValueError(f'neighbourhood attention needs maps of at least kernel_size={kernel_size} per side, '
                         f'got {length}; pad the map first (as NeighborhoodAttention2D does)')
    query = torch.arange(length, device=device)
    start = (query - kernel_size // 2).clamp(0, length - kernel_size)
    keys = start[:, None] + torch.arange(kernel_size, device=device)
    return keys, keys - query[:, None] + kernel_size - 1


def _gather_windows(t: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """``(B, h, H, W, d)`` -> every query's window ``(B, h, H, W, k, k, d)``."""
    return t[:, :, ky[:, None, :, None], kx[None, :, None, :]]


def _qk_torch(q, k, rpb, kernel_size):
    B, h, H, W, _ = q.shape
    ky, by = window_index(H, kernel_size, q.device)
    kx, bx = window_index(W, kernel_size, q.device)
    attn = torch.einsum('bhyxd,bhyxijd->bhyxij', q, _gather_windows(k, ky, kx))
    if rpb is not None:
        attn = attn + rpb[:, by[:, None, :, None], bx[None, :, None, :]]
    return attn.reshape(B, h, H, W, kernel_size * kernel_size)


def _av_torch(attn, v, kernel_size):
    B, h, H, W, _ = v.shape
    ky, _ = window_index(H, kernel_size, v.device)
    kx, _ = window_index(W, kernel_size, v.device)
    attn = attn.reshape(B, h, H, W, kernel_size, kernel_size)
    return torch.einsum('bhyxij,bhyxijd->bhyxd', attn, _gather_windows(v, ky, kx))


# ------------------------------------------------------------------------------------------------
# natten, when present and equal

def _natten_ops() -> Optional[Tuple[Callable, Callable]]:
    """natten's (qk+rpb, av) with our call signature, or None (not installed / unknown API)."""
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


def _natten_agrees(ops, device, dtype, kernel_size) -> bool:
    """Run natten and the pure path on a small random problem (borders included) and compare."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 2, kernel_size + 2, kernel_size + 3, 8)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen).to(device, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    try:
        with torch.no_grad():
            a_ref = _qk_torch(q, k, rpb, kernel_size).softmax(-1)
            a_nat = ops[0](q, k, rpb, kernel_size).softmax(-1)
            same = torch.allclose(a_nat.float(), a_ref.float(), atol=tol, rtol=tol) and torch.allclose(
                ops[1](a_ref, v, kernel_size).float(), _av_torch(a_ref, v, kernel_size).float(), atol=tol, rtol=tol)
    except Exception as e:  # unsupported device / kernel size / dtype
        warnings.warn(f'natten is installed but failed on {device} {dtype} kernel {kernel_size} ({e}); '
                      'using the pure-PyTorch neighbourhood attention')
        return False
    if not same:
        warnings.warn(f'natten disagrees with the reference neighbourhood attention on {device} {dtype} '
                      f'kernel {kernel_size}; using the pure-PyTorch path')
    return same


def _select(q: torch.Tensor, kernel_size: int):
    """(qk, av) functions to use for this call."""
    torch_ops = (_qk_torch, _av_torch)
    if _backend == 'torch':
        return torch_ops
    ops = _natten_ops()
    if ops is None:
        if _backend == 'natten':
            raise RuntimeError("backend 'natten' was requested but natten is not importable or has an unknown "
                               "API; install a natten that matches your torch, or set_backend('auto')")
        return torch_ops
    key = (q.device.type, q.dtype, kernel_size)
    if key not in _checked:
        _checked[key] = _natten_agrees(ops, q.device, q.dtype, kernel_size)
    if not _checked[key]:
        if _backend == 'natten':
            raise RuntimeError(f'natten does not reproduce neighbourhood attention for {key}; see the warning')
        return torch_ops
    return ops


# ------------------------------------------------------------------------------------------------
# Public API

def na2d_qk(q: torch.Tensor, k: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size: int) -> torch.Tensor:
    """Attention logits ``q . k + bias`` over each query's window: ``(B, heads, H, W, k * k)``."""
    return _select(q, kernel_size)[0](q, k, rpb, kernel_size)


def na2d_av(attn: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Weighted sum of each query's window of values: ``(B, heads, H, W, d)``."""
    return _select(v, kernel_size)[1](attn, v, kernel_size)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
                           kernel_size: int, attn_drop: Optional[Callable] = None) -> torch.Tensor:
    """softmax(q . k + rpb) v over each query's window; ``q`` already scaled. Shapes as ``na2d_qk``."""
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f'q, k, v must be equal (B, heads, H, W, d); got {tuple(q.shape)}, {tuple(k.shape)}, '
                         f'{tuple(v.shape)}')
    if rpb is not None and rpb.shape != (q.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(f'rpb must be (heads, 2k-1, 2k-1) = ({q.shape[1]}, {2 * kernel_size - 1}, '
                         f'{2 * kernel_size - 1}); got {tuple(rpb.shape)}')
    qk, av = _select(q, kernel_size)
    attn = qk(q, k, rpb, kernel_size).softmax(dim=-1)
    if attn_drop is not None:
        attn = attn_drop(attn)
    return av(attn, v, kernel_size)
