"""Procedural textures: the plasma fractal behind fog, and the frost textures.

Frost: ImageNet-C blends crops of six frost photographs into the image. Those photographs are not shipped
here, so six frost textures are *synthesised* instead, each from a fixed seed (they play the role of the
fixed photos; the per-image randomness is only which texture and where to crop). A texture is a 512 x 512
RGB image made of

* a cloudy base (a plasma fractal, mid-dark grey),
* ice crystals: branching random walks (dendrites) drawn as thin anti-aliased white lines, each with a
  soft glow (the same lines blurred),
* fine grain (blurred white noise),

tinted pale blue. Its statistics are chosen to resemble the photographs (mean about 0.4, bright thin
structures on a darker, cloudy background); absolute accuracies under frost are therefore comparable in
spirit, not numerically, to published ImageNet-C frost numbers.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

FROST_TEXTURES = 6
FROST_SIZE = 512
_FROST_SEED = 20230323


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map of side ``2**ceil(log2(size))`` (wrapping), scaled to [0, 1].

    The perturbation added at each level is uniform in +-w**2 with w = 100 / decay**level, as in the
    published ImageNet-C code; a smaller ``decay`` gives more fine detail.
    """
    n = 1 << max(1, math.ceil(math.log2(max(int(size), 2))))
    grid = np.zeros((n, n), dtype=np.float64)
    step, wibble = n, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        ring = corners + np.roll(corners, -1, axis=0)
        ring = ring + np.roll(ring, -1, axis=1)
        grid[half::step, half::step] = ring / 4 + wibble * rng.uniform(-wibble, wibble, ring.shape)
        centres = grid[half::step, half::step]
        corners = grid[0::step, 0::step]
        top = (corners + np.roll(corners, -1, axis=1)) + (centres + np.roll(centres, 1, axis=0))
        grid[0::step, half::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = (corners + np.roll(corners, -1, axis=0)) + (centres + np.roll(centres, 1, axis=1))
        grid[half::step, 0::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    peak = grid.max()
    return grid / peak if peak > 0 else grid


def _dendrite(canvas, rng, x, y, angle, length, width, depth):
    """Draw one branching random walk on ``canvas`` (float32, modified in place)."""
    pts = [(x, y)]
    seg = 3.0
    for _ in range(int(length / seg)):
        angle += rng.normal(0, 0.12)
        x, y = x + seg * math.cos(angle), y + seg * math.sin(angle)
        pts.append((x, y))
        if depth > 0 and rng.random() < 0.06:
            side = rng.choice((-1.0, 1.0))
            _dendrite(canvas, rng, x, y, angle + side * rng.uniform(0.8, 1.2), length * rng.uniform(0.2, 0.45),
                      max(1, width - 1), depth - 1)
    poly = np.round(np.array(pts) * 16).astype(np.int32)   # 4 fractional bits
    cv2.polylines(canvas, [poly], False, float(rng.uniform(0.55, 1.0)), thickness=width, lineType=cv2.LINE_AA,
                  shift=4)


@functools.lru_cache(maxsize=FROST_TEXTURES)
def frost_texture(index: int) -> np.ndarray:
    """Frost texture ``index`` (0..5): float32 (512, 512, 3) in [0, 1], identical on every call."""
    if not 0 <= index < FROST_TEXTURES:
        raise ValueError(f'frost texture index must be in 0..{FROST_TEXTURES - 1}')
    rng = np.random.default_rng([_FROST_SEED, index])
    size = FROST_SIZE
    base = plasma_fractal(size, 1.8, rng)[:size, :size].astype(np.float32)
    base = 0.18 + 0.3 * base
    lines = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(28, 40))):
        x, y = rng.uniform(-40, size + 40, 2)
        _dendrite(lines, rng, x, y, rng.uniform(0, 2 * math.pi), rng.uniform(80, 300), int(rng.integers(1, 3)), 2)
    glow = cv2.GaussianBlur(lines, (0, 0), 3.0)
    grain = cv2.GaussianBlur(rng.normal(0, 0.06, (size, size)).astype(np.float32), (0, 0), 0.8)
    tex = np.clip(base + 0.75 * lines + 0.6 * glow + grain, 0, 1)
    tint = np.array([0.86, 0.93, 1.0], np.float32)
    return np.ascontiguousarray(np.clip(tex[..., None] * tint + 0.04, 0, 1))
