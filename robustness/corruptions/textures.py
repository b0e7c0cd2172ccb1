"""Procedural texture: the plasma fractal behind fog (frost uses the benchmark's photographs, ``photos``)."""
from __future__ import annotations

import math

import numpy as np


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
