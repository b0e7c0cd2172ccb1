"""What the demos share: models and checkpoints, images, class names, priors, map normalisation.

Nothing here touches model internals: attention maps come from ``model.inspect`` (models/topdown.py).
Every user mistake raises ``DemoError`` with a message that says what to do; the CLIs print it.
"""
import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import timm
import torch
from PIL import Image

import models  # noqa: F401  (registers the zoo with timm)
from datasets.errors import DatasetError
from errors import UserFacingError
from datasets.fmnist import CLASSES, FashionMNIST
from models.checkpoint import CheckpointError, load_checkpoint_file, load_weights

__all__ = ['DemoError', 'FMNIST_CLASSES', 'SKIMAGE_PHOTOS', 'read_fmnist', 'load_model',
           'checkpoint_meta', 'image_spec_parts', 'load_picture', 'prepare_image', 'class_names', 'parse_class',
           'load_prior_vector', 'normalize_map', 'spec_stem', 'fmnist_label', 'default_depth']

FMNIST_CLASSES = CLASSES

#: Photos that ship inside the scikit-image wheel (name -> file in skimage/data); nothing is downloaded.
SKIMAGE_PHOTOS = {
    'astronaut': 'astronaut.png', 'coffee': 'coffee.png', 'chelsea': 'chelsea.png', 'cat': 'chelsea.png',
    'rocket': 'rocket.jpg', 'motorcycle': 'motorcycle_left.png', 'stereo_motorcycle': 'motorcycle_left.png',
    'camera': 'camera.png', 'coins': 'coins.png', 'moon': 'moon.png', 'hubble_deep_field': 'hubble_deep_field.jpg',
    'immunohistochemistry': 'ihc.png', 'retina': 'retina.jpg', 'clock': 'clock_motion.png', 'cell': 'cell.png',
    'brick': 'brick.png', 'grass': 'grass.png', 'gravel': 'gravel.png', 'page': 'page.png', 'text': 'text.png',
    'logo': 'logo.png', 'horse': 'horse.png',
}


class DemoError(UserFacingError):
    """A user mistake (unknown class, missing image, checkpoint of another model...): the message says why."""


# -- Fashion-MNIST --------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def read_fmnist(split: str = 'test') -> Tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(images uint8 (N, 28, 28), labels int64 (N,))``; ``split`` is ``train`` or ``test``.

    Read by ``datasets.fmnist`` from ``$FMNIST_DIR`` or the Debian package's folder."""
    try:
        ds = FashionMNIST(os.environ.get('FMNIST_DIR'), train=split == 'train')
    except DatasetError as e:
        raise DemoError(str(e)) from e
    return ds.data.numpy(), ds.targets.numpy()


# -- models and checkpoints -----------------------------------------------------------------------

def checkpoint_meta(checkpoint: dict) -> Dict[str, object]:
    """What a checkpoint says about its model: ``model``, ``td_mode``, ``img_size``, ``model_kwargs``
    (main.py's ``--model-kwargs``), when recorded.

    Reads ``demo`` (written by demo/controllability.py) and ``args`` (argparse Namespace or dict, as
    main.py and the releases store them).
    """
    meta: Dict[str, object] = {}
    args = checkpoint.get('args')
    if args is not None and not isinstance(args, dict):
        args = vars(args)
    for src in (args or {}), checkpoint.get('demo') or {}:
        for key in ('model', 'td_mode', 'model_kwargs'):
            if src.get(key):
                meta[key] = src[key]
        size = src.get('img_size') or src.get('input_size')
        if size is not None:
            size = [int(s) for s in (size if isinstance(size, (list, tuple)) else [size])]
            meta['img_size'] = tuple(size[-2:]) if len(size) >= 2 else (size[0], size[0])
    return meta


def top_down_model_names() -> List[str]:
    return sorted(n for n in timm.list_models('absvit*'))


