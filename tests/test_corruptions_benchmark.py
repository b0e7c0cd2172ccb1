"""The deterministic corruptions against the benchmark's published code, byte for byte, on a real photo.

References, written here independently of ``robustness.corruptions``:

* at 224 px, the ImageNet-C functions of the installed ``imagecorruptions`` package, run as they are (a shim
  maps scikit-image's removed ``multichannel=True`` to ``channel_axis=-1`` and stands in for setuptools'
  removed ``pkg_resources``, which the package imports);
* the published formulas (``ref_*`` below, from ``make_imagenet_c.py`` / ``make_tinyimagenet_c.py`` of
  hendrycks/robustness), checked against the package at 224 px and then used with the Tiny-ImageNet-C table
  at 64 px; pixelate and frost follow ``make_imagenet_c.py`` where the package departs from it (its pixelate
  upsamples with NEAREST instead of BOX; its frost rescales the photo by 1.1 before cropping);
* frost: the photo and crop the corruption drew are found by template matching of the frost layer, then the
  output must equal the published blend of that very crop.

Every comparison is of uint8 images after the benchmark's ``np.uint8`` (truncation).
"""
import functools
import importlib.util
import io
import os
import sys
import types
import warnings

import cv2
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
from skimage import data
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

from robustness.corruptions import Corruption, corrupt, photos

FROST_NAMES = ['frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg']
SCALE_FREE = ['brightness', 'contrast', 'saturate', 'jpeg_compression', 'pixelate', 'zoom_blur']
DETERMINISTIC = SCALE_FREE + ['defocus_blur', 'gaussian_blur']
# make_tinyimagenet_c.py (64 px)
TINY = {
    'brightness': [.1, .2, .3, .4, .5],
    'contrast': [.4, .3, .2, .1, .05],
    'saturate': [(.3, 0), (.1, 0), (2, 0), (5, .1), (30, .2)],
    'jpeg_compression': [65, 58, 50, 40, 25],
    'pixelate': [.9, .8, .7, .6, .5],
    'defocus_blur': [(.5, .6), (1, .1), (1.5, .1), (2.5, .01), (3, .1)],
    'gaussian_blur': [.5, .75, 1, 1.25, 1.5],
    'zoom_blur': [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)],
    'frost': [(1, .3), (.9, .4), (.8, .45), (.75, .5), (.7, .55)],
}
# make_imagenet_c.py, for the two the package does not run as published
IMAGENET = {'pixelate': [.6, .5, .4, .3, .25], 'frost': [(1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)]}


