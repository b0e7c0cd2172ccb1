"""Train and evaluate AbSViT and its baselines (one entry point, DeiT/timm-style flags).

    python main.py                                   # the default job: AbSViT-micro on Fashion-MNIST, CPU
    python main.py --config configs/imagenet_absvit_small.yaml --data-path /data/imagenet
    torchrun --nproc_per_node=8 main.py --data-set IMNET --model absvit_small_patch16_224 --data-path ...
    python main.py --eval --resume absvit_small.pth --model absvit_small_patch16_224 --data-set IMNET ...

Precedence of settings: command line > ``--config FILE.yaml`` > the recipe of ``--data-set``
(``RECIPES`` below: the paper's ImageNet recipe for IMNET/FOLDER, a short CPU recipe for FMNIST)
> the parser's defaults.
"""
import os
import time

# Before torch loads OpenMP: on a CPU that other programs keep busy, idle OpenMP threads must sleep rather than
# spin, or they take the cores the working threads need (the default job ran 3-10x slower on 2 busy cores). On a
# quiet machine spinning is faster (by about 30% for the default job), so it stays. OMP_WAIT_POLICY in the environment
# always wins.


def _busy_fraction(before: str, after: str) -> float:
    """Share of the CPU not idle between two readings of the first line of /proc/stat."""
    t0, t1 = ([int(v) for v in line.split()[1:]] for line in (before, after))
    total = sum(t1) - sum(t0)
    idle = (t1[3] + t1[4]) - (t0[3] + t0[4])  # idle + iowait
    return 1.0 - idle / total if total > 0 else 0.0


def _cpu_busy(interval: float = 0.25, threshold: float = 0.25) -> bool:
    """Whether more than ``threshold`` of the CPU is in use right now (Linux; elsewhere False)."""
    def read() -> str:
        with open('/proc/stat') as f:
            return f.readline()
    try:
        before = read()
        time.sleep(interval)
        return _busy_fraction(before, read()) > threshold
    except (OSError, ValueError, IndexError):
        return False


_BUSY_CPU = 'OMP_WAIT_POLICY' not in os.environ and __name__ == '__main__' and _cpu_busy()
if _BUSY_CPU:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn as nn
import yaml

import timm
from timm.data import Mixup, resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import datasets
import engine
import losses
import misc
import models
import robustness
from misc import NonFiniteLossError, UserError
from models import CheckpointError

_logger = logging.getLogger('absvit')

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

