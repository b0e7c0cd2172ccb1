"""Train and evaluate AbSViT and its baselines (one entry point, DeiT/timm-style flags).

    python main.py                                   # the default job: AbSViT-micro on Fashion-MNIST, CPU
    python main.py --config configs/imagenet_absvit_small.yaml --data-path /data/imagenet
    torchrun --nproc_per_node=8 main.py --data-set IMNET --model absvit_small_patch16_224 --data-path ...
    python main.py --eval --resume absvit_small.pth --model absvit_small_patch16_224 --data-set IMNET ...

Precedence of settings: command line > ``--config FILE.yaml`` > the recipe of ``--data-set``
(``datasets/recipes.py``: the paper's ImageNet recipe for IMNET/FOLDER, a short CPU recipe for FMNIST)
> the parser's defaults; the flags are in ``options.py``.

``run(args)`` goes through named steps: ``setup_runtime``, ``build_model``, ``build_loaders``,
``wrap_model``, then ``evaluate_only`` (``--eval``) or ``build_training``, ``resume``, ``open_outputs``
and ``train_loop``, whose epochs are ``train_epoch``, ``evaluate_epoch``, ``checkpoint_epoch`` and
``log_epoch``. The training state and its checkpoint file are ``train_state.TrainState``'s.
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


import json
import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

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
import evaluation
import losses
import misc
import models
import robustness
import schedulers
from errors import NonFiniteLossError, UserError, run_cli
from options import parse_args, resolve_amp, scaled_lr  # main.parse_args: the command line's settings
from train_state import TrainState, gather_rng_states, load_model_weights

_logger = logging.getLogger('absvit')


@dataclass
class Runtime:
    """Where and how this process runs, settled once by ``setup_runtime``."""
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    output_dir: Optional[Path]  # None: nothing is written
    world: int
    rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Loop:
    """What the epochs of a training run use, built by ``run``'s steps."""
    args: Any
    rt: Runtime
    net: nn.Module              # what is called: DDP / torch.compile wrappers included
    state: TrainState           # what is checkpointed: the unwrapped model, EMA, optimizer, ...
    criterion: nn.Module
    mixup_fn: Optional[Mixup]
    loader_train: DataLoader
    loader_val: DataLoader
    n_params: int
    log_path: Optional[Path] = None
    tb_writer: Any = None
    evaluator: Any = None       # the task's metrics (evaluation.EVALUATORS): what epochs are measured and ranked by
    best_epoch: int = -1        # the epoch of the best test metric so far (for --early-stop)
    batch_priors: Any = None    # prior ids -> prior vectors (prior-conditioned training), None otherwise


# ------------------------------------------------------------------------------------------------
# Runtime.

