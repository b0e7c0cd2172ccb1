"""Datasets of the training pipeline.

``--data-set`` selects one of

* ``FMNIST``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` files (``datasets/fmnist.py``);
* ``IMNET``: ImageNet-1k as ``DATA_PATH/train/<wnid>/*.JPEG`` and ``DATA_PATH/val/<wnid>/*.JPEG``;
* ``FOLDER``: any dataset in that train/val layout; the class count is the number of class folders;
* ``COCO2014``, ``VOC2007``, ``FMNIST_ML``: multi-label (multi-hot targets; ``datasets/multilabel.py``);
  ``dataset_task(data_set)`` says which task a choice is (``classification`` or ``multilabel``).

Public API (used by main.py and the robustness evaluation):
``build_dataset(is_train, args, corruption=None) -> (dataset, num_classes)``,
``build_eval_transform(args, corruption=None)``, ``build_train_transform(args)``,
``build_folder_dataset(root, args, corruption=None)``, ``dataset_num_classes(args)``; prior-conditioned
training's multi-object composites: ``PriorComposites`` (``datasets/composites.py``); the training recipe
of each dataset: ``recipes.recipe(data_set)`` (``datasets/recipes.py``).
"""
import os
from typing import Callable, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset, Subset

from .composites import PROMPT, PriorComposites
from .errors import DatasetError, UnreadableImageError
from .fmnist import DEFAULT_ROOT as FMNIST_ROOT, FashionMNIST
from .folder import SafeImageFolder, count_classes, load_image
from .multilabel import MULTILABEL_CLASSES, build_multilabel_dataset
from .recipes import RECIPES, recipe
from .transforms import ApplyCorruption, ConvertMode, build_eval_transform, build_train_transform, fit_channels, \
    input_hw

__all__ = ['DATASETS', 'DatasetError', 'UnreadableImageError', 'FashionMNIST', 'SafeImageFolder', 'build_dataset',
           'build_eval_transform', 'build_train_transform', 'build_folder_dataset', 'dataset_num_classes',
           'default_data_path', 'dataset_task', 'RECIPES', 'recipe', 'ApplyCorruption', 'ConvertMode', 'fit_channels',
           'input_hw', 'PriorComposites', 'PROMPT']

DATASETS = ('FMNIST', 'IMNET', 'FOLDER', 'COCO2014', 'VOC2007', 'FMNIST_ML')
IMAGENET_CLASSES = 1000


def default_data_path(data_set: str) -> Optional[str]:
    return FMNIST_ROOT if data_set in ('FMNIST', 'FMNIST_ML') else None


def dataset_task(data_set: str) -> str:
    """``multilabel`` (multi-hot targets, mAP) or ``classification`` (class indices, top-1): what the criterion
    and the evaluator are chosen by."""
    return 'multilabel' if data_set in MULTILABEL_CLASSES else 'classification'


def _data_path(args) -> str:
    path = getattr(args, 'data_path', None) or default_data_path(args.data_set)
    if not path:
        layout = _LAYOUTS.get(args.data_set, 'the folder holding train/ and val/, each with one sub-folder per class '
                                             '(ImageNet: train/n01440764/*.JPEG, ...)')
        raise DatasetError(f'--data-set {args.data_set} needs --data-path: {layout}.')
    return path


_LAYOUTS = {'COCO2014': 'the folder holding train2014/, val2014/ and annotations/instances_{train,val}2014.json',
            'VOC2007': 'VOCdevkit/VOC2007 (Annotations/, JPEGImages/, ImageSets/Main/{trainval,test}.txt)'}


def _split_root(args, is_train: bool) -> str:
    return os.path.join(_data_path(args), 'train' if is_train else 'val')


def _check_choice(args) -> None:
    if args.data_set not in DATASETS:
        raise DatasetError(f"unknown --data-set {args.data_set!r}; choose one of {', '.join(DATASETS)}")


def dataset_num_classes(args) -> int:
    """Number of classes of ``args.data_set`` (FOLDER: class folders of train/, or val/ if train/ is absent)."""
    _check_choice(args)
    if args.data_set == 'FMNIST':
        return 10
    if args.data_set in MULTILABEL_CLASSES:
        return MULTILABEL_CLASSES[args.data_set]
    if args.data_set == 'IMNET':
        return IMAGENET_CLASSES
    root = _split_root(args, True)
    if not os.path.isdir(root):
        root = _split_root(args, False)
    return count_classes(root, what=f'--data-set FOLDER ({_data_path(args)})')[1]


def _limit(dataset: Dataset, n: Optional[int]) -> Dataset:
    if not n or n >= len(dataset):
        return dataset
    return Subset(dataset, range(int(n)))


def build_dataset(is_train: bool, args, corruption: Optional[Callable[[np.ndarray], np.ndarray]] = None
                  ) -> Tuple[Dataset, int]:
    """The train or eval split of ``args.data_set`` with its transform; returns ``(dataset, num_classes)``.

    ``corruption`` (eval only): ``np.ndarray (H, W, C) uint8 -> np.ndarray`` applied after the resize and
    centre crop, before ToTensor/Normalize. ``args.train_limit`` / ``args.val_limit`` keep only the first N
    samples.
    """
    _check_choice(args)
    if is_train and corruption is not None:
        raise ValueError('corruption applies to evaluation only')
    transform = build_train_transform(args) if is_train else build_eval_transform(args, corruption)
    limit = getattr(args, 'train_limit' if is_train else 'val_limit', None)
    split = 'train' if is_train else 'val'
    if args.data_set == 'FMNIST':
        dataset = FashionMNIST(_data_path(args), train=is_train, transform=transform, limit=limit)
        return dataset, 10
    if args.data_set in MULTILABEL_CLASSES:
        dataset = build_multilabel_dataset(is_train, args, _data_path(args), limit)
        return _limit(dataset, limit), MULTILABEL_CLASSES[args.data_set]
    root = _split_root(args, is_train)
    what = f'--data-set {args.data_set} {split} split'
    dataset = SafeImageFolder(root, transform=transform, what=what)
    n_classes = len(dataset.classes)
    if args.data_set == 'IMNET':
        if n_classes != IMAGENET_CLASSES:
            raise DatasetError(f'{what}: {root} has {n_classes} class folders, ImageNet-1k has {IMAGENET_CLASSES}. '
                               'Use --data-set FOLDER for other datasets in the same layout.')
    else:
        other = _split_root(args, not is_train)
        if os.path.isdir(other):
            other_classes = count_classes(other, what=what)[0]
            if other_classes != dataset.classes:
                raise DatasetError(f'{what}: the class folders of {root} and {other} differ '
                                   f'({n_classes} vs {len(other_classes)} classes); both splits need the same '
                                   'class folders so that labels agree.')
    return _limit(dataset, limit), n_classes


def build_folder_dataset(root: str, args, corruption: Optional[Callable[[np.ndarray], np.ndarray]] = None
                         ) -> SafeImageFolder:
    """An ImageFolder over ``root`` (``root/<class>/<image>``) with the eval transform of ``args``
    (and the optional ``corruption``); e.g. ImageNet-C/A/R/Sketch folders."""
    return SafeImageFolder(root, transform=build_eval_transform(args, corruption), what=f'image folder {root}')
