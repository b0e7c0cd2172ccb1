"""Blur corruptions: gaussian, glass, defocus, motion (ImageMagick), zoom."""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter, zoom

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
    # the benchmark stores the first blur as uint8 (truncated) before shuffling
    y = np.floor(np.clip(smooth(x, p.sigma), 0, 1) * 255) / 255
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
    return magick.motion_blur_uint8(to_uint8(x), p.radius, p.sigma, angle) / 255.0


def clipped_zoom(x, factor):
    """The benchmark's zoom about the centre: crop the central ceil(side / factor) pixels of each side,
    magnify them by ``factor`` with ``scipy.ndimage.zoom`` (bilinear, corners on corners), trim the extra
    pixels that rounding adds (centred). (H, W) or (H, W, C) in, the same shape out, for factor >= 1."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top:top + ch, left:left + cw]
    if crop.ndim == 2:
        z = zoom(crop, factor, order=1)
    else:   # per channel: the same numbers as one zoom by (factor, factor, 1), and faster
        z = np.stack([zoom(crop[..., k], factor, order=1) for k in range(crop.shape[2])], axis=2)
    top, left = (z.shape[0] - h) // 2, (z.shape[1] - w) // 2
    return z[top:top + h, left:left + w]


def zoom_blur(x, p, rng):
    """Mean of the image and its zooms by each factor in arange(1, stop, step), in float32 as published."""
    factors = np.arange(1, p.stop, p.step)
    x = x.astype(np.float32)
    acc = np.zeros_like(x)
    for f in factors:
        acc += clipped_zoom(x, f)
    return (x + acc) / (len(factors) + 1)
