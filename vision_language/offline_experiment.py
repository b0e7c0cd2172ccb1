"""The offline task's experiment: a bottom-up ViT against AbSViT in each prior mode, with an oracle control.

    python -m vision_language.offline_experiment [--steps 4000] [--seeds 0 1] [--out output/vl_offline]

As METER starts from a pretrained image encoder, the micro encoder is first pretrained on single
Fashion-MNIST items (one item in a random cell of an empty canvas; its class and its cell; cached
under ``--out``), and every model of the table starts from that one encoder (``--init scratch``: from
random weights, the first version of this experiment). Then each run trains the offline model
(``vision_language.offline``) on one CPU thread with the real MiniLM text encoder frozen and reports
test accuracy (overall and per question type), the steering diagnostics and the CPU time; the table
goes to stdout and ``results.json``.

Runs (``--only``): ``vit`` (bottom-up ViT), ``absvit-paper`` and ``absvit-release`` (AbSViT steered by
the question in each prior mode) and ``oracle``: the bottom-up ViT given only the cell the question
names (the other three blanked), i.e. perfect selection through the same bottleneck; the upper bound
of what steering can bring.
"""
import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F

from datasets.fmnist import FashionMNIST
from errors import UserError, run_cli
from vision_language.image_encoder import load_image_weights
from vision_language.model import VLModel
from vision_language.objectives import total_loss, vqa_loss
from vision_language.offline import ANSWERS, NAMES, OfflineData, build_offline_data, encoder_geometry, normalise, \
    offline_config, region_token_masks, scene_batch, shrink_items, single_item_canvases
from vision_language.optim import build_optimizer, warmup_linear_decay
from vision_language.steering import mask_statistics, swap_statistics

__all__ = ['RunSpec', 'RUNS', 'offline_step', 'train_offline', 'evaluate_offline', 'pretrain_encoder',
           'init_image_encoder', 'run', 'main']


@dataclass(frozen=True)
class RunSpec:
    """One row of the table: the model and what its image input is."""
    name: str
    top_down: bool
    prior_mode: str = 'paper'
    oracle: bool = False  #: the image shows only the cell the question names


RUNS: Dict[str, RunSpec] = {
    'vit': RunSpec('ViT (bottom-up)', False),
    'absvit-paper': RunSpec('AbSViT, paper prior', True, 'paper'),
    'absvit-release': RunSpec('AbSViT, release prior', True, 'release'),
    'oracle': RunSpec('oracle: ViT shown only the named cell', False, oracle=True),
}


def _batch(data: OfflineData, samples: Dict[str, torch.Tensor], idx: torch.Tensor, train: bool,
           oracle: bool = False):
    """``(images, ids, mask, hidden, answers, regions)`` of samples ``idx``; ``oracle``: the named cell only."""
    scenes = data.train if train else data.test
    q, regions = samples['question'][idx], samples['region'][idx]
    bank = data.questions
    images = scene_batch(scenes, samples['scene'][idx], keep=regions if oracle else None)
    return images, bank.input_ids[q], bank.attention_mask[q], bank.hidden[q], samples['answer'][idx], regions


def offline_step(model: VLModel, batch, var_loss: bool = True, prior_weight: float = 1.0):
    """One forward of a batch: ``(loss, terms, output, logits)``."""
    images, ids, mask, hidden, answers, _ = batch
    out = model(images, ids, mask, task='vqa', var_loss=var_loss, text_hidden=hidden)
    logits = model.vqa_head(out.cls_feats)
    targets = F.one_hot(answers, len(ANSWERS)).float()
    loss, terms = total_loss(model, out, vqa_loss(logits, targets), 'vqa', prior_weight=prior_weight)
    return loss, terms, out, logits


