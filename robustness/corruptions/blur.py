"""Blur corruptions: gaussian, glass, defocus, motion (ImageMagick), zoom."""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from . import magick
from ._image import keep_channels, to_uint8


def smooth(x, sigma, mode='nearest', truncate=4.0):
    """Spatial Gaussian filter of an (H, W[, C]) array (scikit-image's ``gaussian`` defaults)."""
    if sigma <= 0:
        return x
    sig = (sigma, sigma) + (0,) * (x.ndim - 2)
    return gaussian_filter(x, sig, mode=mode, truncate=truncate)


def gaussian_blur(x, p, rng):
    return smooth(x, p.sigma)


def _local_shuffle(h, w, delta, iterations, rng):
    """Index permutation of the published glass-blur loop: sweep the image from the bottom-right corner,
    swapping each pixel with a random neighbour up to ``delta`` away (offsets in [-delta, delta)).

    The swaps are sequential (a pixel can move several times), so they run in a Python loop over a list of
    flat indices; the indices themselves are computed with numpy."""
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    perm = list(range(h * w))
    if rows.size == 0 or cols.size == 0:
        return np.asarray(perm)
    here = (rows[:, None] * w + cols[None, :]).ravel()
    for _ in range(iterations):
        offs = rng.integers(-delta, delta, size=(here.size, 2))      # (dx, dy) per visited pixel
        there = here + offs[:, 1] * w + offs[:, 0]
        for a, b in zip(here.tolist(), there.tolist()):
            perm[a], perm[b] = perm[b], perm[a]
    return np.asarray(perm)


def glass_blur(x, p, rng):
    h, w, ch = x.shape
    y = smooth(x, p.sigma)
    perm = _local_shuffle(h, w, p.max_delta, p.iterations, rng)
    y = y.reshape(h * w, ch)[perm].reshape(h, w, ch)
    return smooth(y, p.sigma)


def disk_kernel(radius, alias_blur):
    """Normalised disk of ``radius`` px on a grid of at least 17 x 17, anti-aliased by a small Gaussian."""
    half = max(8, int(math.ceil(radius)))
    grid = np.arange(-half, half + 1, dtype=np.float32)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    return cv2.GaussianBlur(disk, (ksize, ksize), alias_blur)


def resample_kernel(kernel, scale):
    """``kernel`` (odd square) resampled to ``scale`` times its size (odd side, normalised)."""
    if abs(scale - 1) < 1e-6:
        return kernel
    n = kernel.shape[0]
    m = max(1, 2 * int(round((n * scale - 1) / 2)) + 1)
    interp = cv2.INTER_AREA if m < n else cv2.INTER_LINEAR
    out = cv2.resize(kernel, (m, m), interpolation=interp)
    return out / out.sum()


def defocus_blur(x, p, rng):
    kernel = resample_kernel(disk_kernel(p.radius, p.alias_blur), p.scale)
    return keep_channels(cv2.filter2D(x, -1, kernel), x)


def motion_blur(x, p, rng):
    angle = rng.uniform(-45, 45)
    return magick.motion_blur_uint8(to_uint8(x), p.radius, p.sigma, angle).astype(np.float32) / 255.0


def zoom(x, factor, border=cv2.BORDER_REFLECT):
    """Magnify ``x`` by ``factor`` about its centre, keeping its size (bilinear)."""
    h, w = x.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    # output pixel (u, v) samples input ((u - cx) / f + cx, (v - cy) / f + cy)
    m = np.float32([[factor, 0, (1 - factor) * cx], [0, factor, (1 - factor) * cy]])
    return keep_channels(cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border), x)


def zoom_blur(x, p, rng):
    factors = np.arange(1, p.stop, p.step)
    acc = x.copy()
    for f in factors:
        acc += zoom(x, float(f))
    return acc / (len(factors) + 1)