def load_model(name: str, checkpoint: Optional[str], td_mode: Optional[str] = None,
               img_size: Optional[Sequence[int]] = None, device: Union[str, torch.device] = 'cpu',
               use_ema: bool = False) -> Tuple[torch.nn.Module, str]:
    """Build ``name`` and load ``checkpoint`` strictly; returns ``(model in eval mode, message)``.

    ``td_mode`` and ``img_size`` default to what the checkpoint records (else ``abs`` and the model's
    own size); the class count follows the checkpoint's head. ``checkpoint=None`` keeps random weights.
    """
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, top_down_model_names(), n=3)
        raise DemoError(f"unknown model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else '')
                        + f" (top-down models: {', '.join(top_down_model_names())})")
    kwargs: Dict[str, object] = {}
    if checkpoint is not None:
        try:
            ckpt = load_checkpoint_file(checkpoint)
        except (FileNotFoundError, CheckpointError) as e:
            raise DemoError(str(e)) from e
        meta = checkpoint_meta(ckpt) if isinstance(ckpt, dict) else {}
        if meta.get('model') not in (None, name):
            raise DemoError(f"{checkpoint} is a checkpoint of '{meta['model']}', not '{name}': "
                            f"pass --model {meta['model']}")
        if td_mode and meta.get('td_mode') not in (None, td_mode):
            raise DemoError(f"{checkpoint} records td_mode '{meta['td_mode']}', not '{td_mode}'")
        td_mode = td_mode or meta.get('td_mode')
        img_size = img_size or meta.get('img_size')
        kwargs.update(meta.get('model_kwargs') or {})  # main.py --model-kwargs
        sd = ckpt.get('model', ckpt.get('state_dict', ckpt)) if isinstance(ckpt, dict) else {}
        head = sd.get('head.weight') if isinstance(sd, dict) else None
        if isinstance(head, torch.Tensor) and head.dim() == 2:
            kwargs['num_classes'] = head.shape[0]
    if td_mode is not None:
        kwargs['td_mode'] = td_mode
    if img_size is not None:
        kwargs['img_size'] = tuple(int(s) for s in img_size)
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise DemoError(f"cannot build '{name}' with {kwargs}: {e}") from e
    if not hasattr(model, 'inspect'):
        raise DemoError(f"'{name}' is a bottom-up model without the top-down inspection API; "
                        f"use one of {', '.join(top_down_model_names())}")
    msg = 'random weights (no checkpoint)'
    if checkpoint is not None:
        try:
            msg = load_weights(model, checkpoint, use_ema=use_ema)
        except CheckpointError as e:
            raise DemoError(f'{e}\n  (for a comparison model pass --td-mode; for another input size --img-size)') from e
    return model.to(device).eval(), msg


# -- images ---------------------------------------------------------------------------------------

def image_spec_parts(spec: str) -> List[str]:
    """An image spec is a file, ``skimage:NAME``, ``fmnist:INDEX`` (test split), ``blank``, or two of
    them joined by ``+`` (placed side by side: a two-object scene)."""
    if Path(spec).is_file() or '+' not in spec:
        return [spec]
    parts = spec.split('+')
    if len(parts) != 2 or not all(parts):
        raise DemoError(f"image spec '{spec}': join exactly two images with '+' (LEFT+RIGHT)")
    return parts


def load_picture(spec: str) -> Optional[Image.Image]:
    """One image (not a composite) as a PIL image; ``None`` for ``blank``."""
    if spec == 'blank':
        return None
    if spec.startswith('skimage:'):
        name = spec.split(':', 1)[1]
        import skimage.data
        fname = SKIMAGE_PHOTOS.get(name)
        path = Path(skimage.data.__file__).parent / fname if fname else None
        if path is None or not path.is_file():
            raise DemoError(f"'{spec}' is not a photo that ships with scikit-image; choose from "
                            f"{', '.join(sorted(SKIMAGE_PHOTOS))}")
        return Image.open(path)
    if spec.startswith('fmnist:'):
        images, _ = read_fmnist('test')
        try:
            idx = int(spec.split(':', 1)[1])
            return Image.fromarray(images[idx])
        except (ValueError, IndexError):
            raise DemoError(f"'{spec}': give a Fashion-MNIST test index in [0, {len(images)})") from None
    path = Path(spec)
    if not path.is_file():
        raise DemoError(f"image not found: {spec} (give an image file, skimage:NAME, fmnist:INDEX, blank, "
                        "or LEFT+RIGHT for two side by side)")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise DemoError(f'cannot read image {spec}: {e}') from e
    return img


def fmnist_label(spec: str) -> Optional[int]:
    """The true class of a ``fmnist:INDEX`` spec (``None`` for anything else)."""
    if not spec.startswith('fmnist:'):
        return None
    return int(read_fmnist('test')[1][int(spec.split(':', 1)[1])])