def _update(opt, sched, loss: torch.Tensor) -> float:
    """One optimiser and schedule step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def train_offline(model: VLModel, data: OfflineData, steps: int, batch_size: int = 64, lr: float = 2e-3,
                  seed: int = 0, log_every: int = 100, prior_weight: float = 1.0, oracle: bool = False,
                  encoder_lr_mult: float = 1.0) -> Dict[str, list]:
    """AdamW with METER's groups, warm-up + linear decay; returns the loss curve. Every new part trains
    at ``lr``; the image encoder's pretrained weights (the ``base`` group) at ``lr * encoder_lr_mult``,
    as METER fine-tunes its encoders slower than what it adds."""
    opt = build_optimizer(model, lr=lr * encoder_lr_mult, multipliers={
        part: 1.0 / encoder_lr_mult for part in ('cross_modal', 'heads', 'feedback')})
    sched = warmup_linear_decay(opt, steps)
    g = torch.Generator().manual_seed(seed)
    n = len(data.train_samples['scene'])
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        loss, terms, _, _ = offline_step(model, _batch(data, data.train_samples, idx, True, oracle),
                                          prior_weight=prior_weight)
        losses.append(_update(opt, sched, loss))
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f'  step {step + 1}/{steps}  loss {recent:.3f}  ' +
                  ' '.join(f'{k} {v.item():.3f}' for k, v in terms.items()), flush=True)
    return {'loss': losses}


@torch.no_grad()
def evaluate_offline(model: VLModel, data: OfflineData, batch_size: int = 256, limit: int = None,
                     oracle: bool = False) -> Dict[str, float]:
    """Test accuracy (overall, ``acc_what`` on "what is at X?" (10-way, chance 10 %) and ``acc_where`` on
    "where is the Y?" (4-way, chance 25 %)) and, for AbSViT, the steering diagnostics (the swap gives
    every question the prior of the next sample's question about another cell)."""
    model.eval()
    samples = data.test_samples
    n = len(samples['scene']) if limit is None else min(limit, len(samples['scene']))
    cells = region_token_masks(model.image_encoder.vit.patch_embed.grid_size[0])
    hits, what, stats = [], [], {}
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        batch = _batch(data, samples, idx, False, oracle)
        images, ids, mask, hidden, answers, regions = batch
        _, _, out, logits = offline_step(model, batch, var_loss=False)
        pred = logits.argmax(1)
        hits.append(pred == answers)
        what.append(answers < len(NAMES))
        b = {}
        if model.top_down:
            b.update(mask_statistics(out.image.mask, model.image_encoder.num_prefix_tokens, cells[regions]))
            other = _swap_prior(model, hidden, ids, mask, regions)
            swapped = model.vqa_head(model(images, ids, mask, text_hidden=hidden, prior=other).cls_feats).argmax(1)
            b.update(swap_statistics(pred, swapped, answers))
        for k, v in b.items():
            stats[k] = stats.get(k, 0.0) + v * len(idx)
    hits, what = torch.cat(hits).float(), torch.cat(what)
    return {'accuracy': 100.0 * hits.mean().item(), 'acc_what': 100.0 * hits[what].mean().item(),
            'acc_where': 100.0 * hits[~what].mean().item(), **{k: v / n for k, v in stats.items()}}


def _swap_prior(model: VLModel, hidden, ids, mask, regions):
    """The prior of the sample whose named region differs: the batch rolled to the next sample with
    another region (a question about another cell)."""
    from vision_language.model import text_prior
    prior = text_prior(hidden, mask, model.cfg.prior_mode, 'vqa')
    order = torch.arange(len(regions))
    for shift in range(1, len(regions)):
        rolled = order.roll(-shift)
        if bool((regions[rolled] != regions).all()):
            return prior[rolled]
    return prior.roll(-1, 0)


# -- pretraining the image encoder on single items --------------------------------------------------

def _single_items(train: bool, fmnist_root: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    split = FashionMNIST(fmnist_root, train=train)
    return shrink_items(split.data), split.targets.long()


def _pretrain_model(geometry: Dict[str, int]) -> torch.nn.Module:
    """A bottom-up micro ViT of the offline encoder's geometry with one head on its class token: 10 class
    logits, then 4 cell logits (what the item is and where it sits)."""
    return timm.create_model('vit_micro_patch4_28_gap', num_classes=len(NAMES) + 4, global_pool='token',
                             class_token=True, **geometry)


def _pretrain_loss(logits: torch.Tensor, labels: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Class and cell cross-entropies: the encoder learns to recognise an item and to locate it (without
    the cell target the class token learns to ignore position, and the narrow answer path then takes
    thousands of steps to find it again)."""
    return F.cross_entropy(logits[:, :len(NAMES)], labels) + F.cross_entropy(logits[:, len(NAMES):], cells)


@torch.no_grad()
def _single_item_accuracy(vit: torch.nn.Module, items: torch.Tensor, labels: torch.Tensor,
                          seed: int) -> Tuple[float, float]:
    """Class and cell accuracy (%) on ``items``, each alone in a random cell."""
    vit.eval()
    cells = torch.randint(0, 4, (len(items),), generator=torch.Generator().manual_seed(seed))
    logits = torch.cat([vit(normalise(single_item_canvases(items[i:i + 500], cells[i:i + 500])))
                        for i in range(0, len(items), 500)])
    return (100.0 * (logits[:, :len(NAMES)].argmax(1) == labels).float().mean().item(),
            100.0 * (logits[:, len(NAMES):].argmax(1) == cells).float().mean().item())


def pretrain_encoder(geometry: Dict[str, int], steps: int, out_dir: str, seed: int = 0, batch_size: int = 128,
                     lr: float = 2e-3, fmnist_root: Optional[str] = None, log_every: int = 500) -> Tuple[str, dict]:
    """Pretrain (or reuse the cached) image encoder on single Fashion-MNIST items of the training split,
    so that the offline task starts, as METER does, from an encoder that already recognises what it
    sees. Returns ``(path, info)``; ``info['test_accuracy']`` / ``['test_cell_accuracy']``: single-item
    class / cell accuracy on the test split."""
    tag = 'whatwhere_' + '_'.join(f'{k}{geometry[k]}' for k in ('patch_size', 'depth', 'embed_dim')) + f'_steps{steps}_seed{seed}'
    path = os.path.join(out_dir, f'pretrained_encoder_{tag}.pth')
    if os.path.isfile(path):
        info = torch.load(path, map_location='cpu', weights_only=True)['info']
        print(f'pretrained encoder: reusing {path} (single-item test accuracy: class {info["test_accuracy"]:.1f} %, '
              f'cell {info.get("test_cell_accuracy", float("nan")):.1f} %)')
        return path, info
    torch.manual_seed(seed)
    vit = _pretrain_model(geometry)
    items, labels = _single_items(True, fmnist_root)
    opt = torch.optim.AdamW(vit.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start, losses = time.process_time(), []
    print(f'pretraining the image encoder on single items: {steps} steps of {batch_size}', flush=True)
    vit.train()
    for step in range(steps):
        idx, cells = torch.randint(0, len(items), (batch_size,), generator=g), torch.randint(0, 4, (batch_size,), generator=g)
        loss = _pretrain_loss(vit(normalise(single_item_canvases(items[idx], cells))), labels[idx], cells)
        losses.append(_update(opt, sched, loss))
        if log_every and (step + 1) % log_every == 0:
            print(f'  pretrain step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.3f}', flush=True)
    accuracy, cell_accuracy = _single_item_accuracy(vit, *_single_items(False, fmnist_root), seed)
    info = {'steps': steps, 'seed': seed, 'cpu_s': time.process_time() - start, 'test_accuracy': accuracy,
            'test_cell_accuracy': cell_accuracy}
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'model': vit.state_dict(), 'info': info}, path)
    print(f'  single-item test accuracy: class {accuracy:.1f} %, cell {cell_accuracy:.1f} % '
          f'({info["cpu_s"]:.0f} CPU s); wrote {path}')
    return path, info


def init_image_encoder(model: VLModel, path: str) -> str:
    """Start ``model``'s image encoder (ViT or AbSViT) from the pretrained file: every backbone weight
    loaded, the classifier set aside, AbSViT's feedback (decoders, prompt projection) as initialised."""
    return load_image_weights(model.image_encoder.vit, path)


# -- the table ------------------------------------------------------------------------------------

def run(spec: RunSpec, steps: int, n_train: int, n_test: int, seed: int = 0, text: str = 'minilm',
        lr: float = 3e-3, prior_weight: float = 1.0, encoder_path: Optional[str] = None,
        encoder_lr_mult: float = 1.0, log_every: int = 500, **model_kwargs) -> Dict[str, float]:
    """Train one model of the table (from ``encoder_path`` or from scratch) and measure it;
    ``model_kwargs`` go to ``offline_config``. The data depend on ``seed`` only through training order."""
    torch.manual_seed(seed)
    model = VLModel(offline_config(text, spec.top_down, spec.prior_mode, **model_kwargs))
    model.text_encoder.requires_grad_(False)  # frozen: its outputs are computed once (TextBank)
    if encoder_path:
        print('  ' + init_image_encoder(model, encoder_path), flush=True)
    data = build_offline_data(model, n_train, n_test, seed=0)
    print(f'{spec.name}, seed {seed}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained '
          f'parameters (text encoder frozen), {steps} steps', flush=True)
    wall, cpu = time.time(), time.process_time()
    curve = train_offline(model, data, steps, seed=seed, lr=lr, prior_weight=prior_weight, oracle=spec.oracle,
                          encoder_lr_mult=encoder_lr_mult, log_every=log_every)
    result = {'train_cpu_s': time.process_time() - cpu, 'train_wall_s': time.time() - wall}
    result.update(evaluate_offline(model, data, oracle=spec.oracle))
    result.update(first_loss=sum(curve['loss'][:20]) / 20, last_loss=sum(curve['loss'][-20:]) / 20)
    print(f'  {json.dumps({k: round(v, 4) for k, v in result.items()})}', flush=True)
    return result


COLUMNS = [('accuracy', 'test acc %', 1), ('acc_what', '"what is at X?" %', 1), ('acc_where', '"where is Y?" %', 1),
           ('mask_positive', 'mask > 0', 2), ('mask_mean', 'mean mask', 2), ('region_mass', 'mass on named cell', 2),
           ('swap_answer_change', 'answers changed by swap', 2), ('swap_score_drop', 'acc drop by swap', 3),
           ('train_cpu_s', 'train CPU s / seed', 0)]


def summarise(per_seed: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean over seeds of every figure, and each seed's accuracy (``accuracy_seeds``)."""
    keys = per_seed[0].keys()
    out = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in keys}
    out['accuracy_seeds'] = [r['accuracy'] for r in per_seed]
    return out


def table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table of seed means; accuracy also lists each seed."""
    lines = ['| model | ' + ' | '.join(h for _, h, _ in COLUMNS) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
    for name, r in results.items():
        cells = [f'{r[k]:.{d}f}' if k in r else '-' for k, _, d in COLUMNS]
        if len(r.get('accuracy_seeds', [])) > 1:
            cells[0] += ' (' + ' / '.join(f'{a:.1f}' for a in r['accuracy_seeds']) + ')'
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=4000, help='training steps of each run')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1], help='one run per seed and model; means reported')
    p.add_argument('--train-scenes', type=int, default=2000)
    p.add_argument('--test-scenes', type=int, default=500)
    p.add_argument('--text', default='minilm', choices=['minilm', 'tiny-roberta'])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--lr', type=float, default=3e-3, help='learning rate of the parts added to the encoders')
    p.add_argument('--encoder-lr-mult', type=float, default=0.1,
                   help='learning-rate factor of the (pretrained) image encoder backbone')
    p.add_argument('--init', default='pretrained', choices=['pretrained', 'scratch'],
                   help='image encoder: pretrained on single items (cached under --out) or random')
    p.add_argument('--pretrain-steps', type=int, default=3000, help='steps of 128 single items')
    p.add_argument('--prior-weight', type=float, default=1.0, help='weight of the paper prior loss')
    p.add_argument('--hidden-size', type=int, default=16, help='width of the pooled features (the bottleneck)')
    p.add_argument('--patch-size', type=int, default=8)
    p.add_argument('--depth', type=int, default=2)
    p.add_argument('--width', type=int, default=32)
    p.add_argument('--only', nargs='+', default=None, choices=list(RUNS), help='runs to do (default: all)')
    p.add_argument('--log-every', type=int, default=500)
    p.add_argument('--out', default='output/vl_offline')
    args = p.parse_args(argv)
    _check(args)
    return args


def _check(args: argparse.Namespace) -> None:
    """Clear errors for settings that would fail late or measure nothing."""
    positive = {'--steps': args.steps, '--batch-size': args.batch_size, '--train-scenes': args.train_scenes,
                '--test-scenes': args.test_scenes, '--threads': args.threads, '--pretrain-steps': args.pretrain_steps}
    bad = [f'{k} {v}' for k, v in positive.items() if v < 1]
    bad += [f'{k} {v}' for k, v in {'--lr': args.lr, '--encoder-lr-mult': args.encoder_lr_mult}.items() if not v > 0]
    if bad:
        raise UserError(f'these must be positive: {", ".join(bad)}')
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f'--seeds repeats a seed: {args.seeds}')
    if args.prior_weight < 0:
        raise UserError(f'--prior-weight must be >= 0, got {args.prior_weight}')
    encoder_geometry(args.patch_size, args.depth, args.width)  # raises for a geometry that cannot work


def experiment(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    """Pretrain (or reuse) the encoder, then every selected run for every seed; writes ``results.json``."""
    torch.set_num_threads(args.threads)
    encoder_path, pretrain = None, None
    if args.init == 'pretrained':
        encoder_path, pretrain = pretrain_encoder(encoder_geometry(args.patch_size, args.depth, args.width),
                                                  args.pretrain_steps, args.out)
    results, raw = {}, {}
    for key, spec in RUNS.items():
        if args.only and key not in args.only:
            continue
        raw[spec.name] = [run(spec, args.steps, args.train_scenes, args.test_scenes, seed=seed, text=args.text,
                              lr=args.lr, prior_weight=args.prior_weight, encoder_path=encoder_path,
                              encoder_lr_mult=args.encoder_lr_mult, log_every=args.log_every,
                              hidden_size=args.hidden_size, patch_size=args.patch_size, depth=args.depth,
                              width=args.width) for seed in args.seeds]
        results[spec.name] = summarise(raw[spec.name])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'args': vars(args), 'pretrain': pretrain, 'results': results, 'per_seed': raw}, f, indent=1)
    return results


def _run_command_line(argv=None) -> None:
    print(table(experiment(parse_args(argv))))


def main(argv=None) -> int:
    return run_cli(_run_command_line, argv)


if __name__ == '__main__':
    raise SystemExit(main())