def setup_runtime(args) -> Runtime:
    """Process group, logging, threads, AMP and seeds; settles ``--resume auto``, creates the output folder."""
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
    amp_dtype = resolve_amp(args, device)
    misc.seed_everything(args.seed + misc.get_rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    rt = Runtime(device, amp_dtype, Path(args.output_dir) if args.output_dir else None, world, misc.get_rank())
    args.resume = misc.resolve_resume(args.resume, rt.output_dir)
    if rt.output_dir and rt.is_main:
        rt.output_dir.mkdir(parents=True, exist_ok=True)
    return rt


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
    if getattr(args, 'pretrained', False):
        kwargs['pretrained'] = True
    kwargs.update(checked_model_kwargs(getattr(args, 'model_kwargs', None)))
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        if 'td_mode' in kwargs and 'td_mode' in str(e):
            raise UserError(f'--td-mode applies to top-down (AbS) models; {name} has none') from None
        if args.model_kwargs:
            raise UserError(f'{name} does not take --model-kwargs {args.model_kwargs}: {e}') from None
        raise


#: timm.create_model arguments that main.py's own flags set (the number of classes comes from the data)
FLAG_KWARGS = {'num_classes': '--data-set', 'img_size': '--input-size', 'in_chans': '--in-chans',
               'td_mode': '--td-mode', 'drop_rate': '--drop', 'drop_path_rate': '--drop-path',
               'pretrained': '--pretrained'}


def checked_model_kwargs(extra) -> dict:
    """``--model-kwargs`` (a mapping, from the command line or a config), refusing any argument a flag of
    its own sets (``img_size`` is ``--input-size``, ...), so that one setting has one place."""
    if not extra:
        return {}
    if not isinstance(extra, dict):
        raise UserError(f'--model-kwargs must be KEY=VALUE pairs (a mapping in a config), got {extra!r}')
    clash = sorted(set(extra) & set(FLAG_KWARGS))
    if clash:
        raise UserError(f'--model-kwargs sets {", ".join(clash)}, which a flag of its own sets: use '
                        + ', '.join(FLAG_KWARGS[k] for k in clash))
    return dict(extra)


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


def build_model(args, rt: Runtime) -> Tuple[nn.Module, int, int]:
    """The model of ``--model`` for the dataset's classes, with the data settings it implies;
    returns ``(model, num_classes, trainable parameter count)``."""
    num_classes = datasets.dataset_num_classes(args)
    model = create_model(args, num_classes)
    resolve_data_args(args, model)
    attach_priors(args, model, num_classes)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = ''.join(f' {k}={v}' for k, v in (args.model_kwargs or {}).items())
    _logger.info(f'{"evaluating" if args.eval else "training"} {args.model}{extra} ({n_params / 1e6:.2f}M parameters, '
                 f'{"top-down" if getattr(model, "is_top_down", False) else "bottom-up"}) on {args.data_set} '
                 f'({num_classes} classes, {args.input_size}px, {args.in_chans} channel(s)); device {rt.device}, '
                 f'world size {rt.world}' + (f' ({args.dist_backend})' if args.distributed else '')
                 + f', amp {args.amp}, {torch.get_num_threads()} thread(s) per process'
                 + (' (busy CPU: OMP_WAIT_POLICY=PASSIVE)' if _BUSY_CPU and rt.device.type == 'cpu' else ''))
    return model, num_classes, n_params


def composites_on(args) -> bool:
    return bool(getattr(args, 'composite_prob', 0.0)) and not args.eval


def attach_priors(args, model: nn.Module, num_classes: int) -> None:
    """``--prior-source table``: the model gets its learned class-embedding table (also for --eval, so that
    such checkpoints load); a note when prior-conditioned training meets a model that takes no prior."""
    if not losses.takes_prior(model):
        if composites_on(args):
            _logger.info(f'{args.model} takes no prior (td_mode {getattr(model, "td_mode", "none")}): composites train '
                         'it, their priors are ignored (a no-prior baseline)')
        return
    if args.prior_source == 'table':
        losses.attach_prior_table(model, num_classes)
        _logger.info(f'class priors: a learned table prior_table ({num_classes} x {model.prompt.shape[-1]})')


def check_composites(args) -> None:
    """What composites cannot be combined with, said before any data is read."""
    if datasets.dataset_task(args.data_set) != 'classification':
        raise UserError(f'--composite-prob needs a classification dataset (one class per image); {args.data_set} '
                        'is multi-label')
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        raise UserError('--composite-prob composes its own multi-object samples and targets; turn mixup/cutmix '
                        'off (--mixup 0 --cutmix 0)')
    if getattr(args, 'loss', None) not in (None, 'ce'):
        raise UserError(f'--composite-prob trains with soft-target cross-entropy (losses.PriorTargetLoss); '
                        f'--loss {args.loss} is for multi-label data')


def wrap_composites(args, dataset, num_classes: int):
    """``--composite-prob > 0``: the training set as ``datasets.PriorComposites`` (multi-object scenes with
    present- and absent-class priors, mixed with ordinary samples)."""
    fill = [-m / s for m, s in zip(args.mean, args.std)]  # a black pixel, normalised
    wrapped = datasets.PriorComposites(
        dataset, num_classes, composite_prob=args.composite_prob, items=args.composite_items,
        grid=args.composite_grid, present_prob=args.present_prior_prob, absent_prob=args.absent_prior_prob,
        fill=fill, smoothing=args.smoothing or 0.0, seed=args.seed)
    _logger.info(f'composites: {wrapped}; prior source {args.prior_source}')
    return wrapped


def eval_loader(dataset, args, device: torch.device) -> DataLoader:
    """Sequential loader over this process's shard of an evaluation set (``engine.evaluate`` sums the
    counts over processes); also what the robustness benchmarks evaluate with."""
    return DataLoader(dataset, sampler=misc.ShardSampler(len(dataset), misc.get_rank(), misc.get_world_size()),
                      batch_size=args.eval_batch_size, num_workers=args.num_workers,
                      pin_memory=args.pin_mem and device.type == 'cuda', drop_last=False)


def build_loaders(args, device: torch.device, num_classes: int) -> Tuple[Optional[DataLoader], DataLoader]:
    """``(train loader, eval loader)``; no train loader with ``--eval``; the training set made composites with
    ``--composite-prob``."""
    world, rank = misc.get_world_size(), misc.get_rank()
    if composites_on(args):
        check_composites(args)
    dataset_val, _ = datasets.build_dataset(False, args)
    if len(dataset_val) == 0:
        raise UserError(f'the evaluation set of --data-set {args.data_set} is empty')
    loader_val = eval_loader(dataset_val, args, device)
    if args.eval:
        _logger.info(f'data: 0 train / {len(dataset_val)} eval samples from {args.data_path}')
        return None, loader_val
    dataset_train, _ = datasets.build_dataset(True, args)
    if composites_on(args):
        dataset_train = wrap_composites(args, dataset_train, num_classes)
    if args.repeated_aug:
        # DeiT rounds an epoch down to a multiple of 256 samples; sets smaller than that keep them all
        # (timm >= 1.0.30 does this itself, older releases would select none).
        selected_round = 256 if len(dataset_train) >= 256 else 0
        sampler = RepeatAugSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True,
                                   num_repeats=args.aug_repeats, selected_round=selected_round)
    else:
        sampler = DistributedSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    if len(sampler) < args.batch_size:
        per = f' per process ({len(dataset_train)} in all, {world} processes)' if world > 1 else ''
        raise UserError(f'--batch-size {args.batch_size} is larger than the {len(sampler)} training samples{per} '
                        'of an epoch; no full batch can be formed. Lower --batch-size or use more data '
                        '(--train-limit).')
    loader_train = DataLoader(dataset_train, sampler=sampler, batch_size=args.batch_size,
                              num_workers=args.num_workers, pin_memory=args.pin_mem and device.type == 'cuda',
                              drop_last=True)
    _logger.info(f'data: {len(dataset_train)} train / {len(dataset_val)} eval samples from {args.data_path}')
    return loader_train, loader_val