#: Per-dataset defaults of the flags whose parser default is None. IMNET is the paper's recipe
#: (Appendix C / the release's main.py, i.e. DeiT's); FOLDER uses it too.
IMAGENET_RECIPE: Dict[str, Any] = dict(
    model='absvit_small_patch16_224', batch_size=128, epochs=300,
    opt='adamw', lr=5e-4, weight_decay=0.05, sched='cosine', sched_on_updates=False,
    warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
    drop_path=0.1, smoothing=0.1, mixup=0.8, cutmix=1.0,
    aa='rand-m9-mstd0.5-inc1', color_jitter=0.4, reprob=0.25, train_crop='rrc', crop_padding=4, hflip=0.5,
    repeated_aug=True, model_ema=True, model_ema_decay=0.99996, amp='fp16',
    mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD), crop_pct=0.875,
    num_workers=10,
)
#: The default job: a 4-block, 64-wide AbSViT on Fashion-MNIST, on a 2-core CPU in under 10 minutes. Tuned for
#: that budget (3 epochs, about 7.5 min): no augmentation (the model underfits), label smoothing 0.1, a short
#: warm-up. 4 epochs reach 87% but take 10 minutes.
FMNIST_RECIPE: Dict[str, Any] = dict(
    model='absvit_micro_patch4_28_gap', batch_size=64, epochs=3,
    opt='adamw', lr=1.6e-2, weight_decay=0.05, sched='cosine', sched_on_updates=True,  # lr 2e-3 at batch 64
    warmup_epochs=0.25, warmup_lr=1e-6, min_lr=1e-5,
    drop_path=0.0, smoothing=0.1, mixup=0.0, cutmix=0.0,
    aa='none', color_jitter=0.0, reprob=0.0, train_crop='pad', crop_padding=0, hflip=0.0,
    repeated_aug=False, model_ema=False, model_ema_decay=0.999, amp='none',
    mean=None, std=None, crop_pct=None,  # from the model's pretrained_cfg (Fashion-MNIST statistics)
    num_workers=0,
)
RECIPES = {'IMNET': IMAGENET_RECIPE, 'FOLDER': IMAGENET_RECIPE, 'FMNIST': FMNIST_RECIPE}
RECIPE_KEYS = tuple(FMNIST_RECIPE)
_AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    R = '(default: per --data-set recipe)'
    p = argparse.ArgumentParser('AbSViT training and evaluation', add_help=True,
                                epilog='Settings: command line > --config file > the --data-set recipe > defaults. '
                                       'See docs/training.md.')
    p.add_argument('--config', default=None, metavar='FILE.yaml',
                   help='YAML file whose keys (flag names, - or _) set flags; the command line still wins')
    g = p.add_argument_group('run')
    g.add_argument('--batch-size', type=int, default=None, help=f'per-process batch size {R}')
    g.add_argument('--eval-batch-size', type=int, default=None, help='per-process eval batch (default: 1.5 x batch)')
    g.add_argument('--epochs', type=int, default=None, help=f'{R}')
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
    g.add_argument('--amp', default=None, choices=list(_AMP),
                   help='autocast dtype (default: fp16 on CUDA for IMNET/FOLDER, none on CPU / FMNIST)')
    g.add_argument('--num_workers', '--num-workers', dest='num_workers', type=int, default=None,
                   help=f'data loader processes {R}')
    g.add_argument('--pin-mem', dest='pin_mem', action='store_true', default=True)
    g.add_argument('--no-pin-mem', dest='pin_mem', action='store_false')
    g.add_argument('--num-threads', type=int, default=None,
                   help='torch CPU threads per process (default: torch\'s; cores / processes under torchrun)')
    g.add_argument('--no-progress', dest='progress', action='store_false', default=True,
                   help='no progress bar')
    g.add_argument('--log-every', type=int, default=50,
                   help='TensorBoard step logging interval; on a GPU also how often the loss is read back to the '
                        'host and checked for NaN/inf (on CPU: every step)')

    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, help=f'timm model name {R}')
    g.add_argument('--td-mode', default=None, choices=list(models.TD_MODES),
                   help='top-down mode of AbS models (abs = AbSViT; others: the paper\'s comparisons)')
    g.add_argument('--input-size', type=int, default=None, help='image size (default: the model\'s)')
    g.add_argument('--in-chans', type=int, default=None, help='image channels (default: the model\'s)')
    g.add_argument('--drop', type=float, default=0.0, help='dropout rate')
    g.add_argument('--drop-path', type=float, default=None, help=f'drop path rate {R}')
    g.add_argument('--var-loss', type=float, default=0.1, help='weight of the variational loss (top-down models)')
    g.add_argument('--find-unused-parameters', action='store_true', help='DDP option for models that need it')

    g = p.add_argument_group('speed (each verified equal to the plain path in tests/test_fast_paths.py)')
    g.add_argument('--compile', action='store_true',
                   help='torch.compile the model (first steps are slow while it compiles; checkpoints are unchanged)')
    g.add_argument('--compile-backend', default='inductor', help='torch.compile backend')
    g.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune'")
    g.add_argument('--grad-checkpointing', action='store_true',
                   help='recompute block activations in backward: less memory, about 20%% more time')
    g.add_argument('--fused-opt', default='auto', choices=['auto', 'on', 'off'],
                   help='fused (single-kernel) Adam/AdamW step; auto: on for adam/adamw on CUDA')

    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', dest='model_ema', action='store_true', default=None, help=f'keep an EMA {R}')
    g.add_argument('--no-model-ema', dest='model_ema', action='store_false')
    g.add_argument('--model-ema-decay', type=float, default=None, help=f'{R}')
    g.add_argument('--model-ema-force-cpu', action='store_true')
    g.add_argument('--model-ema-eval', action='store_true', help='also evaluate the EMA weights every epoch')

    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default=None, help=f'timm optimizer name {R}')
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--opt-betas', type=float, nargs='+', default=None)
    g.add_argument('--clip-grad', type=float, default=None, help='max gradient norm (default: no clipping)')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=None, help=f'{R}')
    g.add_argument('--lr', type=float, default=None,
                   help=f'learning rate for a global batch of --lr-base-size images; scaled linearly {R}')
    g.add_argument('--lr-base-size', type=int, default=512, help='0: use --lr as is')

    g = p.add_argument_group('schedule')
    g.add_argument('--sched', default=None, help=f'timm scheduler name {R}')
    g.add_argument('--sched-on-updates', dest='sched_on_updates', action='store_true', default=None,
                   help=f'update the lr every step, not every epoch {R}')
    g.add_argument('--sched-on-epochs', dest='sched_on_updates', action='store_false')
    g.add_argument('--warmup-lr', type=float, default=None)
    g.add_argument('--min-lr', type=float, default=None)
    g.add_argument('--warmup-epochs', type=float, default=None, help=f'{R}')
    g.add_argument('--decay-epochs', type=float, default=30)
    g.add_argument('--decay-rate', type=float, default=0.1)

    g = p.add_argument_group('augmentation')
    g.add_argument('--aa', default=None, help=f"timm auto-augment policy, 'none' for none {R}")
    g.add_argument('--color-jitter', type=float, default=None, help=f'{R}')
    g.add_argument('--smoothing', type=float, default=None, help=f'label smoothing {R}')
    g.add_argument('--train-interpolation', default='bicubic')
    g.add_argument('--train-crop', default=None, choices=['rrc', 'pad'],
                   help=f'rrc: RandomResizedCrop; pad: random crop with --crop-padding {R}')
    g.add_argument('--crop-padding', type=int, default=None)
    g.add_argument('--scale', type=float, nargs=2, default=None, help='RandomResizedCrop scale (default 0.08 1)')
    g.add_argument('--ratio', type=float, nargs=2, default=None)
    g.add_argument('--hflip', type=float, default=None)
    g.add_argument('--repeated-aug', dest='repeated_aug', action='store_true', default=None, help=f'{R}')
    g.add_argument('--no-repeated-aug', dest='repeated_aug', action='store_false')
    g.add_argument('--aug-repeats', type=int, default=3)
    g.add_argument('--reprob', type=float, default=None, help=f'random erasing probability {R}')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--mixup', type=float, default=None, help=f'{R}')
    g.add_argument('--cutmix', type=float, default=None, help=f'{R}')
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')

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

    g = p.add_argument_group('distributed (torchrun sets the environment)')
    g.add_argument('--dist-url', default='env://')
    g.add_argument('--dist-backend', default=None, help='default: nccl on CUDA, gloo on CPU')
    g.add_argument('--dist-timeout', type=float, default=30, help='minutes')
    g.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)

    robustness.add_args(p)
    return p


