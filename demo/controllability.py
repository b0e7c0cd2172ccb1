"""Controllable top-down attention, measured on Fashion-MNIST two-object composites.

A composite is two test images side by side (28x56, different classes, drawn with a fixed seed). For
each composite the prior is set to the class prototype (row of the classifier) of the left item, then of
the right item, and we report, against the model's own no-prior output (learned prompt; plain feedback
for Feedback):

  (a) prior accuracy: how often the predicted class is the prior's class;
  (b) attention share: the share of top-down attention mass on the prior's half (token-norm map of
      ``model.inspect`` after ``--depth`` blocks, default 3 of 4, with the release's display
      normalisation; PerceiverIO has no second pass, so its bottom-up map, which no prior changes),

for alpha in {1, 3, 10, 40}, for AbSViT and the comparison models PerceiverIO, Feedback and MaskAtt.

Geometry and data: the models are ``absvit_micro_patch4_28_gap`` (global average pooling, the fair
choice as in the paper) built at ``img_size=(28, 56)`` and TRAINED at that size, so no position
embedding is resampled or stretched. A training sample is, with probability ``--pair-prob`` (0.5), two
training images side by side with the soft target 0.5/0.5 (the half-and-half case of the CutMix in the
paper's ImageNet recipe, which is how ImageNet training sees several objects in one image), otherwise
one image on a random half of a black canvas. Test composites come from the test split only.

Training (``--train``) runs the project's pipeline pieces (``engine.train_one_epoch``; the AbS loss of
``losses.py``: soft-target CE averaged over the passes + 0.1 x variational loss; the Fashion-MNIST
recipe of ``datasets/recipes.py``, parsed as main.py parses it, for optimiser and schedule) with the same
settings for every model; main.py itself trains square inputs only. Checkpoints record model, td_mode and
input size, so ``demo/visualize.py`` loads them as they are.

    python demo/controllability.py --train --lr 2e-3 --out-dir output/controllability   # train 4, measure
    python demo/controllability.py --checkpoints abs=output/controllability/abs.pth # measure only

``--runs NAME=CHECKPOINT ...`` measures checkpoints of ``main.py`` (prior-conditioned training,
``--composite-prob``; any td_mode or a plain ViT) on held-out composites of 2 and of 3 test items in the
training geometry (a 2x2 grid of cells, ``datasets/composites.py``), for each alpha and against the
no-prior baseline, as mean and standard error over composites: (a) prior accuracy; (b) the share of
top-down attention on the prior's item among all items, by the item's pixels (1/k for a map that ignores
the prior); (c) with a prior naming a class absent from the image, how often that class is predicted
(against how often the model predicts it without a prior); (d) accuracy on single test images with the
learned prompt. It writes runs.json, runs_table.md (with the prior masks' share on their item, the
attention share after every block, a location-only control: the item's pixels as the mask, and the
item's tokens alone through the head, and the echo of the absent class nearest an item), runs.png (the alpha sweeps), examples.png and alpha_sweep.png.

    python demo/controllability.py --runs AbSViT=output/prior/abs/checkpoint.pth ViT=... --out-dir output/prior
"""
import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import datasets
import engine
import losses
import models  # noqa: F401
import options  # main.py's parser and the dataset recipes, without the training script
from datasets import composites
from datasets.fmnist import CLASSES, FashionMNIST
from datasets.errors import DatasetError
from demo.common import DemoError, default_depth, load_model, normalize_map
from errors import run_cli

MODEL = 'absvit_micro_patch4_28_gap'
CANVAS = (28, 56)
#: display name -> td_mode, in table order
MODES = {'AbSViT': 'abs', 'PerceiverIO': 'perceiver', 'Feedback': 'feedback', 'MaskAtt': 'maskatt'}
ALPHAS = (1.0, 3.0, 10.0, 40.0)
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# -- data -----------------------------------------------------------------------------------------

def load_split(train: bool, data_path: Optional[str] = None, limit: Optional[int] = None):
    """Fashion-MNIST as ``(uint8 images (N, 28, 28), int64 labels (N,))`` tensors."""
    try:
        ds = FashionMNIST(data_path, train=train, limit=limit)
    except DatasetError as e:
        raise DemoError(str(e)) from e
    return ds.data, ds.targets


def normalise(canvas_uint8: torch.Tensor) -> torch.Tensor:
    return (canvas_uint8.float() / 255.0 - FMNIST_MEAN) / FMNIST_STD


