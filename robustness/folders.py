"""Benchmark folders on disk: layout checks with one clear error, and their datasets.

Expected layouts (``<wnid>`` is an ImageNet class id such as ``n01440764``):

* ImageNet-C (``--inc_path DIR``): ``DIR/<corruption>/<severity 1..5>/<wnid>/*.JPEG``, e.g.
  ``DIR/gaussian_noise/3/n01440764/ILSVRC2012_val_00000293.JPEG`` (the released tarballs, extracted into
  one folder). Images are 224 x 224 crops already: they are centre-cropped to the input size, not resized.
* The folder benchmarks of ``robustness.benchmarks``, ImageNet-A / ImageNet-R / ImageNet-Sketch (``--ina_path``
  / ``--inr_path`` / ``--insk_path DIR``): ``DIR/<wnid>/*`` (200 class folders for A and R, 1000 for Sketch),
  the usual eval resize and crop.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence

from datasets.errors import DatasetError
from errors import UserError

from .corruptions.params import ALL_CORRUPTIONS, SEVERITIES

WNID = re.compile(r'^n\d{8}$')
INC_LAYOUT = ('DIR/<corruption>/<severity 1..5>/<wnid>/<image> (e.g. DIR/gaussian_noise/3/n01440764/'
              'ILSVRC2012_val_00000293.JPEG), with <corruption> among: ' + ', '.join(ALL_CORRUPTIONS))
CLASS_LAYOUT = 'DIR/<wnid>/<image> (e.g. DIR/n01440764/0001.jpg), one folder per class'
IMAGENET_C_GROUPS = ('noise', 'blur', 'weather', 'digital', 'extra')


class LayoutError(DatasetError, UserError):
    """A benchmark folder that is missing or not in the expected layout."""


def _subdirs(path: str) -> List[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith('.'))


def _require_dir(path: str, flag: str, layout: str) -> None:
    if not path or not os.path.isdir(path):
        raise LayoutError(f'{flag} {path}: no such folder. Expected layout: {layout}.')


def _hint_inc(path: str, subs: Sequence[str]) -> str:
    if subs and all(s in {str(v) for v in SEVERITIES} for s in subs):
        return (f' {path} looks like the folder of a single corruption (it holds severity folders 1..5): '
                f'pass its parent, {os.path.dirname(os.path.abspath(path))}.')
    if subs and all(WNID.match(s) for s in subs):
        return f' {path} looks like a single severity folder (it holds class folders): pass the folder two levels up.'
    nested = [g for g in subs if g in IMAGENET_C_GROUPS]
    if nested:
        return (f' {path} holds group folders ({", ".join(nested)}): move the corruption folders inside them '
                f'(e.g. {path}/{nested[0]}/<corruption>) directly under {path}.')
    return ''


def imagenet_c_plan(root: str, corruptions: Sequence[str] | None, severities: Sequence[int]
                    ) -> Dict[str, Dict[int, str]]:
    """``{corruption: {severity: folder}}`` for ImageNet-C at ``root``.

    ``corruptions`` None: every corruption folder present (at least one); otherwise exactly those. Each one
    needs every requested severity folder, each with class folders named by wnids.
    """
    flag = '--inc_path'
    _require_dir(root, flag, INC_LAYOUT)
    subs = _subdirs(root)
    present = [c for c in ALL_CORRUPTIONS if c in subs]
    if corruptions is None:
        if not present:
            holds = ', '.join(subs[:8]) + ('...' if len(subs) > 8 else '') or 'nothing'
            raise LayoutError(f'{flag} {root}: no corruption folders found (it holds: {holds}).'
                              f'{_hint_inc(root, subs)} Expected layout: {INC_LAYOUT}.')
        wanted = present
    else:
        missing = [c for c in corruptions if c not in present]
        if missing:
            raise LayoutError(f'{flag} {root}: corruption folder(s) {", ".join(missing)} not found '
                              f'(present: {", ".join(present) or "none"}).{_hint_inc(root, subs)} '
                              f'Expected layout: {INC_LAYOUT}.')
        wanted = list(corruptions)
    plan: Dict[str, Dict[int, str]] = {}
    for c in wanted:
        plan[c] = {}
        for s in severities:
            folder = os.path.join(root, c, str(s))
            if not os.path.isdir(folder):
                raise LayoutError(f'{flag} {root}: severity folder {folder} not found. Expected layout: {INC_LAYOUT}.')
            check_class_folders(folder, flag)
            plan[c][s] = folder
    return plan


def check_class_folders(folder: str, flag: str) -> List[str]:
    """The wnid class folders of ``folder``; an error if there are none or some are not wnids."""
    subs = _subdirs(folder)
    bad = [s for s in subs if not WNID.match(s)]
    if not subs or bad:
        what = 'no class folders' if not subs else f'folders that are not ImageNet wnids ({", ".join(bad[:5])})'
        layout = INC_LAYOUT if flag == '--inc_path' else CLASS_LAYOUT
        raise LayoutError(f'{flag}: {folder} has {what}. Expected layout: {layout}.')
    return subs


def class_folder_root(root: str, flag: str) -> List[str]:
    """Check a folder benchmark's folder (ImageNet-A/R/Sketch, ...); returns its wnid class folders."""
    _require_dir(root, flag, CLASS_LAYOUT)
    subs = _subdirs(root)
    if len(subs) == 1 and not WNID.match(subs[0]):   # e.g. DIR/imagenet-a/<wnid>/...
        inner = os.path.join(root, subs[0])
        if _subdirs(inner) and all(WNID.match(s) for s in _subdirs(inner)):
            raise LayoutError(f'{flag} {root}: the class folders are one level down, in {inner}: pass that folder. '
                              f'Expected layout: {CLASS_LAYOUT}.')
    return check_class_folders(root, flag)


def remap_targets(dataset, index: Dict[str, int], flag: str, root: str) -> None:
    """Relabel an ImageFolder in place: class folder ``wnid`` -> ``index[wnid]``."""
    unknown = [c for c in dataset.classes if c not in index]
    if unknown:
        raise LayoutError(f'{flag} {root}: class folder(s) {", ".join(unknown[:5])} are not among the '
                          f'{len(index)} classes evaluated here.')
    new = [index[c] for c in dataset.classes]
    dataset.samples = [(p, new[t]) for p, t in dataset.samples]
    dataset.imgs = dataset.samples
    dataset.targets = [t for _, t in dataset.samples]
