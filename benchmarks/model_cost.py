"""Cost report: parameters and GMACs of every registered model, next to its bottom-up twin and the papers.

    python benchmarks/model_cost.py                 # every model of the project + timm's ViT baselines
    python benchmarks/model_cost.py --models 'absvit_*' --no-train --out cost.md

Models are discovered in timm's registry (every entrypoint defined under this project's ``models``
package, plus ``vit_{tiny,small,base}_patch16_224``), so a newly registered model appears without
editing this file. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions, attention; GMACs = FLOPs / 2), counted on the ``meta`` device (no memory, no time)
with a CPU fallback, at batch 1 and each model's default input size:

* ``inference``: ``model.eval(); model(x)`` -- for a top-down model the final logits only (no
  variational-loss work);
* ``train``: one forward + backward of the training objective per image (``losses.py``; both
  passes' CE + 0.1 x variational loss for top-down models).

``ratio`` is a model's inference GMACs over its bottom-up twin's (AbSViT -> ViT, AbSDAT -> DAT);
the target for AbSViT is <= 2.2. Extra rows: AbSViT-S in every comparison mode (``td_mode``, the
paper's Tables 3/5/6) and the naive reference implementation (what the reference release computes).
"""
import argparse
import fnmatch
import sys
import time
from pathlib import Path

from benchmarks.common import (NAIVE_PREFIX, all_model_names, count_model_flops, format_machine,
                               machine_info, markdown_table, twin_of)
from benchmarks.throughput import is_top_down_vit  # the AbSViTs the target is about, by their records
from models import TD_MODES

#: Target of issue 2: inference GMACs of each AbSViT <= 2.2 x its ViT.
RATIO_TARGET = 2.2

#: Parameter counts of the reference release (issue 2); the project must match them exactly.
RELEASE_PARAMS = {
    'absvit_tiny_patch16_224': 6_602_344,
    'absvit_small_patch16_224': 25_589_992,
    'absvit_base_patch16_224': 100_724_200,
    'vit_tiny_patch16_224': 5_717_416,
}

#: Published figures: (params in M, GMACs ("FLOPs" in the papers' convention), ImageNet top-1, source).
#: AbSViT paper (Shi, Darrell, Wang, CVPR 2023, arXiv 2303.13043), Table 2: params and FLOPs of ViT, RVT and
#: FAN and their AbS versions (FAN-B's top-1 83.5 / 83.7 too); the ViT/AbSViT top-1 figures are those the
#: official release lists for its checkpoints (github.com/bfshi/AbSViT README).
#: DAT++ (Xia et al., arXiv 2309.01430): DAT-T++ / S++ / B++ at 224, B++ at 384.
PAPER = {  # AbSViT Table 2 gives params (M) and GFLOPs (multiply-adds); top-1 from the AbSViT release
    'vit_tiny_patch16_224': (6, 1.3, 72.5, 'AbSViT Table 2 / release'),
    'absvit_tiny_patch16_224': (7, 2.6, 74.1, 'AbSViT Table 2 / release'),
    'vit_small_patch16_224': (22, 4.2, 80.1, 'AbSViT Table 2 / release'),
    'absvit_small_patch16_224': (26, 9.8, 80.7, 'AbSViT Table 2 / release'),
    'vit_base_patch16_224': (87, 17.2, 80.8, 'AbSViT Table 2 / release'),
    'absvit_base_patch16_224': (99, 38.9, 81.0, 'AbSViT Table 2 / release'),
    'rvt_tiny': (9, 1.3, None, 'AbSViT Table 2'), 'absrvt_tiny': (11, 2.7, None, 'AbSViT Table 2'),
    'rvt_small': (22, 4.3, None, 'AbSViT Table 2'), 'absrvt_small': (26, 10.4, None, 'AbSViT Table 2'),
    'rvt_base': (86, 17.7, None, 'AbSViT Table 2'), 'absrvt_base': (100, 39.5, None, 'AbSViT Table 2'),
    'fan_tiny_12_p16_224': (7, 1.3, None, 'AbSViT Table 2'), 'absfan_tiny_12_p16_224': (9, 2.9, None, 'AbSViT Table 2'),
    'fan_small_12_p16_224': (28, 5.3, None, 'AbSViT Table 2'),
    'absfan_small_12_p16_224': (32, 11.4, None, 'AbSViT Table 2'),
    'fan_base_18_p16_224': (54, 10.4, 83.5, 'AbSViT Table 2'), 'absfan_base_18_p16_224': (62, 21.8, 83.7, 'AbSViT Table 2'),
    'dat_tiny': (24, 4.3, None, 'DAT++'),
    'dat_small': (53, 9.4, None, 'DAT++'),
    'dat_base': (93, 16.6, None, 'DAT++'),
    'dat_base_384': (93, 49.7, None, 'DAT++'),
}

