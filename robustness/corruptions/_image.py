"""Array conventions shared by the corruptions.

Every corruption works on a float32 array ``x`` of shape (H, W, C), C in {1, 3}, values in [0, 1], and
returns an array of the same shape (not necessarily clipped). ``as_float`` / ``restore`` convert from and
back to what the caller passed: uint8 in [0, 255] or float in [0, 1], shape (H, W), (H, W, 1) or (H, W, 3).
"""
from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY and PIL's "L" conversion.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def as_float(image) -> tuple[np.ndarray, tuple]:
    """(x, spec): ``x`` float32 (H, W, C) in [0, 1]; ``spec`` what ``restore`` needs to undo it."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr3 = arr[..., None]
    elif arr.ndim == 3 and arr.shape[2] in (1, 3):
        arr3 = arr
    else:
        raise ValueError(f'expected an image of shape (H, W), (H, W, 1) or (H, W, 3); got {arr.shape}')
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f'image too small to corrupt: {arr.shape}')
    if arr.dtype == np.uint8:
        x = arr3.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr3.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError('float images must have values in [0, 1]')
    else:
        raise ValueError(f'expected a uint8 or float image, got dtype {arr.dtype}')
    return np.ascontiguousarray(x), (arr.shape, arr.dtype)


def restore(y: np.ndarray, spec: tuple) -> np.ndarray:
    """Clip ``y`` to [0, 1] and give it back the caller's shape and dtype (uint8 rounded to nearest)."""
    shape, dtype = spec
    y = np.clip(np.asarray(y, np.float32), 0.0, 1.0).reshape(shape)
    if dtype == np.uint8:
        return np.rint(y * 255.0).astype(np.uint8)
    return y.astype(dtype)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255.0).astype(np.uint8)


def grey(x: np.ndarray) -> np.ndarray:
    """Luminance (H, W, 1) of an (H, W, C) image (the channel itself when C == 1)."""
    if x.shape[2] == 1:
        return x
    return (x @ LUMA)[..., None]


def colour(rgb, channels: int) -> np.ndarray:
    """An RGB colour in [0, 1] as a (channels,) vector: itself, or its luminance for grey images."""
    rgb = np.asarray(rgb, np.float32)
    return rgb if channels == 3 else np.array([rgb @ LUMA], np.float32)


def keep_channels(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1: put it back."""
    return y.reshape(like.shape)
