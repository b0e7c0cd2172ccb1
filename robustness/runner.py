"""Run every robustness evaluation asked for on the command line and assemble the report.

``plan(args, model)`` checks the flags and every folder first (a mis-laid folder fails in seconds, not after
hours of evaluation); ``execute`` then evaluates each item with the ``Runner``'s pieces, which the caller
resolved: the model, its device and autocast dtype, a loader factory and the evaluation function
(``engine.evaluate`` from ``main.py``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Subset
from torchvision import transforms

import datasets
from datasets.transforms import ConvertMode, fit_channels, input_hw
from errors import UserError

from . import benchmarks, folders, wnids
from .attacks import FGSM, PGD
from .corruptions import Corruption, missing_requirement, parse_corruptions, parse_severities
from .metrics import summarise

_logger = logging.getLogger('absvit.robustness')


@dataclass
class Plan:
    """What to evaluate, checked: folders exist in the right layout and their classes are model outputs."""
    clean: bool = True
    corruptions: Sequence[str] = ()               # on the fly, on the val split
    severities: Sequence[int] = (1, 2, 3, 4, 5)
    inc_root: Optional[str] = None
    imagenet_c: Dict[str, Dict[int, str]] = field(default_factory=dict)   # corruption -> severity -> folder
    model_wnids: Optional[Sequence[str]] = None
    folders: Dict[str, str] = field(default_factory=dict)                 # folder benchmark key -> root
    classes: Dict[str, List[str]] = field(default_factory=dict)           # folder benchmark key -> label order
    fgsm: bool = False
    pgd: bool = False


def _num_outputs(model) -> Optional[int]:
    net = getattr(model, 'module', model)
    n = getattr(net, 'num_classes', None)
    return int(n) if isinstance(n, int) else None


def _model_wnids(args, model) -> List[str]:
    path = getattr(args, 'robust_wnids', None)
    names = wnids.read_wnids(path) if path else list(wnids.wnids('imagenet'))
    n = _num_outputs(model)
    if n is not None and n != len(names):
        src = path or 'the ImageNet-1k list'
        flags = '/'.join(['--inc_path'] + [b.flag for b in benchmarks.rows()])
        raise folders.LayoutError(
            f'ImageNet benchmarks ({flags}) need the wnid of every model '
            f'output: the model has {n} outputs but {src} has {len(names)} wnids. Evaluate an ImageNet-1k model, '
            'or pass --robust_wnids FILE with one wnid per output column.')
    return names


def _check_classes(folder: str, allowed: Sequence[str], flag: str, what: str) -> None:
    unknown = [c for c in folders.check_class_folders(folder, flag) if c not in set(allowed)]
    if unknown:
        raise folders.LayoutError(f'{flag}: class folder(s) {", ".join(unknown[:5])} of {folder} are not among '
                                  f'the {len(allowed)} {what}.')


def _subset_classes(bench: benchmarks.FolderBenchmark, model_wnids: Sequence[str]) -> List[str]:
    """The label order of a benchmark with a class subset (ImageNet-A/R): its wnids that are model outputs
    (all 200 for a 1k model)."""
    subset = wnids.wnids(bench.key)
    kept = [w for w in subset if w in set(model_wnids)]
    if not kept:
        raise folders.LayoutError(f'{bench.flag}: none of the {len(subset)} {bench.key} classes is among the '
                                  'model\'s classes.')
    if len(kept) < len(subset):
        _logger.warning('%s: only %d of its %d classes are model outputs; the logits are restricted to those',
                        bench.key, len(kept), len(subset))
    return kept


def _benchmark_classes(bench: benchmarks.FolderBenchmark, model_wnids: Sequence[str]) -> List[str]:
    """The label order of a folder benchmark: its subset's model classes, or every model class."""
    return list(model_wnids) if bench.subset is None else _subset_classes(bench, model_wnids)


