"""The offline task's experiment: a bottom-up ViT against AbSViT in each prior mode.

    python -m vision_language.offline_experiment [--steps 5000] [--out output/vl_offline]

Each run trains the offline model (``vision_language.offline``) from scratch on one CPU thread with
the real MiniLM text encoder frozen, then reports test accuracy, the steering diagnostics and the
wall time; the table goes to stdout and ``results.json``.
"""
import argparse
import json
import os
import time
from typing import Dict

import torch

from vision_language.model import VLModel
from vision_language.objectives import total_loss, vqa_loss
from vision_language.offline import ANSWERS, OfflineData, build_offline_data, offline_config, region_token_masks, \
    scene_batch
from vision_language.optim import build_optimizer, warmup_linear_decay
from vision_language.steering import mask_statistics, swap_statistics

__all__ = ['offline_step', 'train_offline', 'evaluate_offline', 'run', 'main']

RUNS = {'ViT (bottom-up)': (False, 'paper'), 'AbSViT, paper prior': (True, 'paper'),
        'AbSViT, release prior': (True, 'release')}


def _batch(data: OfflineData, samples: Dict[str, torch.Tensor], idx: torch.Tensor, train: bool):
    scenes = data.train if train else data.test
    q = samples['question'][idx]
    bank = data.questions
    return (scene_batch(scenes, samples['scene'][idx]), bank.input_ids[q], bank.attention_mask[q], bank.hidden[q],
            samples['answer'][idx], samples['region'][idx])


def offline_step(model: VLModel, batch, var_loss: bool = True, prior_weight: float = 1.0):
    """One forward of a batch: ``(loss, terms, output, logits)``."""
    images, ids, mask, hidden, answers, _ = batch
    out = model(images, ids, mask, task='vqa', var_loss=var_loss, text_hidden=hidden)
    logits = model.vqa_head(out.cls_feats)
    targets = torch.nn.functional.one_hot(answers, len(ANSWERS)).float()
    loss, terms = total_loss(model, out, vqa_loss(logits, targets), 'vqa', prior_weight=prior_weight)
    return loss, terms, out, logits


def train_offline(model: VLModel, data: OfflineData, steps: int, batch_size: int = 64, lr: float = 2e-3,
                  seed: int = 0, log_every: int = 100, prior_weight: float = 1.0) -> Dict[str, list]:
    """Adam(W) with METER's groups (all multipliers 1: everything trains from scratch here), warm-up +
    linear decay; returns the loss curve."""
    opt = build_optimizer(model, lr=lr, multipliers={'cross_modal': 1.0, 'heads': 1.0, 'feedback': 1.0})
    sched = warmup_linear_decay(opt, steps)
    g = torch.Generator().manual_seed(seed)
    n = len(data.train_samples['scene'])
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        loss, terms, _, _ = offline_step(model, _batch(data, data.train_samples, idx, True),
                                          prior_weight=prior_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f'  step {step + 1}/{steps}  loss {recent:.3f}  ' +
                  ' '.join(f'{k} {v.item():.3f}' for k, v in terms.items()), flush=True)
    return {'loss': losses}


@torch.no_grad()
def evaluate_offline(model: VLModel, data: OfflineData, batch_size: int = 256, limit: int = None) -> Dict[str, float]:
    """Test accuracy and, for AbSViT, the steering diagnostics (the swap gives every question the prior
    of the next sample's question, a different question about another or the same scene)."""
    model.eval()
    samples = data.test_samples
    n = len(samples['scene']) if limit is None else min(limit, len(samples['scene']))
    grid = model.image_encoder.vit.patch_embed.grid_size[0]
    cells = region_token_masks(grid)
    correct, stats, count = 0.0, {}, 0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        batch = _batch(data, samples, idx, False)
        images, ids, mask, hidden, answers, regions = batch
        _, _, out, logits = offline_step(model, batch, var_loss=False)
        pred = logits.argmax(1)
        correct += (pred == answers).sum().item()
        b = {}
        if model.top_down:
            b.update(mask_statistics(out.image.mask, model.image_encoder.vit.num_prefix_tokens, cells[regions]))
            other = _swap_prior(model, hidden, ids, mask, regions)
            swapped = model.vqa_head(model(images, ids, mask, text_hidden=hidden, prior=other).cls_feats).argmax(1)
            b.update(swap_statistics(pred, swapped, answers))
        for k, v in b.items():
            stats[k] = stats.get(k, 0.0) + v * len(idx)
        count += len(idx)
    return {'accuracy': 100.0 * correct / count, **{k: v / count for k, v in stats.items()}}


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


def run(name: str, top_down: bool, prior_mode: str, steps: int, n_train: int, n_test: int, seed: int = 0,
        text: str = 'minilm', lr: float = 3e-3, prior_weight: float = 1.0, **model_kwargs) -> Dict[str, float]:
    """Train one model of the table from scratch and measure it; ``model_kwargs`` go to ``offline_config``."""
    torch.manual_seed(seed)
    model = VLModel(offline_config(text, top_down, prior_mode, **model_kwargs))
    model.text_encoder.requires_grad_(False)  # frozen: its outputs are computed once (TextBank)
    data = build_offline_data(model, n_train, n_test, seed)
    print(f'{name}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained parameters '
          f'(text encoder frozen), {steps} steps', flush=True)
    start = time.time()
    curve = train_offline(model, data, steps, seed=seed, lr=lr, prior_weight=prior_weight)
    train_s = time.time() - start
    start = time.time()
    result = evaluate_offline(model, data)
    result.update(train_s=train_s, eval_s=time.time() - start, first_loss=sum(curve['loss'][:20]) / 20,
                  last_loss=sum(curve['loss'][-20:]) / 20)
    print(f'  {result}', flush=True)
    return result


def table(results: Dict[str, Dict[str, float]]) -> str:
    cols = ['accuracy', 'mask_positive', 'mask_mean', 'region_mass', 'swap_answer_change', 'swap_score_drop',
            'train_s']
    lines = ['| model | test acc % | mask > 0 | mean mask | mass on named cell | answers changed by swap | '
             'acc drop by swap | train s |', '|---' * (len(cols) + 1) + '|']
    for name, r in results.items():
        cells = [f'{r[c]:.3f}' if c in r and c not in ('accuracy', 'train_s') else
                 (f'{r[c]:.1f}' if c in r else '-') for c in cols]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=5000)
    p.add_argument('--train-scenes', type=int, default=2000)
    p.add_argument('--test-scenes', type=int, default=500)
    p.add_argument('--text', default='minilm', choices=['minilm', 'tiny-roberta'])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--prior-weight', type=float, default=1.0, help='weight of the paper prior loss')
    p.add_argument('--hidden-size', type=int, default=16, help='width of the pooled features (the bottleneck)')
    p.add_argument('--patch-size', type=int, default=8)
    p.add_argument('--depth', type=int, default=2)
    p.add_argument('--width', type=int, default=32)
    p.add_argument('--only', nargs='*', default=None, help='names of RUNS to do (default: all)')
    p.add_argument('--out', default='output/vl_offline')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name, (top_down, mode) in RUNS.items():
        if args.only and name not in args.only:
            continue
        results[name] = run(name, top_down, mode, args.steps, args.train_scenes, args.test_scenes, text=args.text,
                            lr=args.lr, prior_weight=args.prior_weight, hidden_size=args.hidden_size,
                            patch_size=args.patch_size, depth=args.depth, width=args.width)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'args': vars(args), 'results': results}, f, indent=1)
    print(table(results))


if __name__ == '__main__':
    main()
