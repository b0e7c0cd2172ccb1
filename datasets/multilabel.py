"""Multi-label datasets (multi-hot float targets) and the IDA release's transforms.

* ``COCO2014``: MS-COCO 2014 from its standard layout, ``DATA_PATH/{train2014,val2014}/*.jpg`` and
  ``DATA_PATH/annotations/instances_{train,val}2014.json``; 80 classes in the order of their category ids;
  every image of the JSON is kept (82,783 / 40,504), those without objects with an all-zero target, as the
  release does.
* ``VOC2007``: PASCAL VOC 2007 from ``DATA_PATH`` = ``VOCdevkit/VOC2007`` (or a folder holding ``VOCdevkit``):
  ``ImageSets/Main/{trainval,test}.txt``, ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``; 20 classes;
  "difficult" objects count as negatives (a class is positive only through a non-difficult object), as the
  release does.
* ``FMNIST_ML``: offline canvases of 2-4 Fashion-MNIST items (``FashionMNISTCanvases``), for tests and demos;
  item masks are kept for analysis (``sample``).

Transforms (the release's): a square resize to the input size (448; 576 with ``--input-size 576``), then in
training one cutout hole of half the side filled with a random colour, then RandAugment (``--aa``).
"""
import json
import os
import random
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import DatasetError
from .fmnist import CLASSES as FMNIST_CLASSES, FashionMNIST
from .folder import load_image
from .transforms import ConvertMode, fit_channels, input_hw, pillow_safe_posterize

__all__ = ['VOC_CLASSES', 'COCO_NUM_CLASSES', 'CocoMultiLabel', 'VocMultiLabel', 'FashionMNISTCanvases', 'Cutout',
           'build_multilabel_transform', 'build_canvases']

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
#: MS-COCO's object categories (the class counts of every ``--data-set`` are in ``datasets.DATASET_SPECS``)
COCO_NUM_CLASSES = 80


class _MultiLabelFiles(Dataset):
    """Image paths with multi-hot targets; images are read (RGB) and transformed on access."""
    classes: Sequence[str] = ()

    def __init__(self, paths: List[str], targets: np.ndarray, transform: Optional[Callable]):
        self.paths, self.targets, self.transform = paths, torch.from_numpy(targets.astype(np.float32)), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_image(self.paths[index])
        return (self.transform(img) if self.transform else img), self.targets[index]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f'COCO annotations not found: {path}. --data-path must hold annotations/'
                           'instances_{train,val}2014.json and the train2014/ and val2014/ image folders '
                           '(https://cocodataset.org/#download: 2014 Train/Val images and annotations).')
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f'cannot read COCO annotations {path}: {e}') from None


class CocoMultiLabel(_MultiLabelFiles):
    """MS-COCO 2014 train or val as a multi-label dataset (80 classes, sorted by category id)."""

    def __init__(self, root: str, train: bool, transform: Optional[Callable] = None):
        split = 'train2014' if train else 'val2014'
        ann_path = os.path.join(root, 'annotations', f'instances_{split}.json')
        ann = _read_json(ann_path)
        try:
            cats = sorted(ann['categories'], key=lambda c: c['id'])
            index = {c['id']: i for i, c in enumerate(cats)}
            images = ann['images']
            rows = {img['id']: r for r, img in enumerate(images)}
            targets = np.zeros((len(images), len(cats)), dtype=np.float32)
            for a in ann['annotations']:
                targets[rows[a['image_id']], index[a['category_id']]] = 1.0
        except (KeyError, TypeError) as e:
            raise DatasetError(f'{ann_path} is not a COCO instances file (missing {e})') from None
        if len(cats) != COCO_NUM_CLASSES:
            raise DatasetError(f'{ann_path} has {len(cats)} categories, MS-COCO has {COCO_NUM_CLASSES}')
        self.classes = tuple(c['name'] for c in cats)
        super().__init__([os.path.join(root, split, img['file_name']) for img in images], targets, transform)


def _voc_root(root: str) -> str:
    for candidate in (root, os.path.join(root, 'VOCdevkit', 'VOC2007'), os.path.join(root, 'VOC2007')):
        if os.path.isdir(os.path.join(candidate, 'Annotations')):
            return candidate
    raise DatasetError(f'no PASCAL VOC 2007 under {root}: expected VOCdevkit/VOC2007 with Annotations/, '
                       'JPEGImages/ and ImageSets/Main/{trainval,test}.txt (the VOCtrainval and VOCtest tar files '
                       'unpacked into the same folder).')


def _voc_target(xml_path: str) -> np.ndarray:
    """Multi-hot target of one annotation file: positive classes are those of its non-difficult objects."""
    target = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    try:
        for obj in ET.parse(xml_path).getroot().iter('object'):
            if (obj.findtext('difficult') or '0').strip() == '1':
                continue
            target[VOC_CLASSES.index(obj.findtext('name').strip().lower())] = 1.0
    except (ET.ParseError, OSError, ValueError, AttributeError) as e:
        raise DatasetError(f'cannot read VOC annotation {xml_path}: {e}') from None
    return target


class VocMultiLabel(_MultiLabelFiles):
    """PASCAL VOC 2007 trainval (training) or test (evaluation) as a multi-label dataset."""
    classes = VOC_CLASSES

    def __init__(self, root: str, train: bool, transform: Optional[Callable] = None):
        root = _voc_root(root)
        split = os.path.join(root, 'ImageSets', 'Main', 'trainval.txt' if train else 'test.txt')
        if not os.path.isfile(split):
            raise DatasetError(f'VOC 2007 image list not found: {split}')
        with open(split) as f:
            ids = [line.strip() for line in f if line.strip()]
        targets = np.stack([_voc_target(os.path.join(root, 'Annotations', f'{i}.xml')) for i in ids]) if ids \
            else np.zeros((0, len(VOC_CLASSES)), dtype=np.float32)
        super().__init__([os.path.join(root, 'JPEGImages', f'{i}.jpg') for i in ids], targets, transform)


