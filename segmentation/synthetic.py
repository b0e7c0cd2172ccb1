"""Small synthetic segmentation datasets in the three standard folder layouts (tests and demos).

Each image is a noisy background with a few filled rectangles and discs; a shape's class decides its
colour, so a model can learn the task in a few iterations, which is what the tests need. The label
maps follow each dataset's convention: ADE20K ids 1..150 (0 "other" is ignored after
``reduce_zero_label``; the background here is id 1), VOC ids 0..20 with a 255 border, Cityscapes
train ids 0..18 (255 void; the background here is 0, road).
"""
import os
from typing import List, Tuple

import numpy as np
from PIL import Image

__all__ = ['synthetic_scene', 'write_ade20k', 'write_voc', 'write_cityscapes', 'VOC_PALETTE']


def _colour(cls: int) -> np.ndarray:
    """A fixed, well-separated colour per class id."""
    rng = np.random.default_rng(1000 + cls)
    return rng.integers(40, 256, 3)


def synthetic_scene(rng: np.random.Generator, size: Tuple[int, int], classes: List[int], background: int,
                    shapes: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image (H, W, 3) and its label map (H, W) of ``background`` and shapes of ``classes``."""
    h, w = size
    img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    label = np.full((h, w), background, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(shapes):
        cls = int(rng.choice(classes))
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(max(3, h // 8), max(4, h // 3))
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if rng.random() < 0.5 else \
            ((abs(yy - cy) < r) & (abs(xx - cx) < r))
        label[inside] = cls
        noise = rng.integers(-20, 20, (int(inside.sum()), 3))
        img[inside] = np.clip(_colour(cls) + noise, 0, 255).astype(np.uint8)
    return img, label


def write_ade20k(root: str, n_train: int = 4, n_val: int = 2, size=(64, 64), classes=(2, 3, 4), seed=0,
                 background: int = 1) -> str:
    """ADEChallengeData2016 layout: ``images/{training,validation}/*.jpg``, ``annotations/.../*.png``."""
    rng = np.random.default_rng(seed)
    for split, n in (('training', n_train), ('validation', n_val)):
        for d in ('images', 'annotations'):
            os.makedirs(os.path.join(root, d, split), exist_ok=True)
        for i in range(n):
            img, label = synthetic_scene(rng, size, list(classes), background=background)
            name = f'ADE_{split[:5]}_{i:08d}'
            Image.fromarray(img).save(os.path.join(root, 'images', split, name + '.jpg'), quality=95)
            Image.fromarray(label).save(os.path.join(root, 'annotations', split, name + '.png'))
    return root


#: the PASCAL VOC colour map (index 0 black, 255 the white-ish border), as VOC's PNGs carry it
VOC_PALETTE = [c for i in range(256) for c in
               ([224, 224, 192] if i == 255 else
                [sum(((i >> (3 * k + s)) & 1) << (7 - k) for k in range(3)) for s in range(3)])]


def _border(label: np.ndarray) -> np.ndarray:
    """VOC marks object outlines 255 (ignored): pixels whose right or lower neighbour differs."""
    out = label.copy()
    edge = np.zeros_like(label, bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1] |= label[:-1] != label[1:]
    out[edge] = 255
    return out


def write_voc(root: str, n_train: int = 4, n_val: int = 2, size=(64, 64), classes=(1, 2, 3), seed=0) -> str:
    """VOC2012 layout: ``JPEGImages/*.jpg``, palette ``SegmentationClass/*.png``, ``ImageSets/Segmentation``."""
    rng = np.random.default_rng(seed)
    for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for split, n in (('train', n_train), ('val', n_val)):
        names = [f'2007_{split}{i:04d}' for i in range(n)]
        for name in names:
            img, label = synthetic_scene(rng, size, list(classes), background=0)
            Image.fromarray(img).save(os.path.join(root, 'JPEGImages', name + '.jpg'), quality=95)
            png = Image.fromarray(_border(label), mode='P')
            png.putpalette(VOC_PALETTE)
            png.save(os.path.join(root, 'SegmentationClass', name + '.png'))
        with open(os.path.join(root, 'ImageSets/Segmentation', split + '.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    return root


def write_cityscapes(root: str, n_train: int = 4, n_val: int = 2, size=(64, 128), classes=(1, 11, 13), seed=0,
                     background: int = 0) -> str:
    """Cityscapes layout: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
    ``gtFine/.../*_gtFine_labelTrainIds.png`` (train ids; 255 void)."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        city = 'aachen' if split == 'train' else 'frankfurt'
        for d in ('leftImg8bit', 'gtFine'):
            os.makedirs(os.path.join(root, d, split, city), exist_ok=True)
        for i in range(n):
            img, label = synthetic_scene(rng, size, list(classes), background=background)
            stem = f'{city}_{i:06d}_000019'
            Image.fromarray(img).save(os.path.join(root, 'leftImg8bit', split, city, stem + '_leftImg8bit.png'))
            Image.fromarray(label).save(os.path.join(root, 'gtFine', split, city, stem + '_gtFine_labelTrainIds.png'))
    return root