def _require_file(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f'{flag}: checkpoint not found: {path}')


def load_finetune(path: str, model: nn.Module) -> None:
    """Start from other weights with the zoo's adapter (``models.checkpoint.load_pretrained``) at its
    defaults: timm's resampling, a classifier of another shape dropped, whatever the file lacks newly
    initialised; any key or shape that does not fit is an error."""
    _require_file(path, '--finetune')
    report = models.checkpoint.load_pretrained(model, path)
    dropped = [k for k, why in report.skipped.items() if why == models.checkpoint.RESHAPED_HEAD]
    _logger.info(f"finetune: loaded '{report.which}' weights from {path}"
                 + ('; resampled pos_embed' if report.resampled else '')
                 + (f"; dropped classifier {', '.join(dropped)}" if dropped else '')
                 + (f"; newly initialised {len(report.missing)} tensors: {', '.join(report.missing[:6])}"
                    + (' ...' if len(report.missing) > 6 else '') if report.missing else ''))


def wrap_model(args, model: nn.Module, device: torch.device) -> Tuple[nn.Module, Optional[ModelEmaV3]]:
    """``--finetune`` weights, the device, the EMA, gradient checkpointing, then the DDP and torch.compile
    wrappers; returns ``(net, model_ema)``: ``net`` is what is called, ``model`` what checkpoints hold."""
    if args.finetune:
        if args.resume:
            _logger.warning('--finetune is ignored: --resume restores all weights')
        else:
            load_finetune(args.finetune, model)
    if getattr(args, 'sync_bn', False) and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module: checkpoints unchanged
    model.to(device)
    model_ema = None
    if args.model_ema and not args.eval:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)  # timm's interface, every model of the zoo has it
    net = model
    if args.distributed:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None,
                                      find_unused_parameters=args.find_unused_parameters)
    if args.compile:  # wraps the DDP model; checkpoints hold the unwrapped model, so keys stay plain
        net = torch.compile(net, backend=args.compile_backend, mode=args.compile_mode)
    return net, model_ema


def evaluator_class(args) -> Type[evaluation.Evaluator]:
    """The evaluator of the dataset's task (``evaluation.EVALUATORS``): top-1 for classification, mAP for
    multi-label data; its ``key`` is what the run's best epoch is chosen by."""
    return evaluation.EVALUATORS[datasets.dataset_task(args.data_set)]


