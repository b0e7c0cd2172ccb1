"""The command line of ``main.py``: its flags, ``--config`` files and the per-dataset recipes.

Precedence of settings: command line > ``--config FILE.yaml`` > the recipe of ``--data-set``
(``datasets/recipes.py``: the paper's ImageNet recipe for IMNET/FOLDER, a short CPU recipe for FMNIST)
> the parser's defaults. Importable without the training pipeline, so that the demos, benchmarks and
sub-projects parse settings exactly as ``main.py`` does (``parse_args([...])``).
"""
import argparse
import logging
import os
from typing import Any, Dict, Optional

import torch
import yaml
from timm.utils import ParseKwargs

import datasets
import losses
import models
import robustness
from datasets.recipes import RECIPE_KEYS, RECIPES
from errors import UserError
from misc import close_matches

_logger = logging.getLogger('absvit')

__all__ = ['AMP_DTYPES', 'get_args_parser', 'load_config', 'apply_recipe', 'parse_args', 'resolve_amp', 'scaled_lr']

#: ``--amp`` choices and their autocast dtypes.
AMP_DTYPES: Dict[str, Optional[torch.dtype]] = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_BY_RECIPE = '(default: per --data-set recipe)'


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser('AbSViT training and evaluation', add_help=True,
                                epilog='Settings: command line > --config file > the --data-set recipe > defaults. '
                                       'See docs/training.md.')
    p.add_argument('--config', default=None, metavar='FILE.yaml',
                   help='YAML file whose keys (flag names, - or _) set flags; the command line still wins')
    for add_flags in (_add_run_flags, _add_model_flags, _add_speed_flags, _add_ema_flags, _add_optimizer_flags,
                      _add_schedule_flags, _add_augmentation_flags, _add_data_flags, _add_prior_training_flags,
                      _add_distributed_flags):
        add_flags(p)
    robustness.add_args(p)
    return p


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Batch sizes, epochs, outputs, device, resume/eval, AMP, loader and logging."""
    g = p.add_argument_group('run')
    g.add_argument('--batch-size', type=int, default=None, help=f'per-process batch size {_BY_RECIPE}')
    g.add_argument('--eval-batch-size', type=int, default=None, help='per-process eval batch (default: 1.5 x batch)')
    g.add_argument('--epochs', type=int, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--output_dir', '--output-dir', dest='output_dir', default='output',
                   help="where log.txt, checkpoints and TensorBoard events go; '' saves nothing")
    g.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--resume', default='', help='continue training from this checkpoint (or evaluate it with --eval); '
                   "'auto': OUTPUT_DIR/checkpoint.pth if it exists (for preemptible jobs)")
    g.add_argument('--finetune', default='', help='initialise from these weights only: pos_embed resampled, '
                   'a classifier of another size dropped, missing top-down parts (prompt, decoders) initialised')
    g.add_argument('--eval', action='store_true', help='evaluate only (the --resume weights)')
    g.add_argument('--eval-ema', action='store_true', help="with --eval: evaluate the EMA weights, not 'model'")
    g.add_argument('--test-every', type=int, default=1, help='evaluate every N epochs (and after the last)')
    g.add_argument('--amp', default=None, choices=list(AMP_DTYPES),
                   help='autocast dtype (default: fp16 on CUDA for IMNET/FOLDER, none on CPU / FMNIST)')
    g.add_argument('--num_workers', '--num-workers', dest='num_workers', type=int, default=None,
                   help=f'data loader processes {_BY_RECIPE}')
    g.add_argument('--pin-mem', dest='pin_mem', action='store_true', default=True)
    g.add_argument('--no-pin-mem', dest='pin_mem', action='store_false')
    g.add_argument('--num-threads', type=int, default=None,
                   help='torch CPU threads per process (default: torch\'s; cores / processes under torchrun)')
    g.add_argument('--no-progress', dest='progress', action='store_false', default=True,
                   help='no progress bar')
    g.add_argument('--log-every', type=int, default=50,
                   help='TensorBoard step logging interval; on a GPU also how often the loss is read back to the '
                        'host and checked for NaN/inf (on CPU: every step)')


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """Which model, its input and regularisation, the variational loss weight."""
    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, help=f'timm model name {_BY_RECIPE}')
    g.add_argument('--td-mode', default=None, choices=list(models.TD_MODES),
                   help='top-down mode of AbS models (abs = AbSViT; others: the paper\'s comparisons)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help="more timm.create_model arguments, as timm's train.py takes them (e.g. patch_size=8 "
                        'depth=2); a YAML config gives a mapping. Recorded in the checkpoint\'s args')
    g.add_argument('--input-size', type=int, default=None, help='image size (default: the model\'s)')
    g.add_argument('--in-chans', type=int, default=None, help='image channels (default: the model\'s)')
    g.add_argument('--drop', type=float, default=0.0, help='dropout rate')
    g.add_argument('--drop-path', type=float, default=None, help=f'drop path rate {_BY_RECIPE}')
    g.add_argument('--var-loss', type=float, default=0.1, help='weight of the variational loss (top-down models)')
    g.add_argument('--pretrained', action='store_true',
                   help="start from timm's pretrained weights (multi-label heads: the backbone's ImageNet weights)")
    g.add_argument('--loss', default=None, choices=['ce', 'multilabel_soft_margin', 'asl'],
                   help='supervised loss: ce (class targets), multilabel_soft_margin (summed over the batch) or '
                        f'asl (asymmetric loss) for multi-hot targets {_BY_RECIPE}')
    g.add_argument('--asl-gamma-neg', type=float, default=4.0, help='--loss asl: focusing exponent of negatives')
    g.add_argument('--asl-gamma-pos', type=float, default=0.0, help='--loss asl: focusing exponent of positives')
    g.add_argument('--asl-clip', type=float, default=0.05, help='--loss asl: probability margin of negatives')
    g.add_argument('--find-unused-parameters', action='store_true', help='DDP option for models that need it')


def _add_speed_flags(p: argparse.ArgumentParser) -> None:
    """Options that change speed or memory, never the result."""
    g = p.add_argument_group('speed (each verified equal to the plain path in tests/test_fast_paths.py)')
    g.add_argument('--compile', action='store_true',
                   help='torch.compile the model (first steps are slow while it compiles; checkpoints are unchanged)')
    g.add_argument('--compile-backend', default='inductor', help='torch.compile backend')
    g.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune'")
    g.add_argument('--grad-checkpointing', action='store_true',
                   help='recompute block activations in backward: less memory, about 20%% more time')
    g.add_argument('--fused-opt', default='auto', choices=['auto', 'on', 'off'],
                   help='fused (single-kernel) Adam/AdamW step; auto: on for adam/adamw on CUDA')


def _add_ema_flags(p: argparse.ArgumentParser) -> None:
    """The model EMA."""
    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', dest='model_ema', action='store_true', default=None, help=f'keep an EMA {_BY_RECIPE}')
    g.add_argument('--no-model-ema', dest='model_ema', action='store_false')
    g.add_argument('--model-ema-decay', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--model-ema-force-cpu', action='store_true')
    g.add_argument('--model-ema-eval', action='store_true', help='also evaluate the EMA weights every epoch')
    g.add_argument('--early-stop', type=int, default=None,
                   help=f'stop after N evaluated epochs without a new best (0: never) {_BY_RECIPE}')


def _add_optimizer_flags(p: argparse.ArgumentParser) -> None:
    """Optimizer and learning rate (scaled linearly with the global batch)."""
    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default=None, help=f'timm optimizer name {_BY_RECIPE}')
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--opt-betas', type=float, nargs='+', default=None)
    g.add_argument('--clip-grad', type=float, default=None, help='max gradient norm (default: no clipping)')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--lr', type=float, default=None,
                   help=f'learning rate for a global batch of --lr-base-size images; scaled linearly {_BY_RECIPE}')
    g.add_argument('--lr-base-size', type=int, default=None, help=f'0: use --lr as is {_BY_RECIPE}')


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    """The learning-rate schedule."""
    g = p.add_argument_group('schedule')
    g.add_argument('--sched', default=None, help=f'timm scheduler name {_BY_RECIPE}')
    g.add_argument('--sched-on-updates', dest='sched_on_updates', action='store_true', default=None,
                   help=f'update the lr every step, not every epoch {_BY_RECIPE}')
    g.add_argument('--sched-on-epochs', dest='sched_on_updates', action='store_false')
    g.add_argument('--warmup-lr', type=float, default=None)
    g.add_argument('--min-lr', type=float, default=None)
    g.add_argument('--warmup-epochs', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--decay-epochs', type=float, default=30)
    g.add_argument('--decay-rate', type=float, default=0.1)
    g.add_argument('--onecycle-pct', type=float, default=0.2,
                   help="--sched onecycle: share of the updates spent rising to --lr (PyTorch's OneCycleLR pct_start)")


def _add_augmentation_flags(p: argparse.ArgumentParser) -> None:
    """Training augmentation, mixup/cutmix and repeated augmentation."""
    g = p.add_argument_group('augmentation')
    g.add_argument('--aa', default=None, help=f"timm auto-augment policy, 'none' for none {_BY_RECIPE}")
    g.add_argument('--color-jitter', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--smoothing', type=float, default=None, help=f'label smoothing {_BY_RECIPE}')
    g.add_argument('--train-interpolation', default='bicubic')
    g.add_argument('--train-crop', default=None, choices=['rrc', 'pad'],
                   help=f'rrc: RandomResizedCrop; pad: random crop with --crop-padding {_BY_RECIPE}')
    g.add_argument('--crop-padding', type=int, default=None)
    g.add_argument('--scale', type=float, nargs=2, default=None, help='RandomResizedCrop scale (default 0.08 1)')
    g.add_argument('--ratio', type=float, nargs=2, default=None)
    g.add_argument('--hflip', type=float, default=None)
    g.add_argument('--cutout', type=float, default=None,
                   help='multi-label sets: one cutout hole of this fraction of the side, random colour (0: none) '
                        f'{_BY_RECIPE}')
    g.add_argument('--repeated-aug', dest='repeated_aug', action='store_true', default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--no-repeated-aug', dest='repeated_aug', action='store_false')
    g.add_argument('--aug-repeats', type=int, default=3)
    g.add_argument('--reprob', type=float, default=None, help=f'random erasing probability {_BY_RECIPE}')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--mixup', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--cutmix', type=float, default=None, help=f'{_BY_RECIPE}')
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """Dataset, data path, subsets and normalisation."""
    g = p.add_argument_group('data')
    g.add_argument('--data-set', default='FMNIST', choices=list(datasets.DATASETS))
    g.add_argument('--data-path', default=None,
                   help=f'dataset folder (FMNIST default: {datasets.default_data_path("FMNIST")})')
    g.add_argument('--train-limit', type=int, default=None, help='use only the first N training samples')
    g.add_argument('--val-limit', type=int, default=None, help='use only the first N evaluation samples')
    g.add_argument('--mean', type=float, nargs='+', default=None, help='(default: recipe, else the model\'s)')
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--crop-pct', type=float, default=None)
    g.add_argument('--interpolation', default=None, help='eval resize interpolation (default: the model\'s)')


def _add_prior_training_flags(p: argparse.ArgumentParser) -> None:
    """Prior-conditioned training: multi-object composites with class priors (``datasets/composites.py``)."""
    g = p.add_argument_group('prior-conditioned training (top-down models; see docs/training.md)')
    g.add_argument('--composite-prob', type=float, default=0.0,
                   help='share of training samples made multi-object composites (0: off, ordinary training)')
    g.add_argument('--composite-items', type=int, nargs='+', default=[2, 3],
                   help='items per composite, drawn uniformly from these counts')
    g.add_argument('--composite-grid', type=int, default=2,
                   help='composites are a G x G grid of cells of (input size / G) pixels, one item per cell')
    g.add_argument('--present-prior-prob', type=float, default=0.5,
                   help='share of composites whose prior names a present item (target: that item)')
    g.add_argument('--absent-prior-prob', type=float, default=0.3,
                   help='share of composites whose prior names an absent class (target: the items present); '
                        'the rest take the learned prompt (target: the items present)')
    g.add_argument('--absent-target', default='any', choices=list(losses.ABSENT_TARGETS),
                   help='what a composite with an absent-class prior is trained towards: any of its items '
                        '(naming any item present is right; losses.PriorTargetLoss) or their soft label (1/k each)')
    g.add_argument('--prior-source', default='classifier', choices=['classifier', 'table'],
                   help="a class's prior: its classifier row (class prototype) or its row of a learned "
                        'class-embedding table (the model parameter prior_table)')


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """torchrun/DDP settings."""
    g = p.add_argument_group('distributed (torchrun sets the environment)')
    g.add_argument('--dist-url', default='env://')
    g.add_argument('--dist-backend', default=None, help='default: nccl on CUDA, gloo on CPU')
    g.add_argument('--dist-timeout', type=float, default=30, help='minutes')
    g.add_argument('--sync-bn', action='store_true',
                   help='under DDP: synchronise BatchNorm statistics across processes')
    g.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------------------
# Config files and recipes.

#: what ``main.py`` adds to the settings it records in OUTPUT/args.yaml (the process group, the scaled lr, the
#: recipe's name): worked out again when that file is given back as ``--config``
RUN_RECORD_KEYS = frozenset({'distributed', 'lr_effective', 'rank', 'recipe', 'world_size'})


def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a YAML mapping of flag names (``batch_size`` or ``batch-size``) to values, each checked as the
    command line would check it (choices, type; switches take true/false). Every entry point with a
    ``--config`` reads its file through this."""
    if not os.path.isfile(path):
        raise UserError(f'config file not found: {path}')
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f'cannot parse config file {path}: {e}') from None
    if not isinstance(cfg, dict):
        raise UserError(f'config file {path} must be a mapping of flag names to values, got {type(cfg).__name__}')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    for a in parser._actions:  # also accept any option string, e.g. output-dir
        for s in a.option_strings:
            actions.setdefault(s.lstrip('-').replace('-', '_'), a)
    out = {}
    derived = sorted(k for k in cfg if k in RUN_RECORD_KEYS)
    if derived:  # an args.yaml a run wrote: what it worked out for itself is worked out again
        _logger.info(f'config file {path}: {", ".join(derived)} are what a run records, not settings: recomputed')
    for key, value in cfg.items():
        if key in RUN_RECORD_KEYS:
            continue
        a = actions.get(str(key).replace('-', '_'))
        if a is None or a.dest == argparse.SUPPRESS:
            near = close_matches(str(key).replace('-', '_'), actions)
            raise UserError(f"config file {path}: unknown key '{key}'"
                            + (f"; did you mean {', '.join(near)}?" if near else '')
                            + f' (keys are flag names, see python {parser.prog} --help)')
        out[a.dest] = _config_value(path, key, a, value)
    return out


