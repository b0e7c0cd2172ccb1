"""Image folders (ImageNet's train/val layout, any ImageFolder dataset, ImageNet-C/A/R/Sketch) with
errors that name the offending path."""
import os
from typing import Callable, List, Optional, Tuple

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from .errors import DatasetError, UnreadableImageError

_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: str) -> Image.Image:
    """Open an image as RGB (channel conversion for the model happens in the transform)."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return img.convert('RGB')
    except _READ_ERRORS as e:
        raise UnreadableImageError(
            f'cannot read image file {path}: {type(e).__name__}: {e}. Remove or replace it; '
            f'`python -m datasets.verify {os.path.dirname(os.path.dirname(path))}` lists every unreadable '
            'image under a folder.') from None


class SafeImageFolder(ImageFolder):
    """torchvision's ImageFolder whose loader reports unreadable files with their path."""

    def __init__(self, root: str, transform: Optional[Callable] = None, what: str = 'image folder'):
        if not os.path.isdir(root):
            raise DatasetError(f'{what}: folder {root} does not exist. Expected one sub-folder per class '
                               f'holding its images ({root}/<class>/<image>.jpg).')
        try:
            super().__init__(root, transform=transform, loader=load_image)
        except FileNotFoundError as e:
            raise DatasetError(f'{what}: {e}. Expected one sub-folder per class holding its images '
                               f'({root}/<class>/<image>.jpg, extensions {", ".join(IMG_EXTENSIONS)}).') from None


def count_classes(root: str, what: str = 'image folder') -> Tuple[List[str], int]:
    """Class folder names of ``root`` (sorted, as ImageFolder indexes them) and their number."""
    if not os.path.isdir(root):
        raise DatasetError(f'{what}: folder {root} does not exist. Expected one sub-folder per class '
                           f'({root}/<class>/<image>.jpg).')
    try:
        classes, _ = find_classes(root)
    except FileNotFoundError as e:
        raise DatasetError(f'{what}: {e}. Expected one sub-folder per class ({root}/<class>/<image>.jpg).') from None
    return classes, len(classes)
