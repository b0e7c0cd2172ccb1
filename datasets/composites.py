"""Multi-object composites with priors, for prior-conditioned training of top-down models.

A top-down model trained on single objects never sees a prior other than its learned prompt, so a
class prior at test time is something it has not learned to use. ``PriorComposites`` wraps any
classification dataset (Fashion-MNIST, ImageNet folders, ...) and turns a share of its samples into
multi-object scenes, each with the prior the model is conditioned on:

**Geometry.** The canvas is the dataset's own image size H x W (after its transform), cut into a
``grid`` x ``grid`` array of cells of ``H // grid`` x ``W // grid`` pixels (cell (r, c) starts at row
``r * (H // grid)``, column ``c * (W // grid)``; pixels beyond the last full cell stay background). A
composite holds k items (k drawn uniformly from ``items``), each a sample of the dataset, of pairwise
different classes, shrunk to one cell (area interpolation) and drawn into k distinct random cells; the
other cells hold ``fill`` (the normalised value of a black pixel). With ``grid=2`` and a model patch
size dividing ``H // 2`` every cell is a whole number of tokens.

**Samples.** With probability ``1 - composite_prob`` a sample is the dataset's own (the learned prompt,
one-hot target). A composite carries one of three priors:

* with probability ``present_prob``: the class of one present item (chosen uniformly), target that item;
* with probability ``absent_prob``: a class absent from the image, target the soft label of the items
  present (1/k each). This is what stops the model from reading the answer from the prior: a prior
  alone never earns its class; only an item of that class in the image does;
* otherwise the learned prompt, target the soft label of the items present (the ordinary
  multi-object case, as CutMix teaches it).

Items are ``(image, soft target (num_classes,), prior class)``, the prior class being ``-1`` for the
learned prompt; ``losses.BatchPriors`` turns the ids into the prior vectors the model is called with.
``smoothing`` is label smoothing folded into every target. Every draw comes from a generator seeded by
``(seed, epoch, index)``: a sample is the same in every process and every run (DDP-safe), and
``set_epoch`` (called by main.py each epoch) gives a new draw per epoch. ``sample(index)`` also returns
the item classes, their cells and their pixel boxes, for measurement.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .errors import DatasetError

__all__ = ['PROMPT', 'PriorComposites', 'dataset_labels', 'compose', 'cell_boxes', 'box_masks']

#: The prior id of samples conditioned on the learned prompt (no class prior).
PROMPT = -1


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The integer class of every sample, without loading images: ``targets`` of the dataset
    (Fashion-MNIST, torchvision ImageFolder), through ``Subset`` indices (``--train-limit``)."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    targets = getattr(dataset, 'targets', None)
    if targets is None:
        raise DatasetError(f'composites need the class of every sample; {type(dataset).__name__} has no targets')
    labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError('composites need one integer class per sample (a classification dataset), got targets '
                           f'of shape {labels.shape} and type {labels.dtype}')
    return labels.astype(np.int64)


def cell_boxes(hw: Tuple[int, int], grid: int, cells: Sequence[int]) -> torch.Tensor:
    """Pixel boxes ``(top, left, bottom, right)`` (exclusive ends) of grid cells numbered row-major."""
    ch, cw = hw[0] // grid, hw[1] // grid
    return torch.tensor([[(c // grid) * ch, (c % grid) * cw, (c // grid + 1) * ch, (c % grid + 1) * cw]
                         for c in cells], dtype=torch.long).reshape(-1, 4)


def box_masks(hw: Tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
    """(k, H, W) boolean masks of the pixels inside each box."""
    rows, cols = torch.arange(hw[0])[:, None], torch.arange(hw[1])[None, :]
    out = torch.zeros(len(boxes), *hw, dtype=torch.bool)
    for i, (t, l, b, r) in enumerate(boxes.tolist()):
        out[i] = (rows >= t) & (rows < b) & (cols >= l) & (cols < r)
    return out


def compose(images: Sequence[torch.Tensor], cells: Sequence[int], grid: int,
            fill: Sequence[float]) -> torch.Tensor:
    """Images (C, H, W) shrunk to one grid cell each and drawn into ``cells`` of an (C, H, W) canvas of
    ``fill`` (one value per channel)."""
    c, h, w = images[0].shape
    canvas = torch.tensor(list(fill), dtype=images[0].dtype).reshape(-1, 1, 1).expand(c, h, w).clone()
    ch, cw = h // grid, w // grid
    for img, (t, l, _, _) in zip(images, cell_boxes((h, w), grid, cells).tolist()):
        if img.shape != (c, h, w):
            raise DatasetError(f'composite items must share one shape, got {tuple(img.shape)} and {(c, h, w)}')
        canvas[:, t:t + ch, l:l + cw] = F.interpolate(img[None], size=(ch, cw), mode='area')[0]
    return canvas


class PriorComposites(Dataset):
    """``base`` with multi-object composites and their priors mixed in (see the module docstring)."""

    def __init__(self, base: Dataset, num_classes: int, composite_prob: float = 0.5, items: Sequence[int] = (2, 3),
                 grid: int = 2, present_prob: float = 0.5, absent_prob: float = 0.3,
                 fill: Sequence[float] = (0.0,), smoothing: float = 0.0, seed: int = 0,
                 labels: Optional[np.ndarray] = None):
        self.base, self.num_classes = base, int(num_classes)
        self.labels = dataset_labels(base) if labels is None else np.asarray(labels, dtype=np.int64)
        self.composite_prob, self.items, self.grid = float(composite_prob), tuple(int(k) for k in items), int(grid)
        self.present_prob, self.absent_prob = float(present_prob), float(absent_prob)
        self.fill, self.smoothing, self.seed, self.epoch = tuple(fill), float(smoothing), int(seed), 0
        self._check()
        self._by_class = [np.flatnonzero(self.labels == c) for c in range(self.num_classes)]
        self._classes_present = np.array([len(ix) > 0 for ix in self._by_class])

    def _check(self) -> None:
        for name in ('composite_prob', 'present_prob', 'absent_prob', 'smoothing'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DatasetError(f'composites: {name} must lie in [0, 1], got {getattr(self, name)}')
        if self.present_prob + self.absent_prob > 1.0 + 1e-9:
            raise DatasetError(f'composites: present_prob + absent_prob must be at most 1, got '
                               f'{self.present_prob} + {self.absent_prob}')
        if self.grid < 1 or not self.items or min(self.items) < 1 or max(self.items) > self.grid ** 2:
            raise DatasetError(f'composites: items {self.items} must lie in [1, {self.grid ** 2}] for a '
                               f'{self.grid}x{self.grid} grid')
        distinct = len(np.unique(self.labels))
        need = max(self.items) + (1 if self.absent_prob > 0 else 0)
        if distinct < need:
            raise DatasetError(f'composites of {max(self.items)} items of different classes'
                               + (' plus an absent class' if self.absent_prob > 0 else '')
                               + f' need {need} classes; the data has {distinct}')
        if len(self.labels) != len(self.base):
            raise DatasetError(f'{len(self.labels)} labels for {len(self.base)} samples')
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DatasetError(f'labels must lie in [0, {self.num_classes}), got up to {self.labels.max()}')

    def set_epoch(self, epoch: int) -> None:
        """A new draw of composites and priors for each epoch (the same in every process)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def _one_hot(self, classes: Sequence[int]) -> torch.Tensor:
        """Soft label of ``classes`` (1/k each), with label smoothing."""
        t = torch.zeros(self.num_classes)
        t[list(classes)] = 1.0 / len(classes)
        return t * (1 - self.smoothing) + self.smoothing / self.num_classes

    def _partners(self, rng: np.random.Generator, first: int, k: int) -> list:
        """``first`` and ``k - 1`` random samples, all of different classes."""
        chosen, used = [first], {int(self.labels[first])}
        while len(chosen) < k:
            c = int(rng.choice([c for c in range(self.num_classes) if c not in used and self._classes_present[c]]))
            chosen.append(int(rng.choice(self._by_class[c])))
            used.add(c)
        return chosen

    def _prior(self, rng: np.random.Generator, classes: Sequence[int]) -> Tuple[int, Sequence[int], str]:
        """``(prior class or PROMPT, target classes, kind)`` of a composite of ``classes``."""
        u = rng.random()
        if u < self.present_prob:
            c = int(classes[rng.integers(len(classes))])
            return c, [c], 'present'
        if u < self.present_prob + self.absent_prob:
            absent = [c for c in range(self.num_classes) if c not in classes]
            return int(rng.choice(absent)), list(classes), 'absent'
        return PROMPT, list(classes), 'prompt'

    def sample(self, index: int) -> Dict[str, object]:
        """Everything about sample ``index``: ``image``, ``target``, ``prior`` (class or ``PROMPT``),
        ``kind`` (``single``, ``present``, ``absent``, ``prompt``), ``indices`` and ``classes`` of its items,
        their ``cells`` and pixel ``boxes`` (top, left, bottom, right) (a single sample: the whole image)."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        if rng.random() >= self.composite_prob:
            img, label = self.base[index]
            label = int(label)
            h, w = img.shape[-2:]
            return {'image': img, 'target': self._one_hot([label]), 'prior': PROMPT, 'kind': 'single',
                    'indices': [int(index)], 'classes': [label], 'cells': [],
                    'boxes': torch.tensor([[0, 0, h, w]])}
        k = int(rng.choice(self.items))
        indices = self._partners(rng, int(index), k)
        cells = [int(c) for c in rng.permutation(self.grid ** 2)[:k]]
        images = [self.base[i][0] for i in indices]
        classes = [int(self.labels[i]) for i in indices]
        prior, target_classes, kind = self._prior(rng, classes)
        hw = tuple(images[0].shape[-2:])
        return {'image': compose(images, cells, self.grid, self.fill), 'target': self._one_hot(target_classes),
                'prior': prior, 'kind': kind, 'indices': indices, 'classes': classes, 'cells': cells,
                'boxes': cell_boxes(hw, self.grid, cells)}

    def __getitem__(self, index: int):
        s = self.sample(index)
        return s['image'], s['target'], torch.tensor(s['prior'], dtype=torch.long)

    def __repr__(self) -> str:
        return (f'PriorComposites({type(self.base).__name__}, n={len(self)}, composite_prob={self.composite_prob}, '
                f'items={self.items}, grid={self.grid}, present_prob={self.present_prob}, '
                f'absent_prob={self.absent_prob})')