def build_evaluator(args) -> evaluation.Evaluator:
    return evaluator_class(args)()


def write_task_report(rt: Runtime, evaluator: evaluation.Evaluator, stats: Dict[str, Any], dataset) -> None:
    """The evaluator's report of the last evaluation in OUTPUT_DIR, on rank 0 (multi-label: report.md and
    .json, with per-class AP; classification has none)."""
    if rt.output_dir and rt.is_main:
        base = getattr(dataset, 'dataset', dataset)  # through a Subset (--val-limit)
        evaluator.write_report(rt.output_dir, stats, getattr(base, 'classes', None))


# ------------------------------------------------------------------------------------------------
# Evaluation only.

def evaluate_only(args, rt: Runtime, net: nn.Module, model: nn.Module, loader_val: DataLoader) -> Dict[str, Any]:
    """``--eval``: the ``--resume`` weights (its EMA with ``--eval-ema``) on the eval set, then the
    robustness benchmarks asked for."""
    which = 'model (initialisation' + (f' from --finetune {args.finetune})' if args.finetune else ')')
    if args.resume:
        _require_file(args.resume, '--resume')
        _, key = load_model_weights(args.resume, model, use_ema=args.eval_ema)
        which = f"'{key}' weights of {args.resume}"
    elif args.eval_ema:
        raise UserError('--eval-ema needs --resume CHECKPOINT (a checkpoint holding EMA weights)')
    else:
        _logger.warning('--eval without --resume evaluates untrained weights')
    _logger.info(f'evaluating the {which}')
    evaluator = build_evaluator(args)
    stats = engine.evaluate(loader_val, net, rt.device, rt.amp_dtype, progress=args.progress, evaluator=evaluator)
    _logger.info(f'* {evaluator.result_line(stats, args.data_set)}')
    write_task_report(rt, evaluator, stats, loader_val.dataset)
    if rt.output_dir and rt.is_main:
        misc.append_json_line(str(rt.output_dir / 'log.txt'),
                              {'mode': 'eval', 'weights': which, 'model': args.model, 'data_set': args.data_set,
                               **{f'test_{k}': v for k, v in stats.items()}, 'world_size': rt.world})
    result = {'test': stats, 'weights': which}
    if robustness.requested(args):
        result['robustness'] = robustness.run(
            args, model, rt.device, rt.output_dir, amp_dtype=rt.amp_dtype,
            make_loader=partial(eval_loader, args=args, device=rt.device),
            evaluate=partial(engine.evaluate, progress=args.progress), is_main=rt.is_main)
    return result


# ------------------------------------------------------------------------------------------------
# Training: optimizer, schedule, loss; resume; outputs.

def _use_fused_optimizer(choice: str, opt: str, device: torch.device) -> bool:
    """Whether to ask for torch's fused Adam/AdamW: ``on``/``off`` as said; ``auto``: on CUDA for adam/adamw."""
    fusable = opt.lower() in ('adam', 'adamw')
    if choice == 'on' and not fusable:
        raise UserError(f'--fused-opt on: there is no fused version of --opt {opt}; use adam or adamw, '
                        'or --fused-opt off')
    return choice == 'on' or (choice == 'auto' and fusable and device.type == 'cuda')


def build_optimizer(args, model: nn.Module, rt: Runtime) -> Tuple[torch.optim.Optimizer, bool]:
    """timm's optimizer at ``--lr`` scaled to the global batch (``args.lr_effective``); returns it and
    whether it is the fused kernel."""
    global_batch = args.batch_size * rt.world
    args.lr_effective = scaled_lr(args, global_batch)
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    fused = _use_fused_optimizer(args.fused_opt, args.opt, rt.device)
    if fused:
        opt_kwargs['fused'] = True
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr_effective, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    return optimizer, fused


