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
``build_folder_dataset(root, args, corruption=None)``, ``dataset_num_classes(args)``; what each choice is
(task, class count, builder, default path): ``DATASET_SPECS`` (one row per ``--data-set``); prior-conditioned
training's multi-object composites: ``PriorComposites`` (``datasets/composites.py``); the training recipe
of each dataset: ``recipes.recipe(data_set)`` (``datasets/recipes.py``).
"""
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset, Subset

from .composites import PROMPT, PriorComposites
from .errors import DatasetError, UnreadableImageError
from .fmnist import CLASSES as FMNIST_CLASSES, DEFAULT_ROOT as FMNIST_ROOT, FashionMNIST
from .folder import SafeImageFolder, count_classes, load_image
from .multilabel import COCO_NUM_CLASSES, VOC_CLASSES, CocoMultiLabel, VocMultiLabel, build_canvases, \
    build_multilabel_transform
from .recipes import RECIPES, recipe
from .transforms import ApplyCorruption, ConvertMode, build_eval_transform, build_train_transform, fit_channels, \
    input_hw

__all__ = ['DATASETS', 'DATASET_SPECS', 'DatasetSpec', 'DatasetError', 'UnreadableImageError', 'FashionMNIST',
           'SafeImageFolder', 'build_dataset', 'build_eval_transform', 'build_train_transform', 'build_folder_dataset',
           'dataset_num_classes', 'default_data_path', 'dataset_task', 'RECIPES', 'recipe', 'ApplyCorruption',
           'ConvertMode', 'fit_channels', 'input_hw', 'PriorComposites', 'PROMPT']

IMAGENET_CLASSES = 1000
#: a ``DatasetSpec.build``: ``(data path, is_train, args, transform, limit) -> Dataset`` (the limit may be
#: applied here, when the reader can stop early, or left to ``build_dataset``)
Builder = Callable[[str, bool, object, Callable, Optional[int]], Dataset]
_FOLDER_LAYOUT = ('the folder holding train/ and val/, each with one sub-folder per class '
                  '(ImageNet: train/n01440764/*.JPEG, ...)')


class DatasetSpec(NamedTuple):
    """One ``--data-set`` choice: everything the pipeline decides by the name, so that a new dataset is one row
    of ``DATASET_SPECS`` (and one recipe in ``recipes.py``)."""
    task: str                    #: ``classification`` (class indices, top-1) or ``multilabel`` (multi-hot, mAP)
    num_classes: Optional[int]   #: ``None``: the number of class folders under the data path (FOLDER)
    build: Builder               #: the split with its transform applied
    default_path: Optional[str] = None  #: where the data is when ``--data-path`` is not given
    layout: str = _FOLDER_LAYOUT        #: what ``--data-path`` must hold (said when it is missing)


def _fmnist(root: str, is_train: bool, args, transform: Callable, limit: Optional[int]) -> Dataset:
    """Fashion-MNIST reads only the first ``limit`` items of its files."""
    return FashionMNIST(root, train=is_train, transform=transform, limit=limit)


def _annotated(cls) -> Builder:
    """A builder for a multi-label class ``cls(root, train, transform)``: the IDA release reads every image of
    the split, so the limit is applied afterwards."""
    return lambda root, is_train, args, transform, limit: cls(root, is_train, transform)


def _image_folder(root: str, is_train: bool, args, transform: Callable, limit: Optional[int]) -> Dataset:
    """``root/{train,val}/<class>/<image>``; a fixed class count (IMNET) must match the folders, else (FOLDER)
    both splits must have the same class folders so that the labels of the two agree."""
    names = ('train', 'val') if is_train else ('val', 'train')
    split, other = os.path.join(root, names[0]), os.path.join(root, names[1])
    what = f'--data-set {args.data_set} {names[0]} split'
    dataset = SafeImageFolder(split, transform=transform, what=what)
    n_classes, expected = len(dataset.classes), DATASET_SPECS[args.data_set].num_classes
    if expected is not None:
        if n_classes != expected:
            raise DatasetError(f'{what}: {split} has {n_classes} class folders, ImageNet-1k has {expected}. '
                               'Use --data-set FOLDER for other datasets in the same layout.')
    elif os.path.isdir(other):
        other_classes = count_classes(other, what=what)[0]
        if other_classes != dataset.classes:
            raise DatasetError(f'{what}: the class folders of {split} and {other} differ '
                               f'({n_classes} vs {len(other_classes)} classes); both splits need the same '
                               'class folders so that labels agree.')
    return dataset


#: The ``--data-set`` choices, in the order ``--help`` lists them.
DATASET_SPECS: Dict[str, DatasetSpec] = {
    'FMNIST': DatasetSpec('classification', len(FMNIST_CLASSES), _fmnist, FMNIST_ROOT),
    'IMNET': DatasetSpec('classification', IMAGENET_CLASSES, _image_folder),
    'FOLDER': DatasetSpec('classification', None, _image_folder),
    'COCO2014': DatasetSpec('multilabel', COCO_NUM_CLASSES, _annotated(CocoMultiLabel), layout=(
        'the folder holding train2014/, val2014/ and annotations/instances_{train,val}2014.json')),
    'VOC2007': DatasetSpec('multilabel', len(VOC_CLASSES), _annotated(VocMultiLabel), layout=(
        'VOCdevkit/VOC2007 (Annotations/, JPEGImages/, ImageSets/Main/{trainval,test}.txt)')),
    'FMNIST_ML': DatasetSpec('multilabel', len(FMNIST_CLASSES), build_canvases, FMNIST_ROOT),
}
DATASETS = tuple(DATASET_SPECS)


def _classification_transform(args, is_train: bool, corruption: Optional[Callable]) -> Callable:
    return build_train_transform(args) if is_train else build_eval_transform(args, corruption)


def _multilabel_transform(args, is_train: bool, corruption: Optional[Callable]) -> Callable:
    """The IDA release's transforms, which have no place for a corruption (it is ignored, as it always was)."""
    return build_multilabel_transform(args, is_train)