def astronaut(h, w=None):
    return cv2.resize(data.astronaut(), (w or h, h), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------ published formulas

def ref_brightness(img, c):
    hsv = rgb2hsv(img / 255.)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def ref_contrast(img, c):
    x = img / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def ref_saturate(img, c):
    hsv = rgb2hsv(img / 255.)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def ref_jpeg_compression(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, 'JPEG', quality=quality)
    return np.asarray(Image.open(buf))


def ref_pixelate(img, c):
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def ref_defocus_blur(img, c):
    radius, alias_blur = c
    ax = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(ax, ax)
    disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
    disk /= disk.sum()
    kernel = cv2.GaussianBlur(disk, (3, 3) if radius <= 8 else (5, 5), alias_blur)
    x = img / 255.
    out = np.stack([cv2.filter2D(x[:, :, k], -1, kernel) for k in range(3)], axis=2)
    return np.clip(out, 0, 1) * 255


def ref_gaussian_blur(img, sigma):
    return np.clip(gaussian(img / 255., sigma=sigma, channel_axis=-1), 0, 1) * 255


def ref_zoom_blur(img, c):
    """Centre crop of ceil(side / factor), scipy.ndimage.zoom (order 1), centred trim; mean with the image."""
    x = (img / 255.).astype(np.float32)
    x = x[..., None] if x.ndim == 2 else x
    h, w = x.shape[:2]
    factors = np.arange(1, c[0], c[1])
    out = np.zeros_like(x)
    for f in factors:
        ch, cw = int(np.ceil(h / f)), int(np.ceil(w / f))
        top, left = (h - ch) // 2, (w - cw) // 2
        z = scipy.ndimage.zoom(x[top:top + ch, left:left + cw], (f, f, 1), order=1)
        th, tw = (z.shape[0] - h) // 2, (z.shape[1] - w) // 2
        out += z[th:th + h, tw:tw + w]
    y = np.clip((x + out) / (len(factors) + 1), 0, 1) * 255
    return y[..., 0] if img.ndim == 2 else y


def ref_frost(img, c, photo, top, left):
    h, w = img.shape[:2]
    return np.clip(c[0] * np.array(img) + c[1] * photo[top:top + h, left:left + w], 0, 255)


REF = {n: globals()[f'ref_{n}'] for n in DETERMINISTIC}


# ------------------------------------------------------------------------------------ the package, shimmed

@pytest.fixture(scope='module')
def package():
    """``imagecorruptions.corruptions`` importable and callable on today's libraries (shims undone after)."""
    if importlib.util.find_spec('imagecorruptions') is None:
        pytest.fail(f'imagecorruptions is not installed: {photos.INSTALL_HINT}')
    root = os.path.dirname(importlib.util.find_spec('imagecorruptions').origin)
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec('pkg_resources') is None:
            stub = types.ModuleType('pkg_resources')
            stub.resource_filename = lambda pkg, rel: os.path.join(root, rel)
            mp.setitem(sys.modules, 'pkg_resources', stub)
        with warnings.catch_warnings():     # it imports scipy.ndimage.interpolation (deprecated)
            warnings.simplefilter('ignore', DeprecationWarning)
            import imagecorruptions.corruptions as ic

        @functools.wraps(ic.gaussian)
        def gaussian_today(image, sigma=1, multichannel=None, **kw):
            return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)

        mp.setattr(ic, 'gaussian', gaussian_today)
        yield ic


def published(package, img, name, severity):
    """The benchmark's uint8 output for ``img`` (224 px tables)."""
    if name == 'pixelate':
        return ref_pixelate(img, IMAGENET['pixelate'][severity - 1])
    arg = Image.fromarray(img) if name == 'jpeg_compression' else img
    return np.uint8(getattr(package, name)(arg, severity))


def assert_same_bytes(ours, theirs, what):
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert ours.shape == theirs.shape and diff.max() == 0, \
        f'{what}: {np.count_nonzero(diff)} values differ, mean |diff| {diff.mean():.4f}, max {diff.max()}'


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize('name', DETERMINISTIC)
def test_224px_equals_the_package(package, name):
    img = astronaut(224)
    for s in range(1, 6):
        assert_same_bytes(corrupt(img, name, s), published(package, img, name, s), f'{name} severity {s}')


@pytest.mark.parametrize('name', [n for n in DETERMINISTIC if n != 'pixelate'])
def test_reference_formulas_are_the_package(package, name):
    """The formulas used at 64 px below give the package's bytes at 224 px (with its constants)."""
    img = astronaut(224)
    consts = {'brightness': [.1, .2, .3, .4, .5], 'contrast': [.4, .3, .2, .1, .05],
              'saturate': [(.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)], 'jpeg_compression': [25, 18, 15, 10, 7],
              'defocus_blur': [(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)], 'gaussian_blur': [1, 2, 3, 4, 6],
              'zoom_blur': [(1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)]}[name]
    for s in (1, 5):
        assert_same_bytes(np.uint8(REF[name](img, consts[s - 1])), published(package, img, name, s), name)


@pytest.mark.parametrize('name', DETERMINISTIC)
def test_64px_equals_the_tiny_imagenet_c_formulas(name):
    img = astronaut(64)
    for s in range(1, 6):
        assert_same_bytes(corrupt(img, name, s), np.uint8(REF[name](img, TINY[name][s - 1])), f'{name} {s}')


@pytest.mark.parametrize('name', SCALE_FREE)
def test_non_square_equals_the_package(package, name):
    """Scale-free corruptions (and zoom blur, cropped per side) at 160 x 240 with the ImageNet-C table."""
    img = astronaut(160, 240)
    for s in (1, 3, 5):
        assert_same_bytes(corrupt(img, name, s, profile='imagenet'), published(package, img, name, s), name)