class FashionMNISTCanvases(Dataset):
    """Canvases of 2-4 Fashion-MNIST items: an offline multi-label task (10 classes) for tests and demos.

    The canvas (``size``, default 64) is a 2x2 grid of cells; each item goes to its own cell with a random
    offset inside it, so items never overlap and every item mask is exact. Canvas ``i`` is drawn from a
    generator seeded by ``(seed, split, i)``: the same index always gives the same canvas, in any process, with
    no state to checkpoint. Items of training canvases come from the training split, of test canvases from the
    test split. ``sample(i)`` also returns the item masks, labels and boxes (for drawing attention on them).
    """
    classes = FMNIST_CLASSES

    def __init__(self, root: Optional[str] = None, train: bool = True, transform: Optional[Callable] = None,
                 num_canvases: Optional[int] = None, size: int = 64, items: Tuple[int, int] = (2, 4), seed: int = 0):
        if size < 56:
            raise DatasetError(f'FMNIST_ML canvases need at least 56 px (a 2x2 grid of 28 px items), got {size}')
        self.items = FashionMNIST(root, train=train)
        self.train, self.transform, self.size, self.range, self.seed = train, transform, size, items, seed
        self.num = num_canvases or len(self.items) // 3

    def __len__(self) -> int:
        return self.num

    def sample(self, index: int) -> Dict[str, object]:
        """``image`` (uint8 size x size), ``target`` (10 floats, multi-hot), ``labels``, ``masks`` (n, size, size
        bool: the item's pixels above 0), ``boxes`` (n x (top, left, bottom, right))."""
        rng = np.random.default_rng([self.seed, int(self.train), index])
        n = int(rng.integers(self.range[0], self.range[1] + 1))
        cells = rng.permutation(4)[:n]
        picks = rng.integers(0, len(self.items), size=n)
        cell, slack = self.size // 2, self.size // 2 - 28
        canvas = np.zeros((self.size, self.size), dtype=np.uint8)
        masks, boxes = np.zeros((n, self.size, self.size), dtype=bool), []
        for j, (c, p) in enumerate(zip(cells, picks)):
            top = (c // 2) * cell + int(rng.integers(0, slack + 1))
            left = (c % 2) * cell + int(rng.integers(0, slack + 1))
            item = self.items.data[p].numpy()
            canvas[top:top + 28, left:left + 28] = item
            masks[j, top:top + 28, left:left + 28] = item > 0
            boxes.append((top, left, top + 28, left + 28))
        labels = self.items.targets[picks].tolist()
        target = torch.zeros(len(FMNIST_CLASSES))
        target[labels] = 1.0
        return {'image': canvas, 'target': target, 'labels': labels, 'masks': masks, 'boxes': boxes}

    def __getitem__(self, index: int):
        s = self.sample(index)
        img = Image.fromarray(s['image'])
        return (self.transform(img) if self.transform else img), s['target']


class Cutout:
    """One square hole of ``fraction`` of the image side at a uniformly random centre (clipped at the borders),
    filled with a random colour: the release's cutout (length 224 at 448 px). It draws from Python's ``random``
    and NumPy's global generators, which the training state checkpoints, so resumed runs cut the same holes."""

    def __init__(self, fraction: float = 0.5):
        self.fraction = fraction

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.copy()
        w, h = img.size
        half_h, half_w = int(self.fraction * h) // 2, int(self.fraction * w) // 2
        yc, xc = np.random.randint(h), np.random.randint(w)
        box = [max(xc - half_w, 0), max(yc - half_h, 0), min(xc + half_w, w), min(yc + half_h, h)]
        fill = tuple(random.randint(0, 255) for _ in range(len(img.getbands())))
        ImageDraw.Draw(img).rectangle(box, fill=fill if len(fill) > 1 else fill[0])
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(fraction={self.fraction})'


def build_multilabel_transform(args, is_train: bool) -> Callable:
    """Square resize to the input size; in training cutout (``--cutout`` fraction, 0 for none) then
    RandAugment (``--aa``, 'none' for none); ToTensor, Normalize."""
    hw = input_hw(args)
    in_chans = int(getattr(args, 'in_chans', 3))
    ops = [ConvertMode(in_chans), transforms.Resize(hw, interpolation=transforms.InterpolationMode.BILINEAR)]
    aa = getattr(args, 'aa', None)
    if is_train:
        if getattr(args, 'cutout', 0.0):
            ops.append(Cutout(args.cutout))
        if aa not in (None, '', 'none', 'None'):
            mean = fit_channels(args.mean, in_chans)
            fill = tuple(int(round(255 * m)) for m in mean)
            ops.append(rand_augment_transform(aa, {'img_mean': fill if in_chans == 3 else fill[0]}))
    ops += [transforms.ToTensor(),
            transforms.Normalize(fit_channels(args.mean, in_chans), fit_channels(args.std, in_chans))]
    tf = transforms.Compose(ops)
    pillow_safe_posterize(tf)  # timm's posterize at 0 bits fails on today's Pillow (see datasets/transforms.py)
    return tf


def build_canvases(root: str, is_train: bool, args, transform: Callable, limit: Optional[int] = None) -> Dataset:
    """``FMNIST_ML``'s split (``datasets.DATASET_SPECS``' builder): ``limit`` canvases (default a third of the
    split's items), of the input size when ``args`` sets one, else 64 px."""
    return FashionMNISTCanvases(root, is_train, transform, num_canvases=limit,
                                size=input_hw(args)[0] if getattr(args, 'input_size', None) else 64)
