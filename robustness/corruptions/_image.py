"""Array conventions shared by the corruptions.

Every corruption works on a float64 array ``x`` of shape (H, W, C), C in {1, 3}, values in [0, 1], and
returns an array of the same shape (not necessarily clipped), or ``Levels`` (the same on the 0..255 scale).
``as_float`` / ``restore`` convert from and back to what the caller passed: uint8 in [0, 255] or float in
[0, 1], shape (H, W), (H, W, 1) or (H, W, 3).

The conversions are the benchmark's own, so that a deterministic corruption gives its bytes: uint8 / 255.
in float64 on the way in, and ``clip(y, 0, 1) * 255`` truncated to uint8 on the way out (``np.uint8`` of
the float result, as ImageNet-C was written), in the dtype the corruption computed in (zoom blur is float32
there, like the benchmark's).
"""
from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY and PIL's "L" conversion.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def as_float(image) -> tuple[np.ndarray, tuple]:
    """(x, spec): ``x`` float64 (H, W, C) in [0, 1]; ``spec`` what ``restore`` needs to undo it."""
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
        x = arr3 / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr3.astype(np.float64)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError('float images must have values in [0, 1]')
    else:
        raise ValueError(f'expected a uint8 or float image, got dtype {arr.dtype}')
    return np.ascontiguousarray(x), (arr.shape, arr.dtype)


class Levels:
    """A corruption's result on the 0..255 scale, for ``restore``.

    The benchmark computes frost on that scale (``a * image + b * photo``); dividing by 255 and multiplying
    back would move a few exact integers just below themselves, which truncation then drops by a level."""
    __slots__ = ('values',)

    def __init__(self, values):
        self.values = np.asarray(values)


def restore(y, spec: tuple) -> np.ndarray:
    """Clip ``y`` and give it back the caller's shape and dtype (uint8 truncated, as the benchmark does)."""
    shape, dtype = spec
    if isinstance(y, Levels):
        levels = np.clip(y.values, 0, 255)
        y = levels / 255
    else:
        y = np.clip(np.asarray(y), 0, 1)
        levels = y * 255      # in y's own dtype, like the benchmark's ``np.clip(x, 0, 1) * 255``
    if dtype == np.uint8:
        return levels.reshape(shape).astype(np.uint8)
    return y.reshape(shape).astype(dtype)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round to uint8: for an input image (exact multiples of 1/255 come back as themselves) handed to a
    library that wants bytes (PIL, ImageMagick); results go through ``restore`` instead."""
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