@pytest.mark.parametrize('size', [28, 224])
def test_grey_zoom_blur_equals_the_package(package, size):
    img = cv2.cvtColor(astronaut(size), cv2.COLOR_RGB2GRAY)
    for s in (1, 5):
        ours = corrupt(img, 'zoom_blur', s, profile='imagenet')
        assert_same_bytes(ours, published(package, img, 'zoom_blur', s), f'grey {size} px')
        assert_same_bytes(corrupt(img[..., None], 'zoom_blur', s, profile='imagenet')[..., 0], ours, 'H x W x 1')


# ------------------------------------------------------------------------------------ frost

@functools.lru_cache(maxsize=None)
def frost_photo(index, fx=None):
    """Photograph ``index`` as the published code reads it (cv2.imread, optional resize), in RGB."""
    path = os.path.join(os.path.dirname(importlib.util.find_spec('imagecorruptions').origin), 'frost',
                        FROST_NAMES[index])
    bgr = cv2.imread(path)
    if fx:
        bgr = cv2.resize(bgr, (0, 0), fx=fx, fy=fx)
    return np.ascontiguousarray(bgr[..., [2, 1, 0]])


def locate_crop(out, img, c, fx):
    """(photo index, top, left) whose crop best explains ``out = a * img + b * crop`` (template matching)."""
    layer = ((out.astype(np.float32) - c[0] * img.astype(np.float32)) / c[1]).astype(np.float32)
    best = None
    for index in range(6):
        score = cv2.matchTemplate(frost_photo(index, fx).astype(np.float32), layer, cv2.TM_SQDIFF)
        top, left = np.unravel_index(np.argmin(score), score.shape)
        cand = (score[top, left], index, int(top), int(left))
        best = cand if best is None or cand < best else best
    return best[1:]


@pytest.mark.parametrize('size, table, fx', [(224, IMAGENET['frost'], None), (64, TINY['frost'], .3)])
def test_frost_is_the_published_blend_of_a_benchmark_photo(size, table, fx):
    img = astronaut(size)
    dark = img // 4                        # no clipping: the frost layer can be read back from the output
    found = set()
    for seed in range(4):
        index, top, left = locate_crop(corrupt(dark, 'frost', 1, rng=seed), dark, table[0], fx)
        assert index < photos.DRAWN, 'frost6.jpg is never drawn by the benchmark'
        photo = frost_photo(index, fx)
        assert 0 <= top < max(1, photo.shape[0] - size) and 0 <= left < max(1, photo.shape[1] - size)
        found.add((index, top, left))
        for s in range(1, 6):              # the same draws at every severity, on the photo itself too
            for im in (dark, img):
                assert_same_bytes(corrupt(im, 'frost', s, rng=seed), np.uint8(ref_frost(im, table[s - 1], photo,
                                                                                         top, left)),
                                  f'frost {size} px seed {seed} severity {s}')
    assert len(found) == 4                 # different seeds, different crops


def test_frost_on_any_size():
    """Images larger than the photographs, elongated, tiny or grey: the photo is rescaled to cover them."""
    for shape in [(448, 448, 3), (224, 1400, 3), (1400, 224), (8, 8, 3), (2, 2), (28, 28)]:
        img = np.full(shape, 40, np.uint8)
        out = corrupt(img, 'frost', 5, rng=0)
        assert out.shape == shape and out.dtype == np.uint8 and out.std() > 1, shape


def test_missing_photos_are_a_clear_error(monkeypatch):
    for attr, value in [('PACKAGE', 'imagecorruptions_not_here'), ('NAMES', photos.NAMES[:5] + ('gone.jpg',))]:
        with monkeypatch.context() as mp:
            mp.setattr(photos, attr, value)
            photos.photo.cache_clear()
            photos.scaled.cache_clear()
            with pytest.raises(photos.PhotosMissing, match='pip install --no-deps imagecorruptions'):
                corrupt(astronaut(32), 'frost', 1, rng=0)
            with pytest.raises(photos.PhotosMissing):
                Corruption('frost', 1)
    photos.photo.cache_clear()
    photos.scaled.cache_clear()
    assert photos.available() == (True, '')