def plan(args, model) -> Plan:
    """Parse the flags and check every folder (fails in seconds, before any evaluation)."""
    p = Plan(clean=not getattr(args, 'robust_no_clean', False),
             severities=parse_severities(getattr(args, 'severity', 'all')),
             corruptions=parse_corruptions(getattr(args, 'corruption', None)),
             fgsm=bool(getattr(args, 'fgsm_test', False)), pgd=bool(getattr(args, 'pgd_test', False)))
    why = missing_requirement(p.corruptions)
    if why is not None:
        raise UserError(f'--corruption {why}')
    inc = getattr(args, 'inc_path', None)
    if getattr(args, 'inc_corruption', None) and not inc:
        raise UserError('--inc_corruption selects ImageNet-C folders: it needs --inc_path '
                          '(--corruption corrupts the val split on the fly)')
    roots = {bench: getattr(args, bench.dest, None) for bench in benchmarks.rows()}
    if inc or any(roots.values()):
        p.model_wnids = _model_wnids(args, model)
    if inc:
        p.inc_root = inc
        p.imagenet_c = folders.imagenet_c_plan(inc, parse_corruptions(getattr(args, 'inc_corruption', None)) or None,
                                               p.severities)
        for by_sev in p.imagenet_c.values():
            for folder in by_sev.values():
                _check_classes(folder, p.model_wnids, '--inc_path', 'model classes')
    for bench, root in roots.items():
        if root:
            folders.class_folder_root(root, bench.flag)
            p.classes[bench.key] = _benchmark_classes(bench, p.model_wnids)
            _check_classes(root, p.classes[bench.key], bench.flag, f'{bench.key} classes the model can output')
            p.folders[bench.key] = root
    return p


# ---------------------------------------------------------------------------------------------------------

def _limit(dataset, n: Optional[int]):
    """Evenly spaced ``n`` samples (all classes of a sorted ImageFolder stay represented)."""
    if not n or n >= len(dataset):
        return dataset
    idx = np.linspace(0, len(dataset) - 1, int(n)).round().astype(int)
    return Subset(dataset, sorted(set(idx.tolist())))


def _crop_only_transform(args):
    """ImageNet-C's images are 224 x 224 crops already: centre crop to the input size, no resize."""
    in_chans = int(getattr(args, 'in_chans', 3))
    normalize = transforms.Normalize(fit_channels(args.mean, in_chans), fit_channels(args.std, in_chans))
    return transforms.Compose([ConvertMode(in_chans), transforms.CenterCrop(input_hw(args)), transforms.ToTensor(),
                               normalize])


class Runner:
    """Builds the benchmark datasets from the data settings in ``args`` and evaluates them with the pieces
    the caller resolved: ``make_loader(dataset)`` and ``evaluate(loader, model, device, amp_dtype=, desc=,
    **kw)`` (``engine.evaluate``'s signature)."""

    def __init__(self, args, model, device, *, amp_dtype: Optional[torch.dtype], make_loader: Callable,
                 evaluate: Callable):
        self.args, self.model, self.device, self.amp = args, model, device, amp_dtype
        self.make_loader, self.evaluate_fn = make_loader, evaluate
        self.limit = getattr(args, 'robust_limit', None)

    def evaluate(self, dataset, desc, **kw) -> Dict:
        stats = self.evaluate_fn(self.make_loader(dataset), self.model, self.device, amp_dtype=self.amp, desc=desc,
                                 **kw)
        _logger.info('%s: top-1 %.2f%% (n=%d)', desc, stats['acc1'], stats['n'])
        return stats

    def val(self, corruption=None):
        dataset, _ = datasets.build_dataset(False, self.args, corruption=corruption)
        return dataset

    def folder(self, root, index, flag, crop_only=False):
        if crop_only:
            ds = datasets.SafeImageFolder(root, transform=_crop_only_transform(self.args), what=f'{flag} {root}')
        else:
            ds = datasets.build_folder_dataset(root, self.args)
        folders.remap_targets(ds, index, flag, root)
        return _limit(ds, self.limit)


def _timed(timings: Dict[str, float], key: str, fn):
    t0 = time.time()
    out = fn()
    timings[key] = round(time.time() - t0, 2)
    return out


