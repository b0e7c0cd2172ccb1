"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle."""
from __future__ import annotations

import numpy as np


def gaussian_noise(x, p, rng):
    return x + rng.normal(0.0, p.sigma, x.shape)


def shot_noise(x, p, rng):
    return rng.poisson(x * p.photons) / float(p.photons)


def impulse_noise(x, p, rng):
    hit = rng.random(x.shape) < p.amount          # each value independently, like skimage's 's&p'
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


def speckle_noise(x, p, rng):
    return x + x * rng.normal(0.0, p.sigma, x.shape)
