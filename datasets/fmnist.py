"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package.

The package installs ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
(60,000 training and 10,000 test images, 28x28 grey, 10 classes). Any folder holding the same four
files (gzipped or not) works with ``--data-path``. The whole split is kept in memory as one uint8
tensor; items are PIL ``L`` images so the usual torchvision/timm transforms apply.
"""
import gzip
import os
import struct
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_SPLITS = {True: ('train', 60000), False: ('t10k', 10000)}
_HOW_TO_GET = ('Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it puts the files in '
               f'{DEFAULT_ROOT}), or pass --data-path DIR for a folder holding the four IDX files '
               '(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, '
               't10k-labels-idx1-ubyte.gz, gzipped or not).')


def _find(root: str, name: str) -> str:
    for candidate in (name + '.gz', name):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise DatasetError(f'Fashion-MNIST file {name}.gz not found in {root}. {_HOW_TO_GET}')


def _read_idx(path: str, magic: int, item_shape: Tuple[int, ...], limit: Optional[int]) -> np.ndarray:
    """Read an IDX file (big-endian header: magic, counts/dims), optionally only its first ``limit`` items."""
    opener = gzip.open if path.endswith('.gz') else open
    ndim = 1 + len(item_shape)
    try:
        with opener(path, 'rb') as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise DatasetError(f'{path} is truncated (no IDX header). {_HOW_TO_GET}')
            got_magic, *dims = struct.unpack('>' + 'I' * (1 + ndim), header)
            if got_magic != magic or tuple(dims[1:]) != item_shape:
                raise DatasetError(f'{path} is not a Fashion-MNIST IDX file: magic {got_magic:#x} and item shape '
                                   f'{tuple(dims[1:])}, expected {magic:#x} and {item_shape}. {_HOW_TO_GET}')
            count = dims[0] if limit is None else min(dims[0], limit)
            item = int(np.prod(item_shape))
            data = f.read(count * item)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f'cannot read {path}: {e}. {_HOW_TO_GET}') from e
    if len(data) != count * item:
        raise DatasetError(f'{path} is truncated: {len(data) // item} of {count} items. {_HOW_TO_GET}')
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *item_shape)


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST; ``limit`` keeps only the first ``limit`` samples."""
    classes = CLASSES

    def __init__(self, root: Optional[str] = None, train: bool = True, transform: Optional[Callable] = None,
                 limit: Optional[int] = None):
        root = root or DEFAULT_ROOT
        if not os.path.isdir(root):
            raise DatasetError(f'Fashion-MNIST folder {root} does not exist. {_HOW_TO_GET}')
        split, expected = _SPLITS[train]
        images = _read_idx(_find(root, f'{split}-images-idx3-ubyte'), 0x803, (28, 28), limit)
        labels = _read_idx(_find(root, f'{split}-labels-idx1-ubyte'), 0x801, (), limit)
        if len(images) != len(labels):
            raise DatasetError(f'Fashion-MNIST {split} split in {root} has {len(images)} images but '
                               f'{len(labels)} labels. {_HOW_TO_GET}')
        if limit is None and len(images) != expected:
            raise DatasetError(f'Fashion-MNIST {split} split in {root} has {len(images)} images, expected '
                               f'{expected}. {_HOW_TO_GET}')
        if labels.size and labels.max() >= len(CLASSES):
            raise DatasetError(f'Fashion-MNIST labels in {root} go up to {labels.max()}, expected < 10. {_HOW_TO_GET}')
        self.root, self.train, self.transform = root, train, transform
        self.data = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index].numpy())  # uint8 (28, 28): mode L
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f'FashionMNIST(root={self.root!r}, train={self.train}, n={len(self)})'