#: task -> ``(args, is_train, corruption) -> transform``
_TRANSFORMS: Dict[str, Callable[[object, bool, Optional[Callable]], Callable]] = {
    'classification': _classification_transform, 'multilabel': _multilabel_transform}


def default_data_path(data_set: str) -> Optional[str]:
    """Where ``data_set`` is without ``--data-path`` (``None`` for unknown names: options.py asks before
    the choice is checked)."""
    spec = DATASET_SPECS.get(data_set)
    return spec.default_path if spec else None


def dataset_task(data_set: str) -> str:
    """``multilabel`` (multi-hot targets, mAP) or ``classification`` (class indices, top-1): what the criterion
    and the evaluator are chosen by."""
    spec = DATASET_SPECS.get(data_set)
    return spec.task if spec else 'classification'


def _spec(args) -> DatasetSpec:
    if args.data_set not in DATASET_SPECS:
        raise DatasetError(f"unknown --data-set {args.data_set!r}; choose one of {', '.join(DATASETS)}")
    return DATASET_SPECS[args.data_set]


def _data_path(args) -> str:
    path = getattr(args, 'data_path', None) or default_data_path(args.data_set)
    if not path:
        raise DatasetError(f'--data-set {args.data_set} needs --data-path: {_spec(args).layout}.')
    return path


def dataset_num_classes(args) -> int:
    """Number of classes of ``args.data_set`` (FOLDER: class folders of train/, or val/ if train/ is absent)."""
    spec = _spec(args)
    if spec.num_classes is not None:
        return spec.num_classes
    root = os.path.join(_data_path(args), 'train')
    if not os.path.isdir(root):
        root = os.path.join(_data_path(args), 'val')
    return count_classes(root, what=f'--data-set {args.data_set} ({_data_path(args)})')[1]


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
    spec = _spec(args)
    if is_train and corruption is not None:
        raise ValueError('corruption applies to evaluation only')
    transform = _TRANSFORMS[spec.task](args, is_train, corruption)
    limit = getattr(args, 'train_limit' if is_train else 'val_limit', None)
    dataset = spec.build(_data_path(args), is_train, args, transform, limit)
    n_classes = len(dataset.classes) if spec.num_classes is None else spec.num_classes
    return _limit(dataset, limit), n_classes


def build_folder_dataset(root: str, args, corruption: Optional[Callable[[np.ndarray], np.ndarray]] = None
                         ) -> SafeImageFolder:
    """An ImageFolder over ``root`` (``root/<class>/<image>``) with the eval transform of ``args``
    (and the optional ``corruption``); e.g. ImageNet-C/A/R/Sketch folders."""
    return SafeImageFolder(root, transform=build_eval_transform(args, corruption), what=f'image folder {root}')
