"""The benchmark's six frost photographs, read from the installed ``imagecorruptions`` package.

ImageNet-C's frost blends a crop of a real frost photograph into the image. The photographs ship inside the
PyPI package ``imagecorruptions`` (Apache-2.0, ``imagecorruptions/frost/``), which ``scripts/setup.sh``
installs (``pip install --no-deps imagecorruptions==1.1.2``: only its data is used, so its dependencies,
among them the non-headless opencv-python, are not wanted). Only the files are read: the package's own code
is never imported (it calls APIs that today's scikit-image and setuptools removed).
"""
from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import math

import cv2
import numpy as np

from errors import UserFacingError

PACKAGE = 'imagecorruptions'
NAMES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg')
#: The published code draws the photo with ``np.random.randint(5)``: frost6.jpg ships but is never used.
DRAWN = 5
INSTALL_HINT = ('frost blends the benchmark\'s frost photographs, shipped in the PyPI package imagecorruptions: '
                'pip install --no-deps imagecorruptions==1.1.2 (scripts/setup.sh does this)')


class PhotosMissing(UserFacingError):
    """The message says what to install."""


def _folder():
    """The package's ``frost/`` folder (a Traversable), found without executing the package's code."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise PhotosMissing(f'the package {PACKAGE} is not installed. {INSTALL_HINT}')
    # a module object made from the spec but not executed: importlib.resources needs only its spec
    return importlib.resources.files(importlib.util.module_from_spec(spec)) / 'frost'


def available() -> tuple[bool, str]:
    """(True, '') when all six photographs are found, else (False, the reason)."""
    try:
        folder = _folder()
    except PhotosMissing as err:
        return False, str(err)
    missing = [n for n in NAMES if not folder.joinpath(n).is_file()]
    if missing:
        return False, f'{", ".join(missing)} missing from {folder}. {INSTALL_HINT}'
    return True, ''


@functools.lru_cache(maxsize=len(NAMES))
def photo(index: int) -> np.ndarray:
    """Photograph ``index`` (0..5) as RGB uint8 (H, W, 3), decoded by OpenCV as the benchmark's ``imread``."""
    ok, why = available()
    if not ok:
        raise PhotosMissing(why)
    data = np.frombuffer(_folder().joinpath(NAMES[index]).read_bytes(), np.uint8)
    rgb = np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
    rgb.flags.writeable = False
    return rgb


@functools.lru_cache(maxsize=4 * len(NAMES))
def scaled(index: int, factor: float, height: int, width: int) -> np.ndarray:
    """Photograph ``index`` resized by ``factor`` (bilinear, as the published CIFAR and Tiny-ImageNet code),
    or, where that would not cover a ``height`` x ``width`` image, by just enough to cover it."""
    src = photo(index)
    ph, pw = src.shape[:2]
    if factor == 1:
        out = src
    else:
        out = cv2.resize(src, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    if out.shape[0] < height or out.shape[1] < width:
        cover = max(height / ph, width / pw)
        size = (max(width, math.ceil(pw * cover)), max(height, math.ceil(ph * cover)))
        out = cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)
    out.flags.writeable = False
    return out