# ------------------------------------------------------------------------------------------------
# Arguments: config file and recipes.

def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a YAML mapping of flag names (``batch_size`` or ``batch-size``) to values."""
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
    for key, value in cfg.items():
        a = actions.get(str(key).replace('-', '_'))
        if a is None or a.dest == argparse.SUPPRESS:
            near = misc.close_matches(str(key).replace('-', '_'), actions)
            raise UserError(f"config file {path}: unknown key '{key}'"
                            + (f"; did you mean {', '.join(near)}?" if near else '')
                            + ' (keys are flag names, see python main.py --help)')
        if a.choices is not None and value is not None and value not in a.choices:
            raise UserError(f"config file {path}: {key}: {value!r} is not one of {list(a.choices)}")
        if isinstance(value, str) and a.type is not None and a.type is not str:
            try:
                value = a.type(value)
            except (TypeError, ValueError) as e:
                raise UserError(f'config file {path}: {key}: {e}') from None
        out[a.dest] = value
    return out


def apply_recipe(args) -> argparse.Namespace:
    """Fill every recipe flag left at None from the recipe of ``args.data_set``."""
    recipe = RECIPES[args.data_set]
    for key in RECIPE_KEYS:
        if key == 'amp':  # resolved in run() once the device is known
            continue
        if getattr(args, key, None) is None:
            setattr(args, key, recipe[key])
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


# ------------------------------------------------------------------------------------------------
# Model and data.

def create_model(args, num_classes: int) -> nn.Module:
    name = args.model
    if ':' not in name and name not in timm.list_models():
        near = misc.close_matches(name, timm.list_models())
        raise UserError(f"unknown model '{name}'" + (f"; did you mean: {', '.join(near)}?" if near else '')
                        + " (python -c \"import models, timm; print(timm.list_models('*absvit*'))\" lists the zoo)")
    kwargs = dict(num_classes=num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path)
    if args.input_size:
        kwargs['img_size'] = args.input_size
    if args.in_chans:
        kwargs['in_chans'] = args.in_chans
    if args.td_mode:
        kwargs['td_mode'] = args.td_mode
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        if 'td_mode' in kwargs and 'td_mode' in str(e):
            raise UserError(f'--td-mode applies to top-down (AbS) models; {name} has none') from None
        raise


def resolve_data_args(args, model: nn.Module) -> None:
    """Fill input_size, in_chans, mean, std, crop_pct and interpolation from the model's pretrained_cfg
    where neither flags, config nor recipe set them."""
    cfg = resolve_data_config({}, model=model)
    chans, height, _ = cfg['input_size']
    args.in_chans = args.in_chans or int(chans)
    args.input_size = args.input_size or int(height)
    args.mean = list(datasets.fit_channels(args.mean if args.mean is not None else cfg['mean'], args.in_chans))
    args.std = list(datasets.fit_channels(args.std if args.std is not None else cfg['std'], args.in_chans))
    args.crop_pct = args.crop_pct or cfg.get('crop_pct') or 0.875
    args.interpolation = args.interpolation or cfg.get('interpolation') or 'bicubic'


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation shard of one process: indices rank, rank + world, ... (no padding, no duplicates)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_loaders(args, device):
    world, rank = misc.get_world_size(), misc.get_rank()
    dataset_val, _ = datasets.build_dataset(False, args)
    if len(dataset_val) == 0:
        raise UserError(f'the evaluation set of --data-set {args.data_set} is empty')
    pin = args.pin_mem and device.type == 'cuda'
    loader_val = DataLoader(dataset_val, sampler=ShardSampler(len(dataset_val), rank, world),
                            batch_size=args.eval_batch_size, num_workers=args.num_workers, pin_memory=pin,
                            drop_last=False)
    if args.eval:
        return None, loader_val, None, dataset_val
    dataset_train, _ = datasets.build_dataset(True, args)
    if args.repeated_aug:
        sampler = RepeatAugSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True,
                                   num_repeats=args.aug_repeats)
    else:
        sampler = DistributedSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    if len(sampler) < args.batch_size:
        per = f' per process ({len(dataset_train)} in all, {world} processes)' if world > 1 else ''
        raise UserError(f'--batch-size {args.batch_size} is larger than the {len(sampler)} training samples{per} '
                        'of an epoch; no full batch can be formed. Lower --batch-size or use more data '
                        '(--train-limit).')
    loader_train = DataLoader(dataset_train, sampler=sampler, batch_size=args.batch_size,
                              num_workers=args.num_workers, pin_memory=pin, drop_last=True)
    return loader_train, loader_val, dataset_train, dataset_val


def _use_fused_optimizer(choice: str, opt: str, device: torch.device) -> bool:
    """Whether to ask for torch's fused Adam/AdamW: ``on``/``off`` as said; ``auto``: on CUDA for adam/adamw."""
    fusable = opt.lower() in ('adam', 'adamw')
    if choice == 'on' and not fusable:
        raise UserError(f'--fused-opt on: there is no fused version of --opt {opt}; use adam or adamw, '
                        'or --fused-opt off')
    return choice == 'on' or (choice == 'auto' and fusable and device.type == 'cuda')