def _fit(img: Optional[Image.Image], h: int, w: int, mode: str) -> np.ndarray:
    """Centre-crop to the aspect ``w/h`` and resize (bicubic); values in [0, 1], (h, w, channels)."""
    chans = 1 if mode == 'L' else 3
    if img is None:
        return np.zeros((h, w, chans), np.float32)
    if img.mode in ('RGBA', 'LA', 'P'):
        img = img.convert('RGBA')
        bg = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert(mode)
    W, H = img.size
    target = w / h
    if W / H > target:  # too wide: crop the sides
        nw = max(1, round(H * target))
        img = img.crop(((W - nw) // 2, 0, (W - nw) // 2 + nw, H))
    elif W / H < target:
        nh = max(1, round(W / target))
        img = img.crop((0, (H - nh) // 2, W, (H - nh) // 2 + nh))
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return np.clip(arr.reshape(h, w, chans), 0.0, 1.0)


def prepare_image(spec: str, model: torch.nn.Module) -> Tuple[torch.Tensor, np.ndarray]:
    """``(normalised input (C, H, W), display image (H, W, C) in [0, 1])`` for the model's input size,
    channels, mean and std. A ``LEFT+RIGHT`` spec gives each image half the width."""
    cfg = timm.data.resolve_data_config({}, model=model)
    chans, _, _ = cfg['input_size']
    h, w = model.patch_embed.img_size
    parts = image_spec_parts(spec)
    mode = 'L' if chans == 1 else 'RGB'
    if len(parts) == 1:
        disp = _fit(load_picture(parts[0]), h, w, mode)
    else:
        wl = w // 2
        disp = np.concatenate([_fit(load_picture(parts[0]), h, wl, mode),
                               _fit(load_picture(parts[1]), h, w - wl, mode)], axis=1)
    mean = torch.tensor(cfg['mean'], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(cfg['std'], dtype=torch.float32).view(-1, 1, 1)
    x = (torch.from_numpy(disp).permute(2, 0, 1) - mean) / std
    return x, disp


def spec_stem(spec: str) -> str:
    """A file-name stem for an image spec."""
    def one(s):
        if s.startswith(('skimage:', 'fmnist:')):
            kind, name = s.split(':', 1)
            return name if kind == 'skimage' else f'fmnist{name}'
        return Path(s).stem or 'image'
    stem = '_'.join(one(p) for p in image_spec_parts(spec))
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in stem)


# -- classes and priors ---------------------------------------------------------------------------

def class_names(num_classes: int, names_file: Optional[str] = None) -> List[str]:
    """Display names: a file (one per line), Fashion-MNIST (10 classes), ImageNet (1000), else indices."""
    if names_file:
        path = Path(names_file)
        if not path.is_file():
            raise DemoError(f'class-names file not found: {names_file}')
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise DemoError(f'{names_file} has {len(names)} names for a {num_classes}-class model')
        return names
    if num_classes == len(FMNIST_CLASSES):
        return list(FMNIST_CLASSES)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i).split(',')[0] for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def _key(s: str) -> str:
    return ''.join(c for c in s.lower() if c.isalnum())


def parse_class(value: Union[str, int], num_classes: int, names_file: Optional[str] = None) -> int:
    """A class index from an index, a name (Fashion-MNIST or --class-names), an ImageNet wnid
    (``n01440764``) or any ImageNet synonym (``tench``, ``Tinca tinca``)."""
    text = str(value).strip()
    if text.lstrip('-').isdigit():
        idx = int(text)
        if not 0 <= idx < num_classes:
            raise DemoError(f'class index {idx} out of range [0, {num_classes})')
        return idx
    names = class_names(num_classes, names_file)
    candidates = {_key(n): i for i, n in enumerate(names)}
    if num_classes == 1000 and not names_file:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        for i, wnid in enumerate(info.label_names()):
            candidates.setdefault(_key(wnid), i)
            for syn in info.index_to_description(i).split(','):
                candidates.setdefault(_key(syn), i)
    if _key(text) in candidates:
        return candidates[_key(text)]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    shown = names if len(names) <= 20 else names[:5] + ['...']
    raise DemoError(f"unknown class '{text}' for a {num_classes}-class model{hint} "
                    f"(give an index or one of: {', '.join(shown)})")


def load_prior_vector(path: str, dim: int) -> torch.Tensor:
    """An arbitrary prior (e.g. a text embedding projected to the model's width) from ``.npy`` or
    ``.pt``/``.pth`` (a tensor, or a dict with one tensor or a ``prior`` entry); returns ``(dim,)``."""
    p = Path(path)
    if not p.is_file():
        raise DemoError(f'prior vector not found: {path}')
    try:
        if p.suffix == '.npy':
            vec = torch.from_numpy(np.load(p, allow_pickle=False))
        elif p.suffix in ('.pt', '.pth'):
            vec = torch.load(p, map_location='cpu', weights_only=True)
            if isinstance(vec, dict):
                tensors = {k: v for k, v in vec.items() if isinstance(v, torch.Tensor)}
                vec = tensors.get('prior', next(iter(tensors.values())) if len(tensors) == 1 else None)
        else:
            raise DemoError(f'prior vector {path}: use a .npy or .pt file')
    except DemoError:
        raise
    except Exception as e:
        raise DemoError(f'cannot read prior vector {path}: {e}') from e
    if not isinstance(vec, torch.Tensor):
        raise DemoError(f"prior vector {path}: expected one tensor (or a dict with a 'prior' entry)")
    vec = vec.float().squeeze()
    if vec.dim() != 1 or vec.numel() != dim:
        raise DemoError(f'prior vector {path} has shape {tuple(vec.shape)}; the model needs ({dim},): project '
                        f'your embedding to the model width {dim} first')
    if not torch.isfinite(vec).all() or vec.norm() == 0:
        raise DemoError(f'prior vector {path} must be finite and non-zero')
    return vec


# -- maps -----------------------------------------------------------------------------------------

def default_depth(model) -> int:
    """Blocks before attention maps are read: three quarters of the blocks, the release demo's 9 of 12
    (``len(blocks) - 3`` there), so 3 of 4 for the micro model."""
    return max(1, round(0.75 * model.num_td_blocks()))


def normalize_map(att: torch.Tensor) -> torch.Tensor:
    """The release demo's display normalisation of a (..., h, w) map, per map: keep only the top 30 % of
    its range, ``clamp(att - (0.7 max + 0.3 min), 0)``."""
    flat = att.flatten(-2)
    hi = flat.max(-1).values[..., None, None]
    lo = flat.min(-1).values[..., None, None]
    return (att - (0.7 * hi + 0.3 * lo)).clamp(min=0)