def _corruption_section(source: str, acc: Dict) -> Dict:
    return {'source': source, 'accuracy': acc, 'summary': summarise(_int_keys(acc))}


def on_the_fly(r: Runner, p: Plan, seed: int, profile: str) -> Dict:
    acc = {}
    for c in p.corruptions:
        acc[c] = {str(s): r.evaluate(r.val(Corruption(c, s, seed=seed, profile=profile)), f'{c} s{s}')['acc1']
                  for s in p.severities}
    return acc


def imagenet_c(r: Runner, p: Plan) -> Dict:
    index = {w: i for i, w in enumerate(p.model_wnids)}
    return {c: {str(s): r.evaluate(r.folder(folder, index, '--inc_path', crop_only=True), f'IN-C {c} s{s}')['acc1']
                for s, folder in by_sev.items()}
            for c, by_sev in p.imagenet_c.items()}


def class_folder(r: Runner, p: Plan, bench: benchmarks.FolderBenchmark) -> Dict:
    """Top-1 on one folder benchmark; with a class subset the logits are restricted to its columns."""
    classes = p.classes[bench.key]
    index = {w: i for i, w in enumerate(classes)}
    mask = None if bench.subset is None else wnids.class_mask(classes, p.model_wnids)
    stats = r.evaluate(r.folder(p.folders[bench.key], index, bench.flag), bench.key, class_mask=mask)
    return {'source': p.folders[bench.key], 'classes': len(classes), **stats}


def execute(p: Plan, args, r: Runner) -> Dict:
    """Evaluate everything in ``p`` with ``r``; returns the report (see ``robustness.report``)."""
    seed = int(getattr(args, 'robust_seed', 0) or 0)
    profile = getattr(args, 'corruption_profile', 'auto') or 'auto'
    data = getattr(args, 'data_set', None) or 'val'
    report: Dict = {'meta': {'model': getattr(args, 'model', None), 'checkpoint': getattr(args, 'resume', None),
                             'data_set': data, 'seed': seed, 'amp': str(r.amp)}}
    t: Dict[str, float] = {}
    if p.clean:
        report['clean'] = {'source': f'{data} val', **_timed(t, 'clean', lambda: r.evaluate(r.val(), 'clean'))}
    if p.corruptions:
        acc = _timed(t, 'corruptions', lambda: on_the_fly(r, p, seed, profile))
        report['corruptions'] = _corruption_section(f'{data} val corrupted on the fly (profile {profile}, seed {seed})',
                                                    acc)
    if p.imagenet_c:
        report['imagenet_c'] = _corruption_section(p.inc_root, _timed(t, 'imagenet_c', lambda: imagenet_c(r, p)))
    for bench in benchmarks.rows():
        if bench.key in p.folders:
            report[bench.key] = _timed(t, bench.key, lambda: class_folder(r, p, bench))
    mean, std = _norm(args)
    eps = _eps(args, 'attack_eps', 1.0)
    attacks = []
    if p.fgsm:
        attacks.append(('fgsm', FGSM(mean, std, eps=eps, amp_dtype=r.amp)))
    if p.pgd:
        attacks.append(('pgd', PGD(mean, std, eps=eps, step=_eps(args, 'pgd_step_size', 0.5),
                                   steps=int(getattr(args, 'pgd_steps', 5)), seed=seed, amp_dtype=r.amp)))
    for key, atk in attacks:
        report[key] = {'attack': repr(atk), **_timed(t, key, lambda: r.evaluate(r.val(), key.upper(), attack=atk))}
    report['timings'] = t
    return report


def _eps(args, name, default) -> float:
    return float(getattr(args, name, default) or default) / 255.0


def _norm(args):
    in_chans = int(getattr(args, 'in_chans', 3))
    return fit_channels(args.mean, in_chans), fit_channels(args.std, in_chans)


def _int_keys(acc):
    return {c: {int(s): a for s, a in by.items()} for c, by in acc.items()}