def place(images: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) on a black (N, 1, 28, 56) canvas, left half where ``right`` is False."""
    n = images.shape[0]
    canvas = torch.zeros(n, 1, *CANVAS, dtype=torch.uint8)
    w = images.shape[-1]
    canvas[~right, 0, :, :w] = images[~right]
    canvas[right, 0, :, w:] = images[right]
    return canvas


def make_composites(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int):
    """``n`` composites of two test images of different classes, side by side (seeded).

    Composite ``i`` is drawn by its own generator ``(seed, i)``, so the first ``k`` composites are the same
    for every ``n``. Returns ``(x normalised (n, 1, 28, 56), left labels, right labels, (left, right)
    indices)``.
    """
    lab = labels.numpy()
    pairs = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        a, b = rng.integers(0, len(lab), size=2)
        while lab[a] == lab[b]:  # redraw the right item until the classes differ
            b = rng.integers(0, len(lab))
        pairs.append((a, b))
    left = torch.tensor([int(a) for a, _ in pairs], dtype=torch.long)
    right = torch.tensor([int(b) for _, b in pairs], dtype=torch.long)
    x = torch.cat([images[left], images[right]], dim=-1)[:, None]
    return normalise(x), labels[left], labels[right], (left, right)


# -- training -------------------------------------------------------------------------------------

class CanvasDataset(torch.utils.data.Dataset):
    """Training samples on the 28x56 canvas, drawn once with ``seed``: with probability ``pair_prob`` two
    training images side by side with the soft target 0.5/0.5 (the half-and-half case of the CutMix of
    the paper's ImageNet recipe), otherwise one image on a random half of a black canvas (one-hot target).
    Items: ``(normalised canvas (1, 28, 56), target (10,))``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int, pair_prob: float = 0.5,
                 num_classes: int = 10):
        g = torch.Generator().manual_seed(seed)
        n = len(labels)
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.right = torch.rand(n, generator=g) < 0.5
        self.pair = torch.rand(n, generator=g) < pair_prob
        self.partner = torch.randint(0, n, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        target = torch.zeros(self.num_classes)
        if self.pair[i]:
            j = int(self.partner[i])
            canvas = torch.cat([self.images[i], self.images[j]], dim=-1)[None]
            target[self.labels[i]] += 0.5
            target[self.labels[j]] += 0.5
        else:
            canvas = place(self.images[i:i + 1], self.right[i:i + 1])[0]
            target[self.labels[i]] = 1.0
        return normalise(canvas), target


def recipe_args(batch_size: int, epochs: int, seed: int):
    """The Fashion-MNIST recipe (``--data-set FMNIST``, ``datasets/recipes.py``) as main.py parses it
    (``options.parse_args``), with this batch size, epoch count and seed."""
    return options.parse_args(['--data-set', 'FMNIST', '--batch-size', str(batch_size), '--epochs', str(epochs),
                               '--seed', str(seed)])


def train_model(td_mode: str, images: torch.Tensor, labels: torch.Tensor, epochs: int = 1, batch_size: int = 64,
                seed: int = 0, lr: Optional[float] = None, pair_prob: float = 0.5, log=print):
    """Train ``MODEL`` (td_mode) at 28x56 on ``CanvasDataset`` with the project's pipeline pieces.

    ``engine.train_one_epoch``, ``losses.build_criterion`` (AbS loss: soft-target CE averaged over both
    passes + 0.1 x variational loss) and, from the Fashion-MNIST recipe, the optimiser (AdamW, lr 1.6e-2 x
    batch / 512 unless ``lr`` is given, weight decay 0.05) and the cosine schedule stepped every update
    with the recipe's warm-up and minimum lr; the warm-up lasts the first sixth of training here, not the
    recipe's quarter epoch. The recipe has no augmentation; the random half of the canvas stands for it.
    Returns ``(model in eval mode, info dict)``.
    """
    args = recipe_args(batch_size, epochs, seed)
    torch.manual_seed(seed)
    model = timm.create_model(MODEL, img_size=CANVAS, td_mode=td_mode)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(CanvasDataset(images, labels, seed, pair_prob), batch_size=batch_size,
                                         shuffle=True, drop_last=True, generator=gen)
    if len(loader) == 0:
        raise DemoError(f'{len(labels)} training images make no batch of {batch_size}')
    if lr is None:
        lr = options.scaled_lr(args, batch_size)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=epochs, min_lr=args.min_lr,
                                       warmup_lr=args.warmup_lr, warmup_epochs=epochs / 6, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    criterion = losses.build_criterion(args, model, mixup_active=True)  # soft targets: SoftTargetCrossEntropy
    t0, stats = time.time(), {}
    for epoch in range(epochs):
        stats = engine.train_one_epoch(engine.ClassificationStep(model, criterion, torch.device('cpu')), loader,
                                       optimizer, torch.device('cpu'), epoch, num_epochs=epochs, progress=False,
                                       on_update=lambda n: scheduler.step_update(num_updates=n))
        if log:
            log(f'  {td_mode}: epoch {epoch + 1}/{epochs}: loss {stats["loss"]:.3f} ({time.time() - t0:.0f} s)')
    info = {'td_mode': td_mode, 'criterion': repr(criterion), 'epochs': epochs, 'steps': epochs * len(loader),
            'batch_size': batch_size, 'lr': lr, 'pair_prob': pair_prob, 'weight_decay': args.weight_decay,
            'sched': args.sched, 'seed': seed,
            'train_images': len(labels), 'train_images_seen': epochs * len(loader) * batch_size,
            'train_seconds': round(time.time() - t0, 1), 'final_epoch_loss': float(stats['loss']),
            'threads': torch.get_num_threads()}
    return model.eval(), info


def save_model(model, info: Dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'model': model.state_dict(),
                'demo': {'model': MODEL, 'td_mode': model.td_mode, 'img_size': list(CANVAS), 'train': info}}, path)


# -- measuring ------------------------------------------------------------------------------------

def half_share(att: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Share of a (B, h, w) map's mass on the right half where ``right`` else the left half."""
    w = att.shape[-1]
    cols = att.sum(-2)
    left_mass, right_mass = cols[:, :w // 2].sum(-1), cols[:, w - w // 2:].sum(-1)
    total = left_mass + right_mass
    share_right = torch.where(total > 0, right_mass / total.clamp_min(1e-12), torch.full_like(total, 0.5))
    return torch.where(right, share_right, 1 - share_right)


def _attention(out: Dict) -> torch.Tensor:
    """The map whose mass is measured: top-down (pass 2); PerceiverIO has no second pass, so its
    bottom-up map (which no prior can change)."""
    att = out['top_down'] if out['top_down'] is not None else out['bottom_up']
    return normalize_map(att)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y_left: torch.Tensor, y_right: torch.Tensor, alphas: Sequence[float] = ALPHAS,
             depth: Optional[int] = None, batch_size: int = 250) -> Dict:
    """Prior accuracy and attention share for each alpha, and the no-prior baseline (both in [0, 1])."""
    depth = default_depth(model) if depth is None else depth
    n = len(x)
    sides = {'left': (y_left, torch.zeros(n, dtype=torch.bool)), 'right': (y_right, torch.ones(n, dtype=torch.bool))}
    base_hit, base_share = [], []
    hit = {a: [] for a in alphas}
    share = {a: [] for a in alphas}
    mask_share, mask_class, mask_learned = [], [], []  # diagnostics of the priors' token masks
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size]
        out0 = model.inspect(xb, depth=depth)  # the model's own output: learned prompt (or plain feedback)
        pred0, att0 = out0['logits'].argmax(-1), _attention(out0)
        if out0['prior_mask'] is not None:
            mask_learned.append(out0['prior_mask'].flatten(1).mean(1))
        for y, right in sides.values():
            yb, rb = y[s:s + batch_size], right[s:s + batch_size]
            base_hit.append(pred0 == yb)
            base_share.append(half_share(att0, rb))
            for i, a in enumerate(alphas):
                out = model.inspect(xb, classes=yb, alpha=a, depth=depth)
                hit[a].append(out['logits'].argmax(-1) == yb)
                share[a].append(half_share(_attention(out), rb))
                if i == 0 and out['prior_mask'] is not None:  # the mask does not depend on alpha
                    mask_share.append(half_share(out['prior_mask'], rb))
                    mask_class.append(out['prior_mask'].flatten(1).mean(1))
    mean = lambda ts: float(torch.cat(ts).float().mean()) if ts else None
    return {'n_composites': n, 'depth': depth,
            'baseline': {'prior_acc': mean(base_hit), 'attn_share': mean(base_share)},
            'alphas': {f'{a:g}': {'prior_acc': mean(hit[a]), 'attn_share': mean(share[a])} for a in alphas},
            'masks': {'class_mask_share': mean(mask_share), 'class_mask_mean': mean(mask_class),
                      'learned_mask_mean': mean(mask_learned)}}


@torch.no_grad()
def single_accuracy(model, images: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int = 500) -> float:
    """Accuracy on single test images at a random (seeded) half of the canvas: the training task."""
    right = torch.from_numpy(np.random.default_rng(seed).random(len(labels)) < 0.5)
    correct = 0
    for s in range(0, len(labels), batch_size):
        x = normalise(place(images[s:s + batch_size], right[s:s + batch_size]))
        correct += int((model(x).argmax(-1) == labels[s:s + batch_size]).sum())
    return correct / len(labels)


# -- reporting ------------------------------------------------------------------------------------