MODE_MODEL = 'absvit_small_patch16_224'
NAIVE_MODELS = ('absvit_tiny_patch16_224', 'absvit_small_patch16_224', 'absvit_base_patch16_224')


def _fmt(v, spec):
    return 'n/a' if v is None else format(v, spec)


def measure(entries, train: bool = True, log=print):
    """entries: (label, model name, kwargs). Returns a dict label -> figures."""
    results = {}
    for label, name, kwargs in entries:
        t0 = time.perf_counter()
        flops, params, size = count_model_flops(name, **kwargs)
        train_flops = count_model_flops(name, train=True, **kwargs)[0] if train else None
        results[label] = dict(name=name, params=params, gmacs=flops / 2e9, size=size,
                              train_gmacs=None if train_flops is None else train_flops / 2e9)
        log(f'  {label}: {params:,} params, {flops / 2e9:.3f} GMACs ({time.perf_counter() - t0:.1f}s)')
    return results


def build_entries(patterns=None, modes: bool = True, naive: bool = True):
    names = all_model_names()
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    entries = [(n, n, {}) for n in names]
    if modes and MODE_MODEL in names:
        entries += [(f'{MODE_MODEL} (td_mode={m})', MODE_MODEL, {'td_mode': m}) for m in TD_MODES if m != 'abs']
    if naive:
        entries += [(NAIVE_PREFIX + n, NAIVE_PREFIX + n, {}) for n in NAIVE_MODELS if n in names]
    return entries



def report(results, known) -> str:
    """The markdown table, rows grouped by bottom-up model (twin first, then its top-down models,
    in the order they were measured)."""
    order = {label: i for i, label in enumerate(results)}

    def group(label):
        r = results[label]
        twin = twin_of(r['name'], known)
        base = twin if twin in results else label
        return (results[base]['gmacs'], base, label != base, order[label])

    rows = []
    for label in sorted(results, key=group):
        r = results[label]
        twin = twin_of(r['name'], known)
        ratio = r['gmacs'] / results[twin]['gmacs'] if twin in results else None
        target = ''
        if ratio is not None and is_top_down_vit(r['name']) and 'td_mode' not in label:
            target = 'ok' if ratio <= RATIO_TARGET else f'OVER {RATIO_TARGET}'
        expected = RELEASE_PARAMS.get(label)
        check = '' if expected is None else ('= release' if expected == r['params'] else f'release: {expected:,}')
        p_params, p_gmacs, p_top1, src = PAPER.get(label, (None, None, None, ''))
        paper = ['', '', '', ''] if not src else [_fmt(p_params, 'g'), _fmt(p_gmacs, 'g'), _fmt(p_top1, '.1f'), src]
        rows.append([f'`{label}`', f'{r["size"][1]}x{r["size"][2]}', f'{r["params"]:,}', check,
                     f'{r["gmacs"]:.3f}', _fmt(r['train_gmacs'], '.2f'),
                     f'`{twin}`' if twin in results else '', '' if ratio is None else f'{ratio:.3f}', target,
                     *paper])
    header = ['model', 'input', 'params', 'params check', 'inference GMACs', 'train GMACs/img',
              'bottom-up twin', 'GMACs / twin', f'target <= {RATIO_TARGET}',
              'paper params (M)', 'paper GMACs', 'IN-1k top-1', 'source']
    return markdown_table(header, rows, align='llrlrrlrlrrrl')


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='*', help='fnmatch patterns of model names (default: all)')
    ap.add_argument('--no-train', action='store_true', help='skip the training FLOPs column')
    ap.add_argument('--no-modes', action='store_true', help='skip the AbSViT-S comparison-mode rows')
    ap.add_argument('--no-naive', action='store_true', help='skip the naive-reference rows')
    ap.add_argument('--out', help='also write the report (markdown) to this file')
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    known = all_model_names()
    entries = build_entries(args.models, modes=not args.no_modes, naive=not args.no_naive)
    print(f'counting {len(entries)} models ...', file=sys.stderr)
    results = measure(entries, train=not args.no_train, log=lambda s: print(s, file=sys.stderr))
    text = '\n'.join([
        '## Model cost (batch 1, default input size, FlopCounterMode; GMACs = FLOPs / 2)', '',
        format_machine(machine_info()), '',
        report(results, known), '',
        f'_{len(results)} rows in {time.perf_counter() - t0:.0f}s. `naive:` = the naive reference '
        '(benchmarks/naive_absvit.py: what the reference release computes, full qkv of td and the '
        'variational loss in every forward). Published figures: params/FLOPs of ViT, RVT, FAN and their AbS '
        'versions from the AbSViT paper\'s Table 2, AbSViT/ViT top-1 from the official release '
        '(github.com/bfshi/AbSViT); DAT++: Xia et al., arXiv 2309.01430 (FLOPs there = GMACs here)._',
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')
    return text


if __name__ == '__main__':
    main()
