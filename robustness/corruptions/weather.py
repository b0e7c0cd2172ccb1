"""Weather corruptions: snow (ImageMagick), frost (the benchmark's photographs), fog (plasma fractal), spatter."""
from __future__ import annotations

import cv2
import numpy as np

from . import magick, photos
from ._image import Levels, colour, grey
from .blur import clipped_zoom, smooth
from .textures import plasma_fractal

WATER = (175 / 255, 238 / 255, 238 / 255)   # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)         # brown


def snow(x, p, rng):
    h, w, ch = x.shape
    flakes = rng.normal(p.mean, p.std, (h, w)).astype(np.float32)
    flakes = clipped_zoom(flakes, max(1.0, p.zoom))      # flakes at least one pixel wide
    flakes[flakes < p.threshold] = 0
    flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)[..., None]   # truncated, as published
    streaks = magick.motion_blur_uint8(flakes, p.blur_radius, p.blur_sigma, rng.uniform(-135, -45))
    streaks = streaks.astype(np.float32) / 255.0
    whitened = np.maximum(x, grey(x) * 1.5 + 0.5)
    y = p.blend * x + (1 - p.blend) * whitened
    return y + streaks + np.rot90(streaks, 2)


def frost_layer(index, top, left, h, w, ch, photo_scale):
    """The (h, w, ch) crop at (top, left) of frost photograph ``index`` scaled by ``photo_scale`` (grey
    images: its luminance), float64 on the 0..255 scale."""
    crop = photos.scaled(index, photo_scale, h, w)[top:top + h, left:left + w].astype(np.float64)
    return grey(crop) if ch == 1 else crop


def frost(x, p, rng):
    """The benchmark's frost: ``a * image + b * crop`` of one of its photographs, on the 0..255 scale.

    As published, the photo is drawn among the first five, then the crop's top and left offsets, each
    uniform in [0, photo side - image side) (0 where the two are equal)."""
    h, w, ch = x.shape
    index = int(rng.integers(photos.DRAWN))
    ph, pw = photos.scaled(index, p.photo_scale, h, w).shape[:2]
    top = int(rng.integers(0, max(1, ph - h)))
    left = int(rng.integers(0, max(1, pw - w)))
    return Levels(p.image_weight * (x * 255) + p.frost_weight * frost_layer(index, top, left, h, w, ch,
                                                                             p.photo_scale))


def fog(x, p, rng):
    h, w, _ = x.shape
    peak = x.max()
    haze = plasma_fractal(max(h, w), p.decay, rng)[:h, :w, None].astype(np.float32)
    return (x + p.strength * haze) * peak / (peak + p.strength)


def _water_sheen(liquid):
    """Embossed distance-to-edge shading of the liquid blobs (the published recipe), float32 (H, W)."""
    blobs = np.rint(np.clip(liquid, 0, 1) * 255).astype(np.uint8)
    edges = cv2.Canny(blobs, 50, 150)
    dist = cv2.distanceTransform(255 - edges, cv2.DIST_L2, 5)
    dist = np.minimum(dist, 20)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def spatter(x, p, rng):
    h, w, ch = x.shape
    liquid = smooth(rng.normal(p.mean, p.std, (h, w)), p.sigma)
    liquid[liquid < p.threshold] = 0
    if not p.mud:   # water drops: a turquoise sheen
        m = liquid * _water_sheen(liquid)
        peak = m.max()
        m = m / peak * p.intensity if peak > 0 else m
        return x + m[..., None].astype(np.float32) * colour(WATER, ch)
    m = smooth((liquid > p.threshold).astype(np.float32), p.intensity)   # mud: opaque brown blobs
    m[m < 0.8] = 0
    m = m[..., None]
    return x * (1 - m) + m * colour(MUD, ch)
