"""ImageMagick (through Wand) for the motion blur used by ``motion_blur`` and ``snow``.

Wand needs the MagickWand system library (Debian: ``apt-get install libmagickwand-6.q16-6``, done by
``scripts/setup.sh``). Without it these two corruptions raise ``MagickUnavailable``; the others work.
"""
from __future__ import annotations

import functools

import numpy as np

from errors import UserFacingError

INSTALL_HINT = ('motion_blur and snow use ImageMagick through Wand: pip install Wand, and install the '
                'MagickWand library (Debian/Ubuntu: apt-get install libmagickwand-6.q16-6; scripts/setup.sh '
                'does both)')


class MagickUnavailable(UserFacingError):
    """The message says what to install."""


@functools.lru_cache(maxsize=1)
def _wand_image():
    try:
        from wand.image import Image
    except ImportError as err:  # Wand raises ImportError when the shared library is missing
        return None, f'{err}'
    return Image, ''


def available() -> tuple[bool, str]:
    """(True, '') when Wand and ImageMagick load, else (False, the reason)."""
    image_cls, why = _wand_image()
    return image_cls is not None, (f'{why.rstrip(".")}. {INSTALL_HINT}' if image_cls is None else '')


def motion_blur_uint8(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur of a uint8 (H, W, C) image, C in {1, 3}; same shape and dtype back."""
    image_cls, why = _wand_image()
    if image_cls is None:
        raise MagickUnavailable(available()[1])
    arr = img[..., 0] if img.shape[2] == 1 else img
    with image_cls.from_array(np.ascontiguousarray(arr)) as im:
        im.motion_blur(radius=float(radius), sigma=float(sigma), angle=float(angle))
        out = np.array(im)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[2] != img.shape[2]:        # Wand may return an alpha or grey channel layout
        out = out[..., :1] if img.shape[2] == 1 else out[..., :3]
    return out.reshape(img.shape).astype(np.uint8)