# ------------------------------------------------------------------------------------------------
# Checkpoints.

def load_resume(path: str, model: nn.Module, use_ema: bool = False):
    """Load the checkpoint at ``path`` into ``model`` (strict, clear errors); returns (checkpoint, which)."""
    if not os.path.isfile(path):
        raise UserError(f'--resume: checkpoint not found: {path}')
    ckpt = models.load_checkpoint_file(path)
    sd, which = models.select_state_dict(ckpt, use_ema=use_ema)
    models.checkpoint.check_compatible(model, sd, source=path)
    model.load_state_dict(sd, strict=True)
    return ckpt, which


def load_finetune(path: str, model: nn.Module) -> None:
    if not os.path.isfile(path):
        raise UserError(f'--finetune: checkpoint not found: {path}')
    sd, which = models.select_state_dict(models.load_checkpoint_file(path))
    sd, report = models.adapt_state_dict(model, sd)
    model.load_state_dict(sd, strict=False)
    _logger.info(f"finetune: loaded '{which}' weights from {path}"
                 + (f"; resampled {', '.join(report['resampled'])}" if report['resampled'] else '')
                 + (f"; dropped classifier {', '.join(report['dropped_head'])}" if report['dropped_head'] else '')
                 + (f"; newly initialised {len(report['missing'])} tensors: {', '.join(report['missing'][:6])}"
                    + (' ...' if len(report['missing']) > 6 else '') if report['missing'] else ''))


