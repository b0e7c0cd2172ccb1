"""ImageNet class lists (wnids) from the data files in ``robustness/data``, and the class masks built from
them: the model's output columns of a class subset (ImageNet-A, ImageNet-R).

* ``imagenet_wnids.txt``: the 1000 ImageNet-1k wnids in the standard (sorted) order: output column i of an
  ImageNet classifier is wnid i.
* ``imagenet_a_wnids.txt`` / ``imagenet_r_wnids.txt``: the 200 classes of ImageNet-A / ImageNet-R (sorted),
  as released by hendrycks/natural-adv-examples and hendrycks/imagenet-r. Which benchmark uses which list is
  the ``subset`` of its row in ``robustness.benchmarks``.
"""
from __future__ import annotations

import functools
import os
from typing import List, Sequence

import torch

from . import benchmarks

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
IMAGENET_FILE = 'imagenet_wnids.txt'


def read_wnids(path: str) -> List[str]:
    """One wnid per line (blank lines and '#' comments ignored); duplicates are an error."""
    with open(path) as f:
        wnids = [ln.split('#')[0].strip() for ln in f]
    wnids = [w for w in wnids if w]
    dup = sorted({w for w in wnids if wnids.count(w) > 1}) if len(set(wnids)) != len(wnids) else []
    if dup:
        raise ValueError(f'{path}: duplicated wnids {dup[:5]}')
    return wnids


def wnids(name: str) -> tuple:
    """The wnid list ``name``: 'imagenet' (the 1000 classes), or the key of a folder benchmark with a class
    subset ('imagenet_a', 'imagenet_r', ...)."""
    if name == 'imagenet':
        return _data_file(IMAGENET_FILE)
    subset = benchmarks.by_key(name).subset
    if subset is None:
        raise ValueError(f'{name} has no class subset: it covers every class of the model')
    return _data_file(subset)


@functools.lru_cache(maxsize=None)
def _data_file(file: str) -> tuple:
    """A wnid file of ``robustness/data`` (or an absolute path), read once."""
    return tuple(read_wnids(os.path.join(DATA_DIR, file)))


def class_mask(subset: Sequence[str], model_wnids: Sequence[str]) -> torch.Tensor:
    """LongTensor of the output columns (indices into ``model_wnids``) of ``subset``, in subset order.

    Every wnid of ``subset`` must be one of the model's classes."""
    index = {w: i for i, w in enumerate(model_wnids)}
    missing = [w for w in subset if w not in index]
    if missing:
        raise ValueError(f'{len(missing)} of the {len(subset)} subset classes are not among the model\'s '
                         f'{len(model_wnids)} classes (e.g. {missing[:3]})')
    return torch.tensor([index[w] for w in subset], dtype=torch.long)
