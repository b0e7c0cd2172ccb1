"""Digital corruptions: brightness, contrast, saturate, JPEG, pixelate, elastic transform."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv

from ._image import grey, keep_channels, to_uint8
from .blur import smooth


def brightness(x, p, rng):
    """Raise the HSV value; scikit-image's HSV in float64, the benchmark's conversion, gives its bytes."""
    if x.shape[2] == 1:          # HSV value of a grey pixel is the pixel itself
        return x + p.delta
    hsv = rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + p.delta, 0, 1)
    return hsv2rgb(hsv)


def contrast(x, p, rng):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * p.factor + mean


def saturate(x, p, rng):
    rgb = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x
    hsv = rgb2hsv(rgb)
    hsv[..., 1] = np.clip(hsv[..., 1] * p.factor + p.offset, 0, 1)
    out = hsv2rgb(hsv)
    return grey(out) if x.shape[2] == 1 else out


def _pil(x):
    arr = to_uint8(x)
    return Image.fromarray(arr[..., 0] if x.shape[2] == 1 else arr)


def _from_pil(img, like):
    return np.asarray(img).reshape(like.shape) / 255.0


def jpeg_compression(x, p, rng):
    buf = io.BytesIO()
    _pil(x).save(buf, format='JPEG', quality=int(p.quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return _from_pil(img.convert('L' if x.shape[2] == 1 else 'RGB'), x)


def pixelate(x, p, rng):
    h, w, _ = x.shape
    small = (max(1, int(w * p.ratio)), max(1, int(h * p.ratio)))
    img = _pil(x).resize(small, Image.BOX).resize((w, h), Image.BOX)
    return _from_pil(img, x)


def elastic_transform(x, p, rng):
    h, w, _ = x.shape
    # a random affine: three points around the centre, each moved by up to +-affine px
    centre = np.float32([w // 2, h // 2])
    d = min(h, w) // 3
    src = np.float32([centre + d, [centre[0] + d, centre[1] - d], centre - d])
    dst = src + rng.uniform(-p.affine, p.affine, size=src.shape).astype(np.float32)
    warped = cv2.warpAffine(x.astype(np.float32), cv2.getAffineTransform(src, dst), (w, h),   # as published
                            borderMode=cv2.BORDER_REFLECT_101)
    warped = keep_channels(warped, x)
    # a smooth random displacement field of amplitude alpha, smoothness sigma
    dx = smooth(rng.uniform(-1, 1, (h, w)), p.sigma, mode='reflect', truncate=3) * p.alpha
    dy = smooth(rng.uniform(-1, 1, (h, w)), p.sigma, mode='reflect', truncate=3) * p.alpha
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = cv2.remap(warped, gx + dx.astype(np.float32), gy + dy.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    return keep_channels(out, x)