def build_mixup(args, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup when ``--mixup``, ``--cutmix`` or ``--cutmix-minmax`` asks for it (label smoothing inside)."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    if args.batch_size % 2:
        raise UserError(f'mixup/cutmix need an even --batch-size, got {args.batch_size}')
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_scheduler(args, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm's scheduler of ``--sched``, or ``onecycle`` (PyTorch's OneCycleLR to ``--lr``, which timm lacks)."""
    if args.sched == 'onecycle':
        if not args.sched_on_updates:
            raise UserError('--sched onecycle is defined in updates: use it with --sched-on-updates')
        return schedulers.OneCycleSchedule(optimizer, max_lr=args.lr_effective, pct_start=args.onecycle_pct,
                                           total_steps=args.epochs * updates_per_epoch)
    lr_scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=updates_per_epoch)
    return lr_scheduler


def build_training(args, rt: Runtime, model: nn.Module, model_ema: Optional[ModelEmaV3], updates_per_epoch: int,
                   num_classes: int) -> Tuple[TrainState, nn.Module, Optional[Mixup]]:
    """Optimizer, lr schedule, AMP loss scaler (fp16 only), mixup and criterion; returns
    ``(training state, criterion, mixup_fn)``."""
    optimizer, fused = build_optimizer(args, model, rt)
    lr_scheduler = build_scheduler(args, optimizer, updates_per_epoch)
    loss_scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    mixup_fn = build_mixup(args, num_classes)
    criterion = losses.build_criterion(args, model, mixup_fn is not None, composites_on(args))
    global_batch = args.batch_size * rt.world
    _logger.info(f'criterion: {criterion}; optimizer {args.opt}{" (fused)" if fused else ""}, '
                 f'lr {args.lr_effective:.3g} '
                 + (f'(= {args.lr:g} x {global_batch} / {args.lr_base_size}), ' if args.lr_base_size > 0 else
                    '(not scaled with the batch), ') +
                 f'weight decay {args.weight_decay}, {args.sched} schedule over {args.epochs} epochs '
                 f'({updates_per_epoch} steps each, {args.warmup_epochs} warm-up), EMA {"on" if model_ema else "off"}, '
                 f'mixup {"on" if mixup_fn else "off"}, repeated aug {"on" if args.repeated_aug else "off"}'
                 + (f'; torch.compile ({args.compile_backend})' if args.compile else '')
                 + ('; grad checkpointing' if args.grad_checkpointing else ''))
    ranked_by = evaluator_class(args)
    state = TrainState(model, optimizer, lr_scheduler, loss_scaler=loss_scaler, model_ema=model_ema,
                       best_key=ranked_by.key, higher_is_better=ranked_by.higher_is_better)
    return state, criterion, mixup_fn


def build_batch_priors(args, model: nn.Module) -> Optional[losses.BatchPriors]:
    """With composites, for a model that takes priors: what turns a batch's prior ids into prior vectors."""
    if not (composites_on(args) and losses.takes_prior(model)):
        return None
    try:
        return losses.BatchPriors(model, args.prior_source)
    except ValueError as e:
        raise UserError(f'--prior-source {args.prior_source}: {e}') from None


def resume(args, rt: Runtime, state: TrainState, updates_per_epoch: int) -> None:
    """Restore ``--resume`` (weights, and the training state when the file has one), then move the lr
    schedule to the first epoch to run."""
    if args.resume:
        _require_file(args.resume, '--resume')
        state.resume(args.resume, rank=rt.rank, world=rt.world)
        if state.start_epoch >= args.epochs:
            _logger.warning(f'{args.resume} has already trained {state.start_epoch} of --epochs {args.epochs}: '
                            'nothing to do')
    if args.sched_on_updates:
        state.lr_scheduler.step_update(num_updates=state.start_epoch * updates_per_epoch)
    else:
        state.lr_scheduler.step(state.start_epoch)


def open_outputs(loop: Loop) -> None:
    """log.txt (started afresh unless resuming), args.yaml and the TensorBoard writer, on rank 0."""
    args, out = loop.args, loop.rt.output_dir
    loop.log_path = out / 'log.txt' if out else None
    if not (out and loop.rt.is_main):
        return
    if not args.resume and loop.log_path.exists():
        _logger.warning(f'{loop.log_path} exists: a new run starts it afresh (use --resume to continue a run)')
        loop.log_path.unlink()
    with open(out / 'args.yaml', 'w') as f:
        yaml.safe_dump(misc.plain_args(args), f, sort_keys=True)
    from torch.utils.tensorboard import SummaryWriter
    start = loop.state.start_epoch
    loop.tb_writer = SummaryWriter(log_dir=str(out / 'tensorboard'),
                                   purge_step=start * len(loop.loader_train) if start else None)


# ------------------------------------------------------------------------------------------------
# The epochs.

def train_epoch(loop: Loop, epoch: int) -> Dict[str, float]:
    """One pass over the training set (and the per-epoch lr step); a NaN/inf loss stops the run and says
    which checkpoint is left."""
    args, state = loop.args, loop.state
    loop.loader_train.sampler.set_epoch(epoch)
    if hasattr(loop.loader_train.dataset, 'set_epoch'):  # composites: a new draw each epoch
        loop.loader_train.dataset.set_epoch(epoch)
    try:
        step = engine.ClassificationStep(loop.net, loop.criterion, loop.rt.device, loop.mixup_fn, loop.batch_priors)
        on_update = (lambda n: state.lr_scheduler.step_update(num_updates=n)) if args.sched_on_updates else None
        stats = engine.train_one_epoch(
            step, loop.loader_train, state.optimizer, loop.rt.device, epoch, num_epochs=args.epochs,
            on_update=on_update, amp_dtype=loop.rt.amp_dtype, loss_scaler=state.loss_scaler,
            clip_grad=args.clip_grad, model_ema=state.model_ema, tb_writer=loop.tb_writer,
            log_every=args.log_every, progress=args.progress)
    except NonFiniteLossError as e:
        ck = loop.rt.output_dir / 'checkpoint.pth' if loop.rt.output_dir else None
        where = (f'the last good checkpoint, {ck} (epoch {epoch}), is intact' if ck and ck.exists()
                 else 'no checkpoint had been written yet')
        raise NonFiniteLossError(f'{e} Training stopped; {where}.') from None
    if not args.sched_on_updates:
        state.lr_scheduler.step(epoch + 1)
    return stats


def evaluate_epoch(loop: Loop, epoch: int) -> Dict[str, float]:
    """Test statistics after ``epoch`` (also of the EMA with ``--model-ema-eval``): every ``--test-every``
    epochs and after the last one; ``{}`` otherwise."""
    args, rt = loop.args, loop.rt
    if (epoch + 1) % args.test_every != 0 and epoch + 1 != args.epochs:
        return {}
    stats = engine.evaluate(loop.loader_val, loop.net, rt.device, rt.amp_dtype, progress=args.progress,
                            evaluator=loop.evaluator)
    write_task_report(rt, loop.evaluator, stats, loop.loader_val.dataset)
    ema = loop.state.model_ema
    if ema is not None and args.model_ema_eval:
        ema_stats = engine.evaluate(loop.loader_val, ema.module, rt.device, rt.amp_dtype, desc='Test EMA',
                                    progress=args.progress, evaluator=loop.evaluator)
        stats.update({f'ema_{k}': v for k, v in ema_stats.items()})
    return stats


def checkpoint_epoch(loop: Loop, epoch: int, test_stats: Dict[str, float]) -> None:
    """Record the finished epoch; write checkpoint.pth, and best_model.pth when the evaluator's score improved
    on the best (test top-1, or mAP of the better of the model and its EMA: ``Evaluator.score``)."""
    state, rt = loop.state, loop.rt
    state.epoch = epoch
    improved = state.update_best(loop.evaluator.score(test_stats))
    if improved:
        loop.best_epoch = epoch
    rngs = gather_rng_states()  # collective: every rank takes part
    if rt.output_dir and rt.is_main:
        checkpoint = state.save(str(rt.output_dir / 'checkpoint.pth'), loop.args, rngs)
        if improved:
            state.save_best(str(rt.output_dir / 'best_model.pth'), checkpoint)
    misc.barrier()


def log_epoch(loop: Loop, epoch: int, train_stats: Dict[str, float], test_stats: Dict[str, float],
              epoch_times: List[float]) -> None:
    """The epoch's line in log.txt and TensorBoard, and its summary (with the run's ETA) on the console."""
    args, best = loop.args, loop.state.best_metric
    record = {'epoch': epoch, **{f'train_{k}': v for k, v in train_stats.items()},
              **{f'test_{k}': v for k, v in test_stats.items()},
              'max_accuracy': best, 'n_parameters': loop.n_params, 'world_size': loop.rt.world,
              'epoch_time': epoch_times[-1]}
    eta = (args.epochs - epoch - 1) * sum(epoch_times) / len(epoch_times)
    _logger.info(f'epoch {epoch + 1}/{args.epochs}: train loss {train_stats["loss"]:.4f}, '
                 f'{train_stats["img_per_sec"]:.0f} img/s'
                 + (f'; test {loop.evaluator.summary(test_stats)}' if test_stats else '')
                 + f'; best {best:.2f}; {misc.format_seconds(epoch_times[-1])} per epoch, '
                   f'ETA {misc.format_seconds(eta)}')
    if not loop.rt.is_main:
        return
    if loop.log_path:
        misc.append_json_line(str(loop.log_path), record)
    if loop.tb_writer is not None:
        for k, v in test_stats.items():
            if isinstance(v, (int, float)):  # not the per-class AP lists
                loop.tb_writer.add_scalar(f'test/{k}', v, epoch + 1)
        loop.tb_writer.add_scalar('train/epoch_loss', train_stats['loss'], epoch + 1)
        loop.tb_writer.flush()


def best_epoch_from_log(loop: Loop) -> int:
    """The epoch of the best metric of a resumed run, from its log.txt (the first epoch whose ``max_accuracy``
    is the checkpoint's); without a log, the resumed epoch (the patience of --early-stop then restarts)."""
    state = loop.state
    if state.epoch < 0 or not (loop.log_path and loop.log_path.is_file()):
        return state.epoch
    with open(loop.log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    best = [r['epoch'] for r in records if 'epoch' in r and r.get('max_accuracy') == state.best_metric]
    return best[0] if best else state.epoch


def stop_early(loop: Loop, epoch: int) -> bool:
    """``--early-stop N``: whether N epochs have passed since the best one (the IDA release stops after 8)."""
    patience = getattr(loop.args, 'early_stop', 0) or 0
    if patience <= 0 or epoch + 1 >= loop.args.epochs or epoch - loop.best_epoch < patience:
        return False
    _logger.info(f'early stop: no new best in the {epoch - loop.best_epoch} epochs since epoch {loop.best_epoch + 1}')
    return True


def train_loop(loop: Loop) -> Dict[str, Any]:
    """The remaining epochs: train, evaluate, checkpoint, log; returns the last test stats and the best top-1."""
    args, state = loop.args, loop.state
    state.restore_rng()  # last thing before the loop: nothing else may draw from the generators
    start = state.start_epoch
    loop.best_epoch = best_epoch_from_log(loop)
    _logger.info(f'start training for {args.epochs - start} epoch(s)' + (f' from epoch {start + 1}' if start else ''))
    t0 = time.time()
    test_stats: Dict[str, Any] = {}
    epoch_times: List[float] = []
    for epoch in range(start, args.epochs):
        te = time.time()
        train_stats = train_epoch(loop, epoch)
        test_stats = evaluate_epoch(loop, epoch)
        checkpoint_epoch(loop, epoch, test_stats)
        epoch_times.append(time.time() - te)
        log_epoch(loop, epoch, train_stats, test_stats, epoch_times)
        if stop_early(loop, epoch):
            break
    total = time.time() - t0
    _logger.info(f'training time {misc.format_seconds(total)}; best {loop.evaluator.label} {state.best_metric:.2f}')
    return {'test': test_stats, 'max_accuracy': state.best_metric, 'train_time': total}


# ------------------------------------------------------------------------------------------------

def run(args) -> Dict[str, Any]:
    """Train (or evaluate, with ``--eval``); returns the final statistics."""
    rt = setup_runtime(args)
    model, num_classes, n_params = build_model(args, rt)
    loader_train, loader_val = build_loaders(args, rt.device, num_classes)
    net, model_ema = wrap_model(args, model, rt.device)
    if args.eval:
        return evaluate_only(args, rt, net, model, loader_val)
    state, criterion, mixup_fn = build_training(args, rt, model, model_ema, len(loader_train), num_classes)
    resume(args, rt, state, len(loader_train))
    loop = Loop(args, rt, net, state, criterion, mixup_fn, loader_train, loader_val, n_params,
                evaluator=build_evaluator(args), batch_priors=build_batch_priors(args, model))
    try:
        open_outputs(loop)
        return train_loop(loop)
    finally:
        if loop.tb_writer is not None:
            loop.tb_writer.close()


def _run_command_line(argv=None) -> None:
    run(parse_args(argv))


def cli(argv=None) -> int:
    """Command-line entry (``errors.run_cli``): an error the user can act on is one line on stderr and
    exit status 2, without a traceback."""
    return run_cli(_run_command_line, argv, cleanup=misc.cleanup_distributed)


if __name__ == '__main__':
    sys.exit(cli())
