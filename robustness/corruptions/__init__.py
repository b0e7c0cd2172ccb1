"""ImageNet-C corruptions computed on the fly, for images of any size.

``corrupt(image, name, severity, rng)`` corrupts one image: uint8 in [0, 255] or float in [0, 1], shape
(H, W), (H, W, 1) or (H, W, 3); the result has the same shape and dtype. ``Corruption(name, severity, seed)``
is the picklable callable that dataset transforms use: its random numbers depend only on the seed, the
corruption and the image's pixels, so results do not depend on the order in which DataLoader workers see the
images, and the same random draws are reused across severities (severity curves are smoother).

Parameters and how they adapt to the image size: ``robustness.corruptions.params``.
"""
from __future__ import annotations

import zlib
from typing import Optional

import numpy as np

from . import blur, digital, magick, noise, photos, weather
from ._image import as_float, restore
from .params import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, PROFILES, SEVERITIES, check_name, \
    check_severity, resolve

FUNCTIONS = {
    'gaussian_noise': noise.gaussian_noise,
    'shot_noise': noise.shot_noise,
    'impulse_noise': noise.impulse_noise,
    'speckle_noise': noise.speckle_noise,
    'defocus_blur': blur.defocus_blur,
    'glass_blur': blur.glass_blur,
    'motion_blur': blur.motion_blur,
    'zoom_blur': blur.zoom_blur,
    'gaussian_blur': blur.gaussian_blur,
    'snow': weather.snow,
    'frost': weather.frost,
    'fog': weather.fog,
    'spatter': weather.spatter,
    'brightness': digital.brightness,
    'contrast': digital.contrast,
    'saturate': digital.saturate,
    'elastic_transform': digital.elastic_transform,
    'pixelate': digital.pixelate,
    'jpeg_compression': digital.jpeg_compression,
}
#: Corruptions that need ImageMagick (Wand).
NEEDS_MAGICK = ('motion_blur', 'snow')
#: Corruptions that need the benchmark's frost photographs (the ``imagecorruptions`` package's data).
NEEDS_PHOTOS = ('frost',)

__all__ = ['ALL_CORRUPTIONS', 'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'NEEDS_MAGICK', 'NEEDS_PHOTOS', 'PROFILES',
           'SEVERITIES', 'Corruption', 'corrupt', 'magick', 'missing_requirement', 'parse_corruptions',
           'parse_severities', 'photos']


def missing_requirement(names) -> Optional[str]:
    """Why some of the corruptions ``names`` cannot run here (ImageMagick, the frost photographs), or None.

    Checked before any work starts, so that a missing install fails in seconds, not after hours of evaluation."""
    for needs, module in ((NEEDS_MAGICK, magick), (NEEDS_PHOTOS, photos)):
        wanted = [n for n in names if n in needs]
        ok, why = module.available() if wanted else (True, '')
        if not ok:
            return f'{", ".join(wanted)}: {why}'
    return None


def corrupt(image, name: str, severity: int, rng=None, profile: str = 'auto') -> np.ndarray:
    """Corrupt one image with ``name`` at ``severity`` (1..5).

    ``rng``: a ``numpy.random.Generator``, or anything ``numpy.random.default_rng`` accepts (an int seed).
    ``profile``: 'auto' (by image size), or one of 'cifar', 'tiny', 'imagenet' (see ``params``).
    """
    check_name(name)
    x, spec = as_float(image)
    params = resolve(name, severity, x.shape[0], x.shape[1], profile)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return restore(FUNCTIONS[name](x, params, rng), spec)


class Corruption:
    """``image -> corrupted image`` with per-image random numbers derived from (seed, name, pixels)."""

    def __init__(self, name: str, severity: int, seed: int = 0, profile: str = 'auto'):
        check_name(name)
        if profile != 'auto' and profile not in PROFILES:
            raise ValueError(f'unknown profile {profile!r}; expected auto or one of {PROFILES}')
        self.name, self.severity, self.seed, self.profile = name, check_severity(severity), int(seed), profile
        why = missing_requirement([name])
        if why is not None:
            raise (magick.MagickUnavailable if name in NEEDS_MAGICK else photos.PhotosMissing)(why)

    def rng_for(self, image) -> np.random.Generator:
        arr = np.ascontiguousarray(image)
        key = zlib.crc32(arr.tobytes(), zlib.crc32(repr((arr.shape, arr.dtype.str)).encode()))
        return np.random.default_rng([self.seed, ALL_CORRUPTIONS.index(self.name), key])

    def __call__(self, image):
        if isinstance(image, np.ndarray):
            return corrupt(image, self.name, self.severity, self.rng_for(image), self.profile)
        from PIL import Image    # a PIL image in, a PIL image out
        arr = np.asarray(image)
        return Image.fromarray(corrupt(arr, self.name, self.severity, self.rng_for(arr), self.profile))

    def __repr__(self):
        return f'Corruption({self.name!r}, severity={self.severity}, seed={self.seed}, profile={self.profile!r})'


def parse_corruptions(spec) -> tuple[str, ...]:
    """'all' -> the 15; 'extra' -> the 4 extra; 'all+extra' -> 19; else comma-separated names."""
    if spec is None:
        return ()
    if isinstance(spec, (list, tuple)):
        names = [n for s in spec for n in parse_corruptions(s)]
        return tuple(dict.fromkeys(names))
    out = []
    for part in str(spec).split(','):
        part = part.strip()
        if part == 'all':
            out += CORRUPTIONS
        elif part == 'extra':
            out += EXTRA_CORRUPTIONS
        elif part in ('all+extra', 'every'):
            out += ALL_CORRUPTIONS
        elif part:
            check_name(part)
            out.append(part)
    return tuple(dict.fromkeys(out))


def parse_severities(spec) -> tuple[int, ...]:
    """'all' -> 1..5; else comma-separated integers in 1..5."""
    if spec is None or str(spec).strip() == 'all':
        return SEVERITIES
    if isinstance(spec, int):
        return (check_severity(spec),)
    return tuple(dict.fromkeys(check_severity(int(s)) for s in str(spec).split(',') if s.strip()))
