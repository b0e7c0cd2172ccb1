"""Robustness evaluation: ImageNet-C (mCE), ImageNet-A/R/Sketch, FGSM/PGD, and ImageNet-C corruptions made
on the fly for any dataset. Reached from ``main.py --eval`` (see ``docs/robustness.md``).

``add_args(parser)`` adds the flags, ``requested(args)`` says whether any evaluation was asked for, and
``run(args, model, device, output_dir, amp_dtype=..., make_loader=..., evaluate=...)`` runs them all and
writes ``robustness.json``, ``robustness.md`` and ``robustness_severity.png`` into ``output_dir``. The caller
resolves the pieces (the model, its device and autocast dtype, how a dataset becomes a loader, the
evaluation function); ``args`` only carries this package's flags and the data settings (``mean``, ``std``,
``input_size``, ...) that the benchmark datasets are built with.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Callable, Dict

from errors import UserError

from . import benchmarks

_logger = logging.getLogger('absvit.robustness')


def path_flags() -> tuple:
    """The ``args`` attributes of the benchmark folders: ImageNet-C's, then one per folder benchmark row."""
    return ('inc_path',) + tuple(b.dest for b in benchmarks.rows())


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add this package's flags; those of the folder benchmarks come from their rows, read now."""
    g = parser.add_argument_group('robustness (with --eval; see docs/robustness.md)')
    g.add_argument('--inc_path', '--inc-path', default=None, metavar='DIR',
                   help='ImageNet-C: DIR/<corruption>/<severity 1..5>/<wnid>/*.JPEG; reports top-1, CE and mCE')
    g.add_argument('--inc_corruption', '--inc-corruption', default=None, metavar='NAMES',
                   help='ImageNet-C corruptions to evaluate (comma-separated, all, extra, all+extra); '
                        'default: every corruption folder present')
    for bench in benchmarks.rows():
        g.add_argument(*bench.flags, default=None, metavar='DIR', help=bench.help)
    g.add_argument('--fgsm_test', '--fgsm-test', action='store_true',
                   help='FGSM on the val set: one step of eps (default 1/255) in pixel space')
    g.add_argument('--pgd_test', '--pgd-test', action='store_true',
                   help='PGD on the val set: eps 1/255, 5 steps of 0.5/255, random start')
    g.add_argument('--attack_eps', '--attack-eps', type=float, default=1.0, metavar='E',
                   help='FGSM/PGD L-inf radius in units of 1/255 (default 1)')
    g.add_argument('--pgd_steps', '--pgd-steps', type=int, default=5)
    g.add_argument('--pgd_step_size', '--pgd-step-size', type=float, default=0.5, metavar='A',
                   help='PGD step in units of 1/255 (default 0.5)')
    g.add_argument('--corruption', default=None, metavar='NAME|all',
                   help='corrupt the val set on the fly: a name, a comma-separated list, all (the 15), '
                        'extra (the 4 held-out ones) or all+extra')
    g.add_argument('--severity', default='all', metavar='S|all',
                   help='severities for --corruption and --inc_path: 1..5, comma-separated, or all (default)')
    g.add_argument('--corruption_profile', '--corruption-profile', default='auto',
                   choices=('auto', 'cifar', 'tiny', 'imagenet'),
                   help='parameter table of the on-the-fly corruptions (auto: by image size)')
    g.add_argument('--robust_seed', '--robust-seed', type=int, default=0,
                   help='seed of the on-the-fly corruptions and of the PGD random start')
    g.add_argument('--robust_wnids', '--robust-wnids', default=None, metavar='FILE',
                   help='wnid of each model output, one per line (default: the 1000 ImageNet-1k wnids)')
    g.add_argument('--robust_limit', '--robust-limit', type=int, default=None, metavar='N',
                   help='evaluate only N evenly spaced images of each benchmark folder (quick checks)')
    g.add_argument('--robust_no_clean', '--robust-no-clean', action='store_true',
                   help='skip the clean val accuracy in the robustness report')
    return parser


def requested(args) -> bool:
    """True when any robustness evaluation was asked for."""
    return bool(any(getattr(args, k, None) for k in path_flags()) or getattr(args, 'fgsm_test', False)
                or getattr(args, 'pgd_test', False) or getattr(args, 'corruption', None))


def run(args, model, device, output_dir, *, amp_dtype, make_loader: Callable, evaluate: Callable,
        is_main: bool = True) -> Dict:
    """Run every requested evaluation; write the report into ``output_dir`` (on the main process; ``None``:
    nowhere); return it as a dict.

    ``amp_dtype``: autocast dtype or None; ``make_loader(dataset)``: the evaluation loader (this process's
    shard under torchrun); ``evaluate(loader, model, device, amp_dtype=, desc=, class_mask=, attack=)``:
    ``engine.evaluate``'s signature, returning ``acc1``, ``n``, ...
    """
    from . import report as report_mod   # here, not at the top: the parser's add_args stays light
    from .runner import Runner, execute, plan

    start = time.time()
    try:
        p = plan(args, model)
    except ValueError as err:   # bad --corruption / --severity values
        raise UserError(str(err)) from None
    runner = Runner(args, model, device, amp_dtype=amp_dtype, make_loader=make_loader, evaluate=evaluate)
    rep = execute(p, args, runner)
    rep['timings']['total'] = round(time.time() - start, 2)
    if output_dir is None:
        _logger.warning('no output directory: the robustness report is not written to disk')
    elif is_main:
        paths = report_mod.write(rep, str(output_dir))
        _logger.info('robustness report: %s', ', '.join(paths.values()))
    return rep
