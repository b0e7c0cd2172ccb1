"""Train and eval transforms, built from the data config in ``args``.

``args`` carries ``input_size`` (int or (H, W)), ``in_chans``, ``mean``, ``std``, ``crop_pct`` and
``interpolation`` (main.py resolves them from the model's pretrained_cfg unless flags set them),
plus the augmentation flags for training.
"""
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms

__all__ = ['ConvertMode', 'ApplyCorruption', 'build_train_transform', 'build_eval_transform', 'input_hw',
           'fit_channels']


class ConvertMode:
    """PIL mode conversion to the model's channel count (``L`` for 1 channel, ``RGB`` for 3)."""

    def __init__(self, in_chans: int):
        if in_chans not in (1, 3):
            raise ValueError(f'images can be fed to 1- or 3-channel models, not {in_chans}')
        self.mode = 'L' if in_chans == 1 else 'RGB'

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.mode!r})'


class ApplyCorruption:
    """Apply ``fn: np.ndarray (H, W, C) uint8 -> np.ndarray`` to a PIL image (C = 1 for grey images).

    The result is clipped to [0, 255] and cast to uint8. ``fn`` must be picklable when the data
    loader uses worker processes.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn

    def __call__(self, img: Image.Image) -> Image.Image:
        arr = np.asarray(img)
        grey = arr.ndim == 2
        if grey:
            arr = arr[:, :, None]
        out = np.asarray(self.fn(np.ascontiguousarray(arr)))
        if out.dtype != np.uint8:
            out = np.clip(np.rint(out) if np.issubdtype(out.dtype, np.floating) else out, 0, 255).astype(np.uint8)
        if out.ndim == 3 and out.shape[2] == 1:
            out = out[:, :, 0]
        return Image.fromarray(out)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({getattr(self.fn, "__name__", self.fn)!r})'


class FitToSize:
    """Resize (shorter side) and centre-crop to ``hw``; images already of that size pass untouched."""

    def __init__(self, hw: Tuple[int, int], interpolation):
        self.hw = hw
        self.resize = transforms.Resize(_size_arg(hw), interpolation=interpolation)
        self.crop = transforms.CenterCrop(hw)

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.hw[1], self.hw[0]):
            return img
        return self.crop(self.resize(img))

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.hw}, {self.resize.interpolation.value})'


def input_hw(args) -> Tuple[int, int]:
    size = args.input_size
    if isinstance(size, (tuple, list)):
        size = tuple(size)[-2:]
        return (int(size[0]), int(size[1])) if len(size) == 2 else (int(size[0]),) * 2
    return int(size), int(size)


def fit_channels(values: Sequence[float], in_chans: int) -> Tuple[float, ...]:
    """Mean/std for ``in_chans`` channels: averaged to 1, or a single value repeated."""
    values = tuple(float(v) for v in (values if isinstance(values, (tuple, list)) else (values,)))
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    if len(values) == 1:
        return values * in_chans
    raise ValueError(f'{len(values)} normalisation values for {in_chans} channels')


def _size_arg(hw: Tuple[int, int]) -> Union[int, Tuple[int, int]]:
    return hw[0] if hw[0] == hw[1] else hw


def _posterize_old_pillow(img, bits_to_keep, **_):
    """timm's ``posterize`` with the behaviour of the Pillow the release ran: ``bits_to_keep <= 0``
    gives a black image. Pillow 13 raises ValueError for
    bits outside 1..8, and timm's ``PosterizeIncreasing`` yields 0 bits whenever the noisy magnitude
    (m9, mstd 0.5) is clipped to 10: about 0.16% of images, i.e. the ImageNet recipe's loader dies
    within the first few batches."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def pillow_safe_posterize(transform) -> int:
    """Replace the posterize function of every RandAugment/AutoAugment op inside ``transform``
    (a torchvision Compose); returns how many ops were patched."""
    n = 0
    for t in getattr(transform, 'transforms', [transform]):
        for op in getattr(t, 'ops', []) or []:
            if getattr(op, 'name', '').startswith('Posterize'):
                op.aug_fn = _posterize_old_pillow
                n += 1
    return n


def build_train_transform(args) -> Callable:
    """The training augmentation: timm's ``create_transform`` with the DeiT flags.

    ``train_crop='rrc'``: RandomResizedCrop (``scale``/``ratio``), the ImageNet recipe.
    ``train_crop='pad'``: resize + centre crop to the input size, then a random crop with
    ``crop_padding`` pixels of zero padding (DeiT's choice for images of 32 px or less).
    """
    hw = input_hw(args)
    in_chans = int(getattr(args, 'in_chans', 3))
    mean, std = fit_channels(args.mean, in_chans), fit_channels(args.std, in_chans)
    aa = getattr(args, 'aa', None)
    aa = None if aa in (None, '', 'none', 'None') else aa
    jitter = getattr(args, 'color_jitter', 0.0)
    scale = getattr(args, 'scale', None)
    ratio = getattr(args, 'ratio', None)
    tf = create_transform(
        input_size=_size_arg(hw), is_training=True,
        scale=tuple(scale) if scale else None, ratio=tuple(ratio) if ratio else None,
        hflip=float(getattr(args, 'hflip', 0.5)), vflip=float(getattr(args, 'vflip', 0.0)),
        color_jitter=jitter if jitter else None, auto_augment=aa,
        interpolation=getattr(args, 'train_interpolation', 'bicubic'),
        mean=mean, std=std,
        re_prob=float(getattr(args, 'reprob', 0.0)), re_mode=getattr(args, 'remode', 'pixel'),
        re_count=int(getattr(args, 'recount', 1)),
    )
    ops = list(tf.transforms)
    if getattr(args, 'train_crop', 'rrc') == 'pad':
        interp = str_to_interp_mode(getattr(args, 'interpolation', 'bicubic') or 'bicubic')
        crop = [FitToSize(hw, interp)]
        padding = int(getattr(args, 'crop_padding', 0))
        if padding > 0:
            crop.append(transforms.RandomCrop(hw, padding=padding))
        ops = crop + ops[1:]  # replaces timm's RandomResizedCrop
    tf = transforms.Compose([ConvertMode(in_chans)] + ops)
    pillow_safe_posterize(tf)
    return tf


def build_eval_transform(args, corruption: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Callable:
    """Resize to ``input_size / crop_pct`` (shorter side), centre crop to ``input_size``, then the optional
    ``corruption`` on the uint8 (H, W, C) crop, then ToTensor and Normalize."""
    hw = input_hw(args)
    in_chans = int(getattr(args, 'in_chans', 3))
    crop_pct = float(getattr(args, 'crop_pct', None) or 0.875)
    interp = str_to_interp_mode(getattr(args, 'interpolation', None) or 'bicubic')
    if hw[0] == hw[1]:
        resize = transforms.Resize(math.floor(hw[0] / crop_pct), interpolation=interp)
    else:
        resize = transforms.Resize(tuple(math.floor(s / crop_pct) for s in hw), interpolation=interp)
    ops = [ConvertMode(in_chans), resize, transforms.CenterCrop(hw)]
    if corruption is not None:
        ops.append(ApplyCorruption(corruption))
    ops += [transforms.ToTensor(),
            transforms.Normalize(fit_channels(args.mean, in_chans), fit_channels(args.std, in_chans))]
    return transforms.Compose(ops)