#: argparse actions that take no value: in a config file they are true or false
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def _config_value(path: str, key, action: argparse.Action, value):
    """``value`` as the command line would give it for ``action``, or one error naming the key."""
    where = f'config file {path}: {key}'
    if value is None:
        return value
    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool):
            raise UserError(f'{where}: {value!r} is not true or false')
        return value
    if action.nargs not in (None, '?', 0) and isinstance(value, (list, tuple)):  # a flag of several values
        return [_one_value(where, action, v) for v in value]
    return _one_value(where, action, value)


def _one_value(where: str, action: argparse.Action, value):
    if action.type in (int, float) and not isinstance(value, str):
        exact = isinstance(value, (int, float)) and not isinstance(value, bool) and action.type(value) == value
        if not exact:
            raise UserError(f'{where}: {value!r} is not {"an integer" if action.type is int else "a number"}')
        value = action.type(value)
    if isinstance(value, str) and action.type is not None and action.type is not str:
        try:
            value = action.type(value)
        except (TypeError, ValueError) as e:
            raise UserError(f'{where}: {e}') from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f'{where}: {value!r} is not one of {list(action.choices)}')
    return value


def apply_recipe(args) -> argparse.Namespace:
    """Fill every recipe flag left at None from the recipe of ``args.data_set``."""
    defaults = datasets.recipe(args.data_set)
    for key in RECIPE_KEYS:
        if key == 'amp':  # settled by resolve_amp() once the device is known
            continue
        if getattr(args, key, None) is None:
            setattr(args, key, defaults[key])
    if not args.data_path:
        args.data_path = datasets.default_data_path(args.data_set)
    args.recipe = args.data_set
    return args


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    args = parser.parse_args(argv)
    return apply_recipe(args)


def scaled_lr(args, global_batch: int) -> float:
    """The learning rate at ``global_batch``: ``--lr`` is given per ``--lr-base-size`` images (DeiT's linear
    scaling rule), or used as it is when the base size is 0."""
    return args.lr * global_batch / args.lr_base_size if args.lr_base_size > 0 else args.lr


def resolve_amp(args, device: torch.device) -> Optional[torch.dtype]:
    """Settle ``args.amp`` once the device is known (the recipe's AMP is for CUDA; CPU runs in float32
    unless ``--amp`` says otherwise) and return its autocast dtype."""
    if args.amp is None:
        args.amp = RECIPES[args.data_set]['amp'] if device.type == 'cuda' else 'none'
    return AMP_DTYPES[args.amp]