def markdown_table(results: Dict[str, Dict]) -> str:
    """One row per model and alpha: prior accuracy and attention share, each with its baseline."""
    lines = ['| model | single acc | α | prior acc (a) | no-prior (a) | attn share (b) | no-prior (b) |',
             '|---|---|---|---|---|---|---|']
    for name, r in results.items():
        single = f"{r['single_acc']:.3f}" if r.get('single_acc') is not None else '–'
        for a, m in r['alphas'].items():
            lines.append(f"| {name} | {single} | {a} | {m['prior_acc']:.3f} | {r['baseline']['prior_acc']:.3f} | "
                         f"{m['attn_share']:.3f} | {r['baseline']['attn_share']:.3f} |")
    return '\n'.join(lines)


def mask_table(results: Dict[str, Dict]) -> str:
    """The priors' token masks: how much of the class prior's mask lies on its item's half, and the mean
    mask of the class prior and of the learned prompt (how strongly each one drives the feedback)."""
    f = lambda v: '–' if v is None else f'{v:.3f}'
    lines = ['| model | class-prior mask on its half | mean mask, class prior | mean mask, learned prompt |',
             '|---|---|---|---|']
    for name, r in results.items():
        m = r.get('masks', {})
        lines.append(f"| {name} | {f(m.get('class_mask_share'))} | {f(m.get('class_mask_mean'))} | "
                     f"{f(m.get('learned_mask_mean'))} |")
    return '\n'.join(lines)


def save_figure(fig: Figure, path: Path, rect: Tuple[float, float, float, float]) -> Path:
    """Lay ``fig`` out inside ``rect`` (room for its title or footnote) and write it, making the folder."""
    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_results(results: Dict[str, Dict], path: Path) -> Path:
    """(a) prior accuracy and (b) attention share against alpha; dashed: the no-prior baselines."""
    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = ['C0', 'C1', 'C2', 'C3', 'C4', 'C5']
    for (name, r), c in zip(results.items(), colors):
        alphas = [float(a) for a in r['alphas']]
        for ax, key in zip(axes, ('prior_acc', 'attn_share')):
            ax.plot(alphas, [m[key] for m in r['alphas'].values()], 'o-', color=c, label=name)
            ax.axhline(r['baseline'][key], color=c, ls='--', lw=1)
    for ax, title in zip(axes, ('(a) predicted class = prior class', "(b) top-down attention on the prior's half")):
        ax.set_xscale('log')
        ax.set_xlabel('α')
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc='lower right')
    fig.text(0.5, 0.005, 'dashed: no-prior baseline (the model\'s own output)', ha='center', fontsize=8)
    return save_figure(fig, path, (0, 0.04, 1, 1))


