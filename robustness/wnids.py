"""ImageNet class lists (wnids) from the data files in ``robustness/data``, and the class masks built from
them: the model's output columns of a 200-class subset (ImageNet-A, ImageNet-R).

* ``imagenet_wnids.txt``: the 1000 ImageNet-1k wnids in the standard (sorted) order: output column i of an
  ImageNet classifier is wnid i.
* ``imagenet_a_wnids.txt`` / ``imagenet_r_wnids.txt``: the 200 classes of ImageNet-A / ImageNet-R (sorted),
  as released by hendrycks/natural-adv-examples and hendrycks/imagenet-r.
"""
from __future__ import annotations

import functools
import os
from typing import List, Sequence

import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
FILES = {'imagenet': 'imagenet_wnids.txt', 'imagenet_a': 'imagenet_a_wnids.txt',
         'imagenet_r': 'imagenet_r_wnids.txt'}


def read_wnids(path: str) -> List[str]:
    """One wnid per line (blank lines and '#' comments ignored); duplicates are an error."""
    with open(path) as f:
        wnids = [ln.split('#')[0].strip() for ln in f]
    wnids = [w for w in wnids if w]
    dup = sorted({w for w in wnids if wnids.count(w) > 1}) if len(set(wnids)) != len(wnids) else []
    if dup:
        raise ValueError(f'{path}: duplicated wnids {dup[:5]}')
    return wnids


@functools.lru_cache(maxsize=None)
def wnids(name: str) -> tuple:
    """The wnid list ``name`` ('imagenet', 'imagenet_a' or 'imagenet_r')."""
    return tuple(read_wnids(os.path.join(DATA_DIR, FILES[name])))


def class_mask(subset: Sequence[str], model_wnids: Sequence[str]) -> torch.Tensor:
    """LongTensor of the output columns (indices into ``model_wnids``) of ``subset``, in subset order.

    Every wnid of ``subset`` must be one of the model's classes."""
    index = {w: i for i, w in enumerate(model_wnids)}
    missing = [w for w in subset if w not in index]
    if missing:
        raise ValueError(f'{len(missing)} of the {len(subset)} subset classes are not among the model\'s '
                         f'{len(model_wnids)} classes (e.g. {missing[:3]})')
    return torch.tensor([index[w] for w in subset], dtype=torch.long)