def _clean_message(e: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a traceback."""
    msg = str(e)
    if 'Original Traceback' in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split(': ', 1)[1] if ': ' in last and 'Error' in last.split(': ', 1)[0] else last
    return msg


# ------------------------------------------------------------------------------------------------

def run(args) -> Dict[str, Any]:
    """Train (or evaluate, with ``--eval``); returns the final statistics."""
    device = misc.init_distributed(args)
    misc.setup_logging(misc.get_rank())
    world = misc.get_world_size()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    elif args.distributed and device.type == 'cpu':
        local = int(os.environ.get('LOCAL_WORLD_SIZE', world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if args.eval_batch_size is None:
        args.eval_batch_size = max(1, int(1.5 * args.batch_size))
    if args.amp is None:  # the recipe's AMP is for CUDA; CPU runs in float32 unless --amp says otherwise
        args.amp = RECIPES[args.data_set]['amp'] if device.type == 'cuda' else 'none'
    amp_name = args.amp
    amp_dtype = _AMP[amp_name]
    misc.seed_everything(args.seed + misc.get_rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    output_dir = Path(args.output_dir) if args.output_dir else None
    is_main = misc.is_main_process()
    if args.resume == 'auto':
        auto = output_dir / 'checkpoint.pth' if output_dir else None
        args.resume = str(auto) if auto is not None and auto.is_file() else ''
        _logger.info('--resume auto: ' + (f'resuming from {args.resume}' if args.resume else 'starting afresh'))
    if output_dir and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    num_classes = datasets.dataset_num_classes(args)
    model = create_model(args, num_classes)
    resolve_data_args(args, model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _logger.info(f'{"evaluating" if args.eval else "training"} {args.model} ({n_params / 1e6:.2f}M parameters, '
                 f'{"top-down" if getattr(model, "is_top_down", False) else "bottom-up"}) on {args.data_set} '
                 f'({num_classes} classes, {args.input_size}px, {args.in_chans} channel(s)); device {device}, '
                 f'world size {world}' + (f' ({args.dist_backend})' if args.distributed else '')
                 + f', amp {amp_name}, {torch.get_num_threads()} thread(s) per process'
                 + (' (busy CPU: OMP_WAIT_POLICY=PASSIVE)' if _BUSY_CPU and device.type == 'cpu' else ''))

    loader_train, loader_val, dataset_train, dataset_val = build_loaders(args, device)
    _logger.info(f'data: {len(dataset_train) if dataset_train is not None else 0} train / {len(dataset_val)} eval '
                 f'samples from {args.data_path}')

    if args.finetune:
        if args.resume:
            _logger.warning('--finetune is ignored: --resume restores all weights')
        else:
            load_finetune(args.finetune, model)
    model.to(device)

    model_ema = None
    if args.model_ema and not args.eval:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)

    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)  # timm's interface, every model of the zoo has it

    model_without_ddp = model
    if args.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None,
                                        find_unused_parameters=args.find_unused_parameters)
    if args.compile:  # wraps the DDP model; checkpoints use model_without_ddp, so keys stay plain
        model = torch.compile(model, backend=args.compile_backend, mode=args.compile_mode)

    tb_writer = None
    try:
        if args.eval:
            return _evaluate_only(args, model, model_without_ddp, loader_val, device, amp_dtype, output_dir)

        global_batch = args.batch_size * world
        args.lr_effective = args.lr * global_batch / args.lr_base_size if args.lr_base_size > 0 else args.lr
        opt_kwargs = {}
        if args.opt_eps is not None:
            opt_kwargs['eps'] = args.opt_eps
        if args.opt_betas is not None:
            opt_kwargs['betas'] = tuple(args.opt_betas)
        fused = _use_fused_optimizer(args.fused_opt, args.opt, device)
        if fused:
            opt_kwargs['fused'] = True
        optimizer = create_optimizer_v2(model_without_ddp, opt=args.opt, lr=args.lr_effective,
                                        weight_decay=args.weight_decay, momentum=args.momentum, **opt_kwargs)
        updates_per_epoch = len(loader_train)
        lr_scheduler, _ = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
            warmup_epochs=args.warmup_epochs, step_on_epochs=not args.sched_on_updates,
            updates_per_epoch=updates_per_epoch)
        loss_scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

        mixup_fn = None
        mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
        if mixup_active:
            if args.batch_size % 2:
                raise UserError(f'mixup/cutmix need an even --batch-size, got {args.batch_size}')
            mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                             prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                             label_smoothing=args.smoothing, num_classes=num_classes)
        criterion = losses.build_criterion(args, model_without_ddp, mixup_active)
        _logger.info(f'criterion: {criterion}; optimizer {args.opt}{" (fused)" if fused else ""}, lr {args.lr_effective:.3g} '
                     f'(= {args.lr:g} x {global_batch} / {args.lr_base_size}), weight decay {args.weight_decay}, '
                     f'{args.sched} schedule over {args.epochs} epochs ({updates_per_epoch} steps each, '
                     f'{args.warmup_epochs} warm-up), EMA {"on" if model_ema else "off"}, '
                     f'mixup {"on" if mixup_fn else "off"}, repeated aug {"on" if args.repeated_aug else "off"}'
                     + (f'; torch.compile ({args.compile_backend})' if args.compile else '')
                     + ('; grad checkpointing' if args.grad_checkpointing else ''))

        start_epoch, max_accuracy = 0, 0.0
        rng_state = None
        if args.resume:
            ckpt, which = load_resume(args.resume, model_without_ddp)
            if all(k in ckpt for k in ('optimizer', 'lr_scheduler', 'epoch')):
                optimizer.load_state_dict(ckpt['optimizer'])
                lr_scheduler.load_state_dict(ckpt['lr_scheduler'])
                if loss_scaler is not None and 'scaler' in ckpt:
                    loss_scaler.load_state_dict(ckpt['scaler'])
                if model_ema is not None:
                    if isinstance(ckpt.get('model_ema'), dict):
                        model_ema.module.load_state_dict(ckpt['model_ema'])
                    else:
                        _logger.warning(f'{args.resume} has no EMA weights; the EMA restarts from the model weights')
                        model_ema.module.load_state_dict(model_without_ddp.state_dict())
                start_epoch = int(ckpt['epoch']) + 1
                max_accuracy = float(ckpt.get('max_accuracy', 0.0))
                rngs = ckpt.get('rng')
                if isinstance(rngs, list) and len(rngs) == world:
                    rng_state = rngs[misc.get_rank()]
                else:
                    _logger.warning('the checkpoint has no RNG state for this world size: the resumed run will not '
                                    'be bit-identical to an uninterrupted one')
                _logger.info(f'resumed from {args.resume} (epoch {start_epoch} done, best acc@1 {max_accuracy:.2f})')
            else:
                _logger.info(f"loaded '{which}' weights from {args.resume} (no training state: starting at epoch 1)")
            if start_epoch >= args.epochs:
                _logger.warning(f'{args.resume} has already trained {start_epoch} of --epochs {args.epochs}: '
                                'nothing to do')
        if args.sched_on_updates:
            lr_scheduler.step_update(num_updates=start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

        log_path = output_dir / 'log.txt' if output_dir else None
        if output_dir and is_main:
            if not args.resume and log_path.exists():
                _logger.warning(f'{log_path} exists: a new run starts it afresh (use --resume to continue a run)')
                log_path.unlink()
            with open(output_dir / 'args.yaml', 'w') as f:
                yaml.safe_dump(misc.plain_args(args), f, sort_keys=True)
            from torch.utils.tensorboard import SummaryWriter
            tb_writer = SummaryWriter(log_dir=str(output_dir / 'tensorboard'),
                                      purge_step=start_epoch * updates_per_epoch if start_epoch else None)

        if rng_state is not None:  # last thing before the loop: nothing else may draw from the generators
            misc.set_rng_state(rng_state)
        _logger.info(f'start training for {args.epochs - start_epoch} epoch(s)'
                     + (f' from epoch {start_epoch + 1}' if start_epoch else ''))
        t0 = time.time()
        test_stats: Dict[str, Any] = {}
        epoch_times = []
        for epoch in range(start_epoch, args.epochs):
            te = time.time()
            loader_train.sampler.set_epoch(epoch)
            try:
                train_stats = engine.train_one_epoch(
                    model, criterion, loader_train, optimizer, device, epoch, num_epochs=args.epochs,
                    lr_scheduler=lr_scheduler, sched_on_updates=args.sched_on_updates, amp_dtype=amp_dtype,
                    loss_scaler=loss_scaler, clip_grad=args.clip_grad, model_ema=model_ema, mixup_fn=mixup_fn,
                    tb_writer=tb_writer, log_every=args.log_every, progress=args.progress)
            except NonFiniteLossError as e:
                ck = output_dir / 'checkpoint.pth' if output_dir else None
                where = (f'the last good checkpoint, {ck} (epoch {epoch}), is intact' if ck and ck.exists()
                         else 'no checkpoint had been written yet')
                raise NonFiniteLossError(f'{e} Training stopped; {where}.') from None
            if not args.sched_on_updates:
                lr_scheduler.step(epoch + 1)

            last = epoch + 1 == args.epochs
            if (epoch + 1) % args.test_every == 0 or last:
                test_stats = engine.evaluate(loader_val, model, device, amp_dtype, progress=args.progress)
                if model_ema is not None and args.model_ema_eval:
                    ema_stats = engine.evaluate(loader_val, model_ema.module, device, amp_dtype, desc='Test EMA',
                                                progress=args.progress)
                    test_stats.update({f'ema_{k}': v for k, v in ema_stats.items()})
            else:
                test_stats = {}
            improved = bool(test_stats) and test_stats['acc1'] > max_accuracy
            if improved:
                max_accuracy = test_stats['acc1']

            rngs = misc.gather_rng_states()  # collective: every rank takes part
            if output_dir and is_main:
                state = {
                    'model': model_without_ddp.state_dict(),
                    'optimizer': optimizer.state_dict(),
                    'lr_scheduler': lr_scheduler.state_dict(),
                    'epoch': epoch,
                    'max_accuracy': max_accuracy,
                    'args': misc.plain_args(args),
                    'rng': rngs,
                }
                if model_ema is not None:
                    state['model_ema'] = model_ema.module.state_dict()
                if loss_scaler is not None:
                    state['scaler'] = loss_scaler.state_dict()
                misc.save_atomic(state, str(output_dir / 'checkpoint.pth'))
                if improved:
                    best = {k: state[k] for k in ('model', 'model_ema', 'epoch', 'args') if k in state}
                    best['test_acc1'] = max_accuracy
                    misc.save_atomic(best, str(output_dir / 'best_model.pth'))
            misc.barrier()

            epoch_times.append(time.time() - te)
            record = {'epoch': epoch, **{f'train_{k}': v for k, v in train_stats.items()},
                      **{f'test_{k}': v for k, v in test_stats.items()},
                      'max_accuracy': max_accuracy, 'n_parameters': n_params, 'world_size': world,
                      'epoch_time': epoch_times[-1]}
            eta = (args.epochs - epoch - 1) * sum(epoch_times) / len(epoch_times)
            _logger.info(f'epoch {epoch + 1}/{args.epochs}: train loss {train_stats["loss"]:.4f}, '
                         f'{train_stats["img_per_sec"]:.0f} img/s'
                         + (f'; test acc@1 {test_stats["acc1"]:.2f} acc@5 {test_stats["acc5"]:.2f} '
                            f'loss {test_stats["loss"]:.4f} (n={test_stats["n"]})' if test_stats else '')
                         + f'; best {max_accuracy:.2f}; {misc.format_seconds(epoch_times[-1])} per epoch, '
                           f'ETA {misc.format_seconds(eta)}')
            if is_main:
                if log_path:
                    misc.append_json_line(str(log_path), record)
                if tb_writer is not None:
                    for k, v in test_stats.items():
                        tb_writer.add_scalar(f'test/{k}', v, epoch + 1)
                    tb_writer.add_scalar('train/epoch_loss', train_stats['loss'], epoch + 1)
                    tb_writer.flush()

        total = time.time() - t0
        _logger.info(f'training time {misc.format_seconds(total)}; best acc@1 {max_accuracy:.2f}')
        return {'test': test_stats, 'max_accuracy': max_accuracy, 'train_time': total}
    finally:
        if tb_writer is not None:
            tb_writer.close()


def _evaluate_only(args, model, model_without_ddp, loader_val, device, amp_dtype, output_dir) -> Dict[str, Any]:
    which = 'model (initialisation' + (f' from --finetune {args.finetune})' if args.finetune else ')')
    if args.resume:
        _, key = load_resume(args.resume, model_without_ddp, use_ema=args.eval_ema)
        which = f"'{key}' weights of {args.resume}"
    elif args.eval_ema:
        raise UserError('--eval-ema needs --resume CHECKPOINT (a checkpoint holding EMA weights)')
    else:
        _logger.warning('--eval without --resume evaluates untrained weights')
    _logger.info(f'evaluating the {which}')
    stats = engine.evaluate(loader_val, model, device, amp_dtype, progress=args.progress)
    _logger.info(f'* acc@1 {stats["acc1"]:.3f} acc@5 {stats["acc5"]:.3f} loss {stats["loss"]:.4f} '
                 f'on {stats["n"]} images of {args.data_set}')
    if output_dir and misc.is_main_process():
        misc.append_json_line(str(output_dir / 'log.txt'),
                              {'mode': 'eval', 'weights': which, 'model': args.model, 'data_set': args.data_set,
                               **{f'test_{k}': v for k, v in stats.items()}, 'world_size': misc.get_world_size()})
    result = {'test': stats, 'weights': which}
    if robustness.requested(args):
        result['robustness'] = robustness.run(args, model_without_ddp, device, output_dir)
    return result


def cli(argv=None) -> int:
    """Command-line entry: errors the user can act on are printed as one message (exit status 1)."""
    try:
        args = parse_args(argv)
        run(args)
        return 0
    except (UserError, datasets.DatasetError, CheckpointError, NonFiniteLossError) as e:
        rank = misc.get_rank()
        print(f'error{f" (rank {rank})" if rank else ""}: {_clean_message(e)}', file=sys.stderr, flush=True)
        return 1
    finally:
        misc.cleanup_distributed()


if __name__ == '__main__':
    sys.exit(cli())