@torch.no_grad()
def plot_examples(model, x: torch.Tensor, y_left: torch.Tensor, y_right: torch.Tensor, path: Path,
                  alpha: float = 10.0, depth: Optional[int] = None, title: str = 'AbSViT') -> Path:
    """One row per composite: image, bottom-up attention, then prior mask and top-down attention with the
    left and with the right item's class prior (titles: the prediction)."""
    k = len(x)
    depth = default_depth(model) if depth is None else depth
    fig = Figure(figsize=(11.5, 1.45 * k + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(k, 6, squeeze=False)
    as_np = lambda out: {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    base = as_np(model.inspect(x, depth=depth))
    outs = [as_np(model.inspect(x, classes=y, alpha=alpha, depth=depth)) for y in (y_left, y_right)]
    x, norm = x.numpy(), lambda m: normalize_map(torch.from_numpy(m)).numpy()
    heads = ['composite', 'bottom-up attention', 'prior mask: left', 'top-down: left', 'prior mask: right',
             'top-down: right']
    for i in range(k):
        row = axes[i]
        row[0].imshow(x[i, 0], cmap='gray')
        row[0].set_ylabel(f'{CLASSES[y_left[i]]} | {CLASSES[y_right[i]]}', fontsize=7)
        row[1].imshow(norm(base['bottom_up'][i]), interpolation='nearest')
        pred0 = int(base['logits_bottom_up'][i].argmax())
        row[1].set_xlabel(f'pred: {CLASSES[pred0]}', fontsize=7)
        for j, (out, y) in enumerate(zip(outs, (y_left, y_right))):
            if out['prior_mask'] is not None:
                row[2 + 2 * j].imshow(out['prior_mask'][i], interpolation='nearest')
            att = out['top_down'] if out['top_down'] is not None else out['bottom_up']
            row[3 + 2 * j].imshow(norm(att[i]), interpolation='nearest')
            pred = int(out['logits'][i].argmax())
            row[3 + 2 * j].set_xlabel(f'pred: {CLASSES[pred]}' + (' ✓' if pred == int(y[i]) else ' ✗'), fontsize=7)
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
    fig.suptitle(f'{title}: class-prototype prior of the left / right item (α={alpha:g}, '
                 f'maps after block {depth} of {model.num_td_blocks()})', fontsize=9)
    return save_figure(fig, path, (0, 0, 1, 0.97))


# -- prior-trained runs: main.py checkpoints on grid composites of 2 and 3 items --------------------

#: Table order and display names of the runs of the same-budget comparison (``--runs NAME=PATH``).
RUN_ORDER = ('AbSViT', 'AbSViT (no prior training)', 'AbSViT-QKV', 'MaskAtt', 'PerceiverIO', 'Feedback', 'ViT')


def load_run(path: str):
    """A ``main.py`` checkpoint as ``(model in eval mode, settings)``: the model, mode, input size and the
    composite grid come from the run's recorded ``args``; a ``prior_table`` in the weights is attached
    (``--prior-source table``) before the strict load."""
    try:
        ckpt = models.load_checkpoint_file(path)
        sd, _ = models.select_state_dict(ckpt)
    except (FileNotFoundError, models.CheckpointError) as e:
        raise DemoError(str(e)) from e
    args = ckpt.get('args')
    args = vars(args) if args is not None and not isinstance(args, dict) else args
    if not args or not args.get('model'):
        raise DemoError(f'{path} records no main.py settings (args): --runs measures checkpoints of main.py')
    kwargs = {'num_classes': int(sd['head.weight'].shape[0])} if 'head.weight' in sd else {}
    if args.get('input_size'):
        kwargs['img_size'] = int(args['input_size'])
    if args.get('td_mode'):
        kwargs['td_mode'] = args['td_mode']
    kwargs.update(args.get('model_kwargs') or {})  # main.py --model-kwargs (patch size, depth, ...)
    model = timm.create_model(args['model'], **kwargs)
    if 'prior_table' in sd:
        losses.attach_prior_table(model, sd['prior_table'].shape[0])
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise DemoError(f'{path} does not fit {args["model"]} {kwargs}: {e}') from e
    settings = {k: args.get(k) for k in ('model', 'td_mode', 'input_size', 'composite_prob', 'composite_items',
                                         'composite_grid', 'present_prior_prob', 'absent_prior_prob', 'absent_target',
                                         'prior_source', 'mean', 'std', 'in_chans', 'crop_pct', 'interpolation',
                                         'epochs', 'batch_size', 'seed')}
    settings['prior_source'] = 'table' if 'prior_table' in sd else 'classifier'
    return model.eval(), settings


def run_transform(settings: Dict):
    """main.py's evaluation transform of a run (resize, crop, normalise), as a uint8 (28, 28) -> tensor map."""
    tf = datasets.build_eval_transform(SimpleNamespace(**settings))
    return lambda img: tf(Image.fromarray(img.numpy()))


def grid_composites(images: torch.Tensor, labels: torch.Tensor, k: int, n: int, grid: int, transform,
                    fill: Sequence[float], seed: int) -> Dict[str, torch.Tensor]:
    """``n`` held-out composites of ``k`` test items of different classes in random cells of a ``grid`` x
    ``grid`` canvas (each item through the run's ``transform``, then ``datasets.composites.compose``: the
    training geometry), and one class absent from each. Composite ``i`` comes from the generator
    ``(seed, k, i)``. Returns ``x`` (n, C, H, W), ``classes`` (n, k), ``boxes`` (n, k, 4), ``absent`` (n,)."""
    by_class = [torch.nonzero(labels == c).flatten() for c in range(len(CLASSES))]
    xs, classes, boxes, absent = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, k, i])
        cls = [int(c) for c in rng.permutation(len(CLASSES))[:k + 1]]
        idx = [int(by_class[c][rng.integers(len(by_class[c]))]) for c in cls[:k]]
        cells = [int(c) for c in rng.permutation(grid * grid)[:k]]
        items = [transform(images[j]) for j in idx]
        xs.append(composites.compose(items, cells, grid, fill))
        classes.append(cls[:k])
        absent.append(cls[k])
        boxes.append(composites.cell_boxes(tuple(items[0].shape[-2:]), grid, cells))
    return {'x': torch.stack(xs), 'classes': torch.tensor(classes), 'boxes': torch.stack(boxes),
            'absent': torch.tensor(absent)}


def token_fractions(boxes: torch.Tensor, hw: Tuple[int, int], map_hw: Tuple[int, int]) -> torch.Tensor:
    """(B, k, h, w): the fraction of each token's pixels inside each item's box (``map_hw`` = (h, w))."""
    b, k = boxes.shape[:2]
    masks = torch.stack([composites.box_masks(hw, bx) for bx in boxes]).float()  # (B, k, H, W)
    return F.adaptive_avg_pool2d(masks.flatten(0, 1)[:, None], tuple(map_hw)).reshape(b, k, *map_hw)


def item_shares(att: torch.Tensor, boxes: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Share of each item's box in a (B, h, w) map's mass over all the items' boxes: (B, k). Each token
    counts with the fraction of its pixels inside the box; a map without mass on any item gives 1/k."""
    k = boxes.shape[1]
    frac = token_fractions(boxes, hw, att.shape[-2:])
    mass = (att[:, None] * frac).flatten(2).sum(-1)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(1e-12), torch.full_like(mass, 1.0 / k))


class Steered:
    """One model behind one call, ``(logits, attention map)`` for a prior of class ids (``None``: the learned
    prompt, or nothing for Feedback and plain models); the map is the top-down token norms after ``depth``
    blocks (PerceiverIO, Feedback-less plain models: the only pass's), with the release's display
    normalisation. Class priors are the model's own: classifier rows or its learned ``prior_table``."""

    def __init__(self, model, depth: Optional[int] = None, source: str = 'classifier'):
        self.model = model
        self.top_down = hasattr(model, 'inspect')
        n_blocks = model.num_td_blocks() if self.top_down else len(model.blocks)
        self.depth = max(1, round(0.75 * n_blocks)) if depth is None else depth
        self.priors = losses.BatchPriors(model, source) if losses.takes_prior(model) else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, classes: Optional[torch.Tensor] = None, alpha: Optional[float] = None,
                 depth: Optional[int] = None):
        depth = self.depth if depth is None else depth
        if not self.top_down:
            feats = self.model.forward_intermediates(x, indices=[depth - 1], intermediates_only=True)[0]
            return self.model(x), normalize_map(feats.norm(dim=1)), None
        prior = self.priors(classes) if (self.priors is not None and classes is not None) else None
        out = self.model.inspect(x, prior=prior, alpha=alpha if prior is not None else None, depth=depth)
        att = out['top_down'] if out['top_down'] is not None else out['bottom_up']
        return out['logits'], normalize_map(att), out['prior_mask']


    @torch.no_grad()
    def located(self, x: torch.Tensor, region: torch.Tensor, alpha: float = 1.0, depth: Optional[int] = None):
        """The control "steering by location only": ``(logits, attention map)`` with the item's pixels
        ``region`` (B, h, w; token fractions, prefix tokens 0) as the token mask in place of the prior's
        ``clamp(cos)``, through the paper's reweighting ``alpha * mask * z`` and the model's own feedback
        (MaskAtt: the mask as every block's signal; PerceiverIO: the reweighted tokens to the head). A model
        whose steering works by *where* the prior points follows this mask; one that reads the class from
        the mask's values does not."""
        m, depth = self.model, self.depth if depth is None else depth
        hw = tuple(x.shape[-2:])
        tokens, _, outs1 = m.forward_pass(x, collect=True)
        mask = token_layout_mask(m, tokens, region, hw)
        if not m.td_spec.second_pass:
            return m.forward_head(tokens * mask * alpha), normalize_map(m.tokens_to_map(outs1[depth - 1], hw).norm(dim=1))
        signals = [mask] * m.num_td_blocks() if m.decoders is None else m.feedback(tokens * mask * alpha)
        tokens2, _, outs2 = m.forward_pass(x, signals, collect=True)
        return m.forward_head(tokens2), normalize_map(m.tokens_to_map(outs2[depth - 1], hw).norm(dim=1))


    @torch.no_grad()
    def item_readout(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Logits of the pass-1 output tokens of one region alone (``region`` as in ``located``) through the
        head: whether the final tokens tell the item apart at all. Any mask over these tokens, the prior's
        included, can select no more than this."""
        tokens = self.model.bottom_up(x)
        return self.model.forward_head(tokens * token_layout_mask(self.model, tokens, region, tuple(x.shape[-2:])))


def token_layout_mask(model, tokens: torch.Tensor, region: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """A (B, h, w) map over the patch grid as a token mask ``tokens.shape[:-1] + (1,)`` in the pass's own
    layout, prefix tokens 0: the inverse of ``model.tokens_to_map``, found by mapping the tokens' indices."""
    index = torch.arange(tokens[..., 0].numel(), dtype=torch.float64).reshape(tokens.shape[:-1] + (1,))
    where = model.tokens_to_map(index, hw).round().long().flatten()
    if where.numel() != region.numel():
        raise ValueError(f'region {tuple(region.shape)} does not match the token map {tuple(where.shape)}')
    mask = torch.zeros(index.numel(), dtype=tokens.dtype)
    mask[where] = region.reshape(-1).to(tokens.dtype)
    return mask.reshape(index.shape)


def region_means(mask: torch.Tensor, frac: torch.Tensor, j: Optional[int]) -> Dict[str, torch.Tensor]:
    """Per composite, the prior's token mask (B, h, w) averaged over item ``j``'s tokens ('item'), the other
    items' ('others') and the background ('background'), each token weighted by its fraction (``frac``:
    ``token_fractions``); ``j=None`` (an absent class's prior): every item is an 'other'."""
    items = frac.sum(1)
    own = frac[:, j] if j is not None else torch.zeros_like(items)
    parts = {'item': own, 'others': items - own, 'background': (1 - items).clamp_min(0)}
    out = {}
    for name, w in parts.items():
        total = w.flatten(1).sum(1)
        out[name] = torch.where(total > 0, (mask * w).flatten(1).sum(1) / total.clamp_min(1e-12),
                                torch.full_like(total, float('nan')))
    return out


def mean_se(per_composite: torch.Tensor) -> Dict[str, float]:
    """Mean over composites and its standard error (composites are the independent units)."""
    v = per_composite.double()
    se = float(v.std(unbiased=True) / np.sqrt(len(v))) if len(v) > 1 else float('nan')
    return {'mean': float(v.mean()), 'se': se}


@torch.no_grad()
def measure_composites(steer: Steered, comp: Dict[str, torch.Tensor], alphas: Sequence[float],
                       batch_size: int = 250) -> Dict:
    """(a) prior accuracy, (b) attention share on the prior's item, (c) absent-prior echo, each per alpha and
    for the no-prior baseline (the model's own output scored against the same class and item), as mean and
    standard error over composites; plus the prior masks' share on their item and the share by depth."""
    x, classes, boxes, absent = comp['x'], comp['classes'], comp['boxes'], comp['absent']
    n, k = classes.shape
    hw = tuple(x.shape[-2:])
    keys = ['base_acc', 'base_share', 'base_echo', 'mask_share'] + [f'{m}@{a:g}' for a in alphas
                                                                    for m in ('acc', 'share', 'echo')]
    rows = {key: [] for key in keys}
    control = {key: [] for key in CONTROL_KEYS} if _steerable(steer) else None
    depth_share = {d: [] for d in range(1, _blocks(steer) + 1)}
    for s in range(0, n, batch_size):
        xb, cb, bb, ab = x[s:s + batch_size], classes[s:s + batch_size], boxes[s:s + batch_size], absent[s:s + batch_size]
        logits0, att0, _ = steer(xb)
        pred0, share0 = logits0.argmax(-1), item_shares(att0, bb, hw)
        rows['base_acc'].append((pred0[:, None] == cb).float().mean(1))
        rows['base_share'].append(share0.mean(1))  # = 1/k: the item named is each item in turn
        rows['base_echo'].append((pred0 == ab).float())
        masks, masks_absent = [], None  # the priors' token masks at the first alpha (they do not depend on it)
        for a in alphas:
            hits, shares = [], []
            for j in range(k):
                logits, att, mask = steer(xb, cb[:, j], a)
                hits.append(logits.argmax(-1) == cb[:, j])
                shares.append(item_shares(att, bb, hw)[:, j])
                if a == alphas[0] and mask is not None:
                    masks.append(mask)
            rows[f'acc@{a:g}'].append(torch.stack(hits, 1).float().mean(1))
            rows[f'share@{a:g}'].append(torch.stack(shares, 1).mean(1))
            logits, _, mask = steer(xb, ab, a)
            rows[f'echo@{a:g}'].append((logits.argmax(-1) == ab).float())
            masks_absent = mask if a == alphas[0] else masks_absent
        rows['mask_share'].append(torch.stack([item_shares(m, bb, hw)[:, j] for j, m in enumerate(masks)], 1).mean(1)
                                  if masks else torch.full((len(xb),), float('nan')))
        if control is not None:
            for key, v in control_rows(steer, xb, cb, bb, masks, masks_absent, alphas[0]).items():
                control[key].append(v)
        for d in depth_share:  # where along the blocks the prior moves attention (alpha = alphas[0])
            per_item = [item_shares(steer(xb, cb[:, j], alphas[0], depth=d)[1], bb, hw)[:, j] for j in range(k)]
            depth_share[d].append(torch.stack(per_item, 1).mean(1))
    cat = {key: torch.cat(v) for key, v in rows.items()}
    res = {'n': n, 'items': k, 'baseline': {m: mean_se(cat[f'base_{m}']) for m in ('acc', 'share', 'echo')},
           'alphas': {f'{a:g}': {m: mean_se(cat[f'{m}@{a:g}']) for m in ('acc', 'share', 'echo')} for a in alphas},
           'mask_share': None if torch.isnan(cat['mask_share']).all() else mean_se(cat['mask_share']),
           'share_by_depth': {str(d): mean_se(torch.cat(v)) for d, v in depth_share.items()},
           'control': None if control is None else {key: mean_se_finite(torch.cat(v)) for key, v in control.items()}}
    return res


#: The location-only control and the prior masks by region (``control_rows``), at the first alpha.
CONTROL_KEYS = ('located_acc', 'located_share', 'item_readout_acc', 'mask_item', 'mask_others', 'mask_background',
                'absent_mask_items', 'absent_mask_background', 'echo_nearest', 'echo_nearest_base')


def _steerable(steer: Steered) -> bool:
    return steer.top_down and getattr(steer, "priors", None) is not None and steer.model.td_spec.prior


def control_rows(steer: Steered, x, classes, boxes, masks: Sequence[torch.Tensor], absent_mask: torch.Tensor,
                 alpha: float) -> Dict[str, torch.Tensor]:
    """Per composite: prior accuracy and attention share when the mask is the named item's pixels
    (``Steered.located``), and the real prior masks (``masks``: item j's prior's, (B, h, w) each) averaged
    on the named item, the other items and the background, and an absent class's mask (``absent_mask``) on
    the items and the background. Together they say whether steering works by where the prior points or
    by what its mask's values carry. Also the echo of the hardest absent prior, the absent class nearest the
    items (``nearest_absent``), with the no-prior rate of predicting it: a uniformly drawn absent class is
    mostly one no model would take for an item."""
    hw = tuple(x.shape[-2:])
    frac = token_fractions(boxes, hw, masks[0].shape[-2:])
    acc, share, regions, readout = [], [], [], []
    for j, mask in enumerate(masks):
        logits, att = steer.located(x, frac[:, j], alpha)
        acc.append(logits.argmax(-1) == classes[:, j])
        readout.append(steer.item_readout(x, frac[:, j]).argmax(-1) == classes[:, j])
        share.append(item_shares(att, boxes, hw)[:, j])
        regions.append(region_means(mask, frac, j))
    absent_regions = region_means(absent_mask, frac, None)
    nearest = nearest_absent(steer.priors.class_rows(), classes)
    echo_nearest = steer(x, nearest, alpha)[0].argmax(-1) == nearest
    echo_nearest_base = steer(x)[0].argmax(-1) == nearest
    return {'echo_nearest': echo_nearest.float(), 'echo_nearest_base': echo_nearest_base.float(),
            'located_acc': torch.stack(acc, 1).float().mean(1), 'located_share': torch.stack(share, 1).mean(1),
            'item_readout_acc': torch.stack(readout, 1).float().mean(1),
            **{f'mask_{r}': torch.stack([g[r] for g in regions], 1).nanmean(1) for r in ('item', 'others', 'background')},
            'absent_mask_items': absent_regions['others'], 'absent_mask_background': absent_regions['background']}


def nearest_absent(rows: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per composite (``classes``: (B, k) item classes), the class absent from it whose prior (``rows``,
    (K, C)) has the highest cosine to any of its items' priors: (B,) class ids."""
    unit = F.normalize(rows.detach().float(), dim=-1)
    near = (unit @ unit.T)[classes].amax(1)  # (B, K): the best cosine to an item
    held = torch.zeros_like(near, dtype=torch.bool).scatter_(1, classes, True)
    return near.masked_fill(held, float('-inf')).argmax(-1)


def mean_se_finite(values: torch.Tensor) -> Optional[Dict[str, float]]:
    """``mean_se`` over the finite values (a region some composites lack is NaN there); None if none is."""
    values = values[torch.isfinite(values)]
    return mean_se(values) if len(values) else None


def _blocks(steer: Steered) -> int:
    return steer.model.num_td_blocks() if steer.top_down else len(steer.model.blocks)


@torch.no_grad()
def single_image_accuracy(model, images: torch.Tensor, labels: torch.Tensor, transform,
                          batch_size: int = 500) -> Dict[str, float]:
    """(d) accuracy on ordinary single test images (the learned prompt) through the run's evaluation
    transform, with its standard error."""
    hits = []
    for s in range(0, len(labels), batch_size):
        x = torch.stack([transform(img) for img in images[s:s + batch_size]])
        hits.append((model(x).argmax(-1) == labels[s:s + batch_size]).float())
    return mean_se(torch.cat(hits))


def measure_run(name: str, path: str, test_x: torch.Tensor, test_y: torch.Tensor, args) -> Dict:
    """Everything measured for one checkpoint of main.py (see ``measure_composites``)."""
    model, settings = load_run(path)
    steer = Steered(model, args.depth, settings['prior_source'])
    transform = run_transform(settings)
    fill = [-m / s for m, s in zip(settings['mean'], settings['std'])]
    grid = int(settings.get('composite_grid') or 2)
    t0 = time.time()
    res = {'checkpoint': str(path), 'settings': settings, 'depth': steer.depth, 'takes_prior': steer.priors is not None,
           'train_seconds': _train_seconds(path), 'composites': {}}
    for k in args.items:
        comp = grid_composites(test_x, test_y, k, args.n_composites, grid, transform, fill, args.seed)
        res['composites'][str(k)] = measure_composites(steer, comp, args.alphas)
    res['single'] = single_image_accuracy(model, test_x[:args.n_single], test_y[:args.n_single], transform)
    res['eval_seconds'] = round(time.time() - t0, 1)
    return res


def _train_seconds(checkpoint: str) -> Optional[float]:
    """Training time of a run: the ``epoch_time``s of the log.txt next to its checkpoint."""
    log = Path(checkpoint).parent / 'log.txt'
    if not log.is_file():
        return None
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return round(sum(r.get('epoch_time', 0.0) for r in lines if 'epoch' in r and r.get('mode') != 'eval'), 1)


def _pm(m: Optional[Dict]) -> str:
    return '–' if m is None else f"{m['mean']:.3f} ± {m['se']:.3f}"


def runs_table(results: Dict[str, Dict], alphas: Optional[Sequence[str]] = None) -> str:
    """One row per model, item count and alpha: (a) prior accuracy, (b) attention share on the prior's item,
    (c) absent-prior echo, each next to its no-prior baseline; (d) single-image accuracy; training time."""
    lines = ['| model | train (wall) | single acc (d) | items | α | prior acc (a) | no prior (a) | attn share (b) | '
             'no prior (b) | absent echo (c) | no prior (c) |', '|' + '---|' * 11]
    for name, r in results.items():
        t = r.get('train_seconds')
        train = f'{t / 60:.1f} min' if t else '–'
        for k, c in r['composites'].items():
            b = c['baseline']
            for a, m in c['alphas'].items():
                if alphas is not None and a not in alphas:
                    continue
                lines.append(f"| {name} | {train} | {_pm(r['single'])} | {k} | {a} | {_pm(m['acc'])} | "
                             f"{_pm(b['acc'])} | {_pm(m['share'])} | {_pm(b['share'])} | {_pm(m['echo'])} | "
                             f"{_pm(b['echo'])} |")
    return '\n'.join(lines)


def depth_table(results: Dict[str, Dict]) -> str:
    """Diagnostics at the first alpha: the prior mask's share on its item (pass-1 top tokens) and the top-down
    attention share on the prior's item after each block."""
    depths = sorted({d for r in results.values() for c in r['composites'].values() for d in c['share_by_depth']},
                    key=int)  # every run's blocks: runs of different depths share one table
    lines = ['| model | items | prior mask on its item | ' + ' | '.join(f'attn share, block {d}' for d in depths) + ' |',
             '|' + '---|' * (3 + len(depths))]
    for name, r in results.items():
        for k, c in r['composites'].items():
            cells = [_pm(c['share_by_depth'].get(d)) for d in depths]
            lines.append(f"| {name} | {k} | {_pm(c['mask_share'])} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def control_table(results: Dict[str, Dict]) -> str:
    """The location-only control next to the prior's own steering, and the prior masks by region (models
    that take a prior; at the first alpha)."""
    lines = ['| model | items | prior acc (a) | prior acc, mask = item pixels | item tokens alone through the head | '
             'attn share (b) | attn share, mask = item pixels | prior mask: named item | other items | background | '
             'absent-class mask: items | background | echo, nearest absent class | no prior |', '|' + '---|' * 14]
    for name, r in results.items():
        for k, c in r['composites'].items():
            ctl = c.get('control')
            if not ctl:
                continue
            first = next(iter(c['alphas'].values()))
            cells = [first['acc'], ctl['located_acc'], ctl.get('item_readout_acc'), first['share'],
                     ctl["located_share"]] + [ctl.get(key) for key in CONTROL_KEYS[3:]]
            lines.append(f'| {name} | {k} | ' + ' | '.join(_pm(v) for v in cells) + ' |')
    return '\n'.join(lines)


def plot_runs(results: Dict[str, Dict], path: Path) -> Path:
    """(a), (b), (c) against alpha, one row per item count; dashed: each model's no-prior baseline."""
    ks = list(next(iter(results.values()))['composites'])
    fig = Figure(figsize=(13, 3.4 * len(ks) + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ks), 3, squeeze=False)
    titles = {'acc': '(a) predicted class = prior class', 'share': "(b) top-down attention on the prior's item",
              'echo': '(c) absent prior: predicts the absent class'}
    for row, k in zip(axes, ks):
        for (name, r), color in zip(results.items(), [f'C{i}' for i in range(10)]):
            c = r['composites'][k]
            alphas = [float(a) for a in c['alphas']]
            for ax, key in zip(row, titles):
                ys = [m[key]['mean'] for m in c['alphas'].values()]
                es = [m[key]['se'] for m in c['alphas'].values()]
                ax.errorbar(alphas, ys, yerr=es, fmt='o-', color=color, label=name, ms=3, capsize=2)
                ax.axhline(c['baseline'][key]['mean'], color=color, ls='--', lw=0.8)
        for ax, key in zip(row, titles):
            ax.set_xscale('log')
            ax.set_xlabel('α')
            ax.set_ylim(0, 1.02)
            ax.set_title(f'{titles[key]}, {k} items', fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc='lower left')
    fig.text(0.5, 0.005, "dashed: the model's no-prior baseline; bars: one standard error", ha='center', fontsize=8)
    return save_figure(fig, path, (0, 0.03, 1, 1))


def _panel(ax, img, title=None, xlabel=None, cmap=None):
    ax.imshow(img, cmap=cmap, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=7)


@torch.no_grad()
def plot_run_examples(steer: Steered, comps: Sequence[Dict[str, torch.Tensor]], path: Path, alpha: float = 1.0,
                      title: str = 'AbSViT') -> Path:
    """One row per composite: the image, bottom-up attention (and the no-prior prediction), then for each
    item's class prior and for an absent class's prior: the prior's token mask and top-down attention, with
    the prediction (✓: the prior's class; for the absent prior ✓ means it did NOT predict that class)."""
    rows = [(c['x'][i:i + 1], c['classes'][i], int(c['absent'][i])) for c in comps for i in range(len(c['x']))]
    kmax = max(len(cls) for _, cls, _ in rows)
    cols = 2 + 2 * (kmax + 1)
    fig = Figure(figsize=(1.3 * cols, 1.75 * len(rows) + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax_row, (x, cls, absent) in zip(axes, rows):
        for ax in ax_row:
            ax.axis('off')
        bottom_up = steer.model.inspect(x, depth=steer.depth)
        _panel(ax_row[0], x[0, 0].numpy(), 'image', ' | '.join(CLASSES[int(c)] for c in cls), cmap='gray')
        _panel(ax_row[1], normalize_map(bottom_up['bottom_up'])[0].numpy(), 'bottom-up',
               f"no prior: {CLASSES[int(steer(x)[0].argmax())]}")
        priors = [(int(c), f'prior {CLASSES[int(c)]}') for c in cls] + [(absent, f'absent: {CLASSES[absent]}')]
        for j, (c, label) in enumerate(priors):
            slot = 2 + 2 * (j if j < len(cls) else kmax)
            logits, att, mask = steer(x, torch.tensor([c]), alpha)
            pred = int(logits.argmax())
            ok = (pred == c) if j < len(cls) else (pred != c)
            ax_row[slot].axis('on')
            ax_row[slot + 1].axis('on')
            _panel(ax_row[slot], mask[0].numpy() if mask is not None else np.zeros(att.shape[-2:]), f'mask: {label}')
            _panel(ax_row[slot + 1], att[0].numpy(), 'top-down', f"{CLASSES[pred]} {'✓' if ok else '✗'}")
        ax_row[0].axis('on')
        ax_row[1].axis('on')
    fig.suptitle(f'{title}: one prior per item and one naming an absent class (α={alpha:g}, maps after block '
                 f'{steer.depth} of {_blocks(steer)}; under each map the prediction)', fontsize=9)
    return save_figure(fig, path, (0, 0, 1, 0.96))


@torch.no_grad()
def plot_alpha_sweep(steer: Steered, comp: Dict[str, torch.Tensor], path: Path, alphas: Sequence[float],
                     title: str = 'AbSViT') -> Path:
    """The paper's Fig. 8 for one composite: top-down attention as alpha grows, one row per item's prior."""
    x, cls = comp['x'][:1], comp['classes'][0]
    fig = Figure(figsize=(1.5 * (len(alphas) + 1), 1.8 * len(cls) + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cls), len(alphas) + 1, squeeze=False)
    for row, c in zip(axes, cls):
        _panel(row[0], x[0, 0].numpy(), None, f'prior: {CLASSES[int(c)]}', cmap='gray')
        for ax, a in zip(row[1:], alphas):
            logits, att, _ = steer(x, c.reshape(1), a)
            _panel(ax, att[0].numpy(), f'α = {a:g}', f'pred {CLASSES[int(logits.argmax())]}')
    fig.suptitle(f'{title}: top-down attention against α (block {steer.depth})', fontsize=9)
    return save_figure(fig, path, (0, 0, 1, 0.93))


def parse_runs(items: Sequence[str]) -> Dict[str, str]:
    """``NAME=PATH`` pairs (NAME any label, e.g. AbSViT) in the given order; PATH a main.py checkpoint, or
    the ``runs.json`` of an earlier ``--runs`` measurement of one run (reused: tables and figures of
    runs measured one at a time)."""
    out = {}
    for item in items:
        if '=' not in item or not item.split('=', 1)[0] or not item.split('=', 1)[1]:
            raise DemoError(f"--runs takes NAME=CHECKPOINT (a main.py checkpoint), got '{item}'")
        name, path = item.split('=', 1)
        out[name] = path
    return out


def main_runs(args, test_x: torch.Tensor, test_y: torch.Tensor, out: Path) -> None:
    """``--runs``: measure main.py checkpoints; write runs.json, runs_table.md, runs.png and, for the first
    run, the example and alpha-sweep figures."""
    results = {}
    for name, path in parse_runs(args.runs).items():
        if path.endswith('.json'):  # an earlier --runs measurement of this run: reused as it is
            results[name] = next(iter(json.loads(Path(path).read_text())['results'].values()))
            continue
        r = results[name] = measure_run(name, path, test_x, test_y, args)
        c1 = {k: c['alphas'][f'{args.alphas[0]:g}'] for k, c in r['composites'].items()}
        print(f"{name}: single {_pm(r['single'])}; " + '; '.join(
            f"{k} items α={args.alphas[0]:g}: acc {_pm(m['acc'])}, share {_pm(m['share'])}, echo {_pm(m['echo'])}"
            for k, m in c1.items()) + f" ({r['eval_seconds']} s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {'n_composites': args.n_composites, 'items': args.items, 'seed': args.seed, 'alphas': args.alphas,
            'n_single': args.n_single}
    (out / 'runs.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    summary = runs_table(results, [f'{args.alphas[0]:g}'])
    text = (f'{summary}\n\nα sweep:\n\n{runs_table(results)}\n\nDiagnostics (α = {args.alphas[0]:g}):\n\n'
            f'{depth_table(results)}\n\nControl: steering by location only (α = {args.alphas[0]:g}):\n\n'
            f'{control_table(results)}\n')
    (out / 'runs_table.md').write_text(text)
    plot_runs(results, out / 'runs.png')
    name, path = next(iter(results.items()))[0], next(iter(results.values()))['checkpoint']
    model, settings = load_run(path)
    steer = Steered(model, args.depth, settings['prior_source'])
    if steer.top_down and args.examples > 0:
        transform = run_transform(settings)
        fill = [-m / s for m, s in zip(settings['mean'], settings['std'])]
        grid = int(settings.get('composite_grid') or 2)
        comps = [grid_composites(test_x, test_y, k, args.examples, grid, transform, fill, args.seed + 1)
                 for k in args.items]
        plot_run_examples(steer, comps, out / 'examples.png', args.example_alpha, name)
        plot_alpha_sweep(steer, comps[-1], out / 'alpha_sweep.png', args.alphas, name)
    print(f'\n{text}\nwrote {out / "runs.json"}, {out / "runs_table.md"}, {out / "runs.png"}')


# -- CLI ------------------------------------------------------------------------------------------

def parse_checkpoints(items: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """``MODE=PATH`` (MODE a td_mode or display name) -> {display name: (td_mode, path)}."""
    by_mode = {m: n for n, m in MODES.items()}
    by_name = {n.lower(): n for n in MODES}
    out = {}
    for item in items:
        if '=' not in item:
            raise DemoError(f"--checkpoints takes MODE=PATH (MODE one of {', '.join(MODES.values())}), got '{item}'")
        key, path = item.split('=', 1)
        name = by_mode.get(key) or by_name.get(key.lower())
        if name is None:
            raise DemoError(f"unknown mode '{key}' in --checkpoints; use one of {', '.join(MODES.values())}")
        out[name] = (MODES[name], path)
    return dict(sorted(out.items(), key=lambda kv: list(MODES).index(kv[0])))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--train', action='store_true', help='train the models here (same recipe), then measure')
    src.add_argument('--checkpoints', nargs='+', metavar='MODE=PATH', help='measure these checkpoints')
    src.add_argument('--runs', nargs='+', metavar='NAME=CHECKPOINT',
                     help='measure checkpoints of main.py (e.g. prior-conditioned training) on grid composites of '
                          '--items items: prior accuracy, attention share on the item, absent-prior echo, '
                          'single-image accuracy; a runs.json of an earlier measurement of one run is reused')
    p.add_argument('--items', type=int, nargs='+', default=[2, 3], help='--runs: items per test composite')
    p.add_argument('--modes', nargs='+', default=list(MODES.values()), choices=list(MODES.values()),
                   help='which models to train (with --train)')
    p.add_argument('--epochs', type=int, default=1, help='training epochs per model')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=None,
                   help="learning rate (default: the Fashion-MNIST recipe's, scaled to the batch size)")
    p.add_argument('--pair-prob', type=float, default=0.5,
                   help='share of training samples that are two images side by side (soft 0.5/0.5 target); '
                        '0: single images only')
    p.add_argument('--train-limit', type=int, default=None, help='train on the first N training images only')
    p.add_argument('--n-composites', type=int, default=None, help='test composites (default 1000; --runs: 500 '
                                                                       'per item count)')
    p.add_argument('--n-single', type=int, default=10000, help='test images for the single-object accuracy')
    p.add_argument('--alphas', type=float, nargs='+', default=list(ALPHAS))
    p.add_argument('--depth', type=int, default=None,
                   help="blocks before the attention map is read (default: 3/4 of them, the release demo's "
                        '9 of 12)')
    p.add_argument('--seed', type=int, default=0, help='composites, training and the single-object placement')
    p.add_argument('--data-path', default=None, help='Fashion-MNIST folder (default: the Debian package\'s)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--out-dir', default='output/controllability',
                   help='checkpoints, results.json, table.md, figures')
    p.add_argument('--examples', type=int, default=4, help='composites in the example figure (0: none)')
    p.add_argument('--example-alpha', type=float, default=None,
                   help='alpha of the example figure (default 10; --runs: the first of --alphas)')
    return p


def _measure_models(args, composites, test_x, test_y, out: Path) -> Dict[str, dict]:
    """Train (``--train``) or load (``--checkpoints``) each mode's model and measure it on the composites."""
    x, yl, yr, _ = composites
    if args.train:
        train_x, train_y = load_split(True, args.data_path, args.train_limit)
        todo = {n: (m, None) for n, m in MODES.items() if m in args.modes}
    else:
        todo = parse_checkpoints(args.checkpoints)
    results = {}
    for name, (mode, path) in todo.items():
        if path is None:
            print(f'training {name} ({MODEL}, td_mode={mode}, input {CANVAS}) on {len(train_y)} images '
                  f'for {args.epochs} epoch(s)')
            model, info = train_model(mode, train_x, train_y, args.epochs, args.batch_size, seed=args.seed,
                                      lr=args.lr, pair_prob=args.pair_prob)
            path = out / f'{mode}.pth'
            save_model(model, info, path)
        else:
            model, _ = load_model(MODEL, path, td_mode=mode, img_size=CANVAS)
            info = torch.load(path, map_location='cpu', weights_only=True).get('demo', {}).get('train')
        t0 = time.time()
        r = evaluate(model, x, yl, yr, args.alphas, args.depth)
        r['single_acc'] = single_accuracy(model, test_x[:args.n_single], test_y[:args.n_single], args.seed)
        r.update(td_mode=mode, checkpoint=str(path), train=info, eval_seconds=round(time.time() - t0, 1))
        results[name] = r
        print(f"{name}: single-object acc {r['single_acc']:.3f}; " + ', '.join(
            f"α={a}: {m['prior_acc']:.3f}/{m['attn_share']:.3f}" for a, m in r['alphas'].items())
            + f" (no prior {r['baseline']['prior_acc']:.3f}/{r['baseline']['attn_share']:.3f})")
        if name == 'AbSViT' and args.examples > 0:
            k = min(args.examples, len(x))
            p = plot_examples(model, x[:k], yl[:k], yr[:k], out / 'examples.png', args.example_alpha, args.depth)
            print(f'wrote {p}')
    return results


def _write_results(args, composites, results: Dict[str, dict], out: Path) -> None:
    """results.json, table.md and the figure of a two-item measurement, and the tables on stdout."""
    x, _, _, (il, ir) = composites
    table = markdown_table(results)
    depth = next(iter(results.values()))['depth'] if results else args.depth
    meta = {'model': MODEL, 'canvas': list(CANVAS), 'n_composites': args.n_composites, 'seed': args.seed,
            'depth': args.depth, 'alphas': args.alphas, 'composites': {'left': il.tolist(), 'right': ir.tolist()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / 'results.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    (out / 'table.md').write_text(table + '\n\n' + mask_table(results) + '\n')
    plot_results(results, out / 'controllability.png')
    print(f'\n{len(x)} composites, seed {args.seed}, attention after block {depth}\n\n{table}\n\n'
          f'{mask_table(results)}\n')
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'controllability.png'}")


def _run_command_line(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    test_x, test_y = load_split(False, args.data_path)
    if args.runs:
        args.n_composites = args.n_composites or 500
        args.example_alpha = args.alphas[0] if args.example_alpha is None else args.example_alpha
        main_runs(args, test_x, test_y, out)
        return
    args.n_composites = args.n_composites or 1000
    args.example_alpha = 10.0 if args.example_alpha is None else args.example_alpha
    composites = make_composites(test_x, test_y, args.n_composites, args.seed)
    _write_results(args, composites, _measure_models(args, composites, test_x, test_y, out), out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_run_command_line, argv)


if __name__ == '__main__':
    sys.exit(main())
