"""One training epoch and one evaluation pass.

Nothing here depends on the model's name or kind: the model is called as
``model(images, **criterion.model_kwargs)`` and the criterion decides how to use what it returns
(see ``losses.py``).
"""
import math
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import evaluation
import misc
from errors import NonFiniteLossError

__all__ = ['train_one_epoch', 'TrainStep', 'ClassificationStep', 'evaluate', 'autocast', 'unwrap_model']


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


unwrap_model = misc.unwrap_model  # re-exported: the engine's callers unwrap as it does


class TrainStep:
    """What one training step computes, for the one training loop (``train_one_epoch``) that every trainer
    shares. The loop owns what is common (autocast, gradient accumulation, the loss scaler, clipping, the
    non-finite check, EMA, the lr schedule, logging); a step only says how a batch becomes a loss.

    * ``module``: the network that runs forward (DDP- or compile-wrapped as the run wraps it): the loop puts
      it in train mode, skips DDP's gradient all-reduce on accumulation steps and clips its gradients;
    * ``prepare(batch)``: device transfer and batch-level augmentation, outside autocast;
    * ``__call__(batch) -> (loss, terms)``: the forward under autocast; ``terms`` (scalar tensors, left on the
      device) are logged beside the loss;
    * ``batch_size(batch)``: the samples in the batch, for img/s.
    """
    module: nn.Module

    def prepare(self, batch):
        return batch

    def __call__(self, batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def batch_size(self, batch) -> int:
        return len(batch[0])


class ClassificationStep(TrainStep):
    """``criterion(model(images, **criterion.model_kwargs), targets)``: the step of main.py's tasks
    (classification, multi-label, prior-conditioned training) and of the controllability study.

    Batches of three, ``(images, targets, prior ids)`` (``datasets.PriorComposites``), call the model with
    ``prior=batch_priors(ids)`` (per-sample priors, ``losses.BatchPriors``) and hand the ids to the criterion
    (``losses.PriorTargetLoss``); without ``batch_priors`` (a model that takes no prior) the model is called
    as usual. Nothing here depends on the model's kind: the criterion decides how to use the output.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, device: torch.device,
                 mixup_fn: Optional[Callable] = None, batch_priors: Optional[Callable] = None):
        self.module, self.criterion, self.device = model, criterion, device
        self.mixup_fn, self.batch_priors = mixup_fn, batch_priors
        self.model_kwargs = getattr(criterion, 'model_kwargs', {}) or {}

    def prepare(self, batch):
        images, targets, prior_ids = _split_batch(batch)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if prior_ids is not None:  # once: the priors and the criterion both read them
            prior_ids = prior_ids.to(self.device, non_blocking=True)
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        return images, targets, prior_ids

    def __call__(self, batch):
        images, targets, prior_ids = batch
        kwargs = self.model_kwargs
        if prior_ids is not None and self.batch_priors is not None:
            kwargs = {**kwargs, 'prior': self.batch_priors(prior_ids)}
        output = self.module(images, **kwargs)
        loss = self.criterion(output, targets) if prior_ids is None else self.criterion(output, targets, prior_ids)
        return loss, getattr(self.criterion, 'last_terms', {})


def _split_batch(batch):
    """``(images, targets, prior ids or None)``: datasets of prior-conditioned training add the ids."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    images, targets = batch
    return images, targets, None


def _progress(iterable, total: int, desc: str, enabled: bool):
    enabled = enabled and misc.is_main_process()
    tty = sys.stderr.isatty()  # into a log file: a line every 30 s rather than a redraw every second
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=not tty,
                mininterval=1.0 if tty else 30.0, smoothing=0.1)


def _default_check_every(device: torch.device, log_every: int) -> int:
    """How often the loss is read on the host: every step on CPU (reading costs nothing there, and a bad
    step is then caught before it updates the weights), every ``log_every`` steps on an accelerator
    (each read waits for the device to finish, so reading every step would starve it)."""
    return 1 if device.type == 'cpu' else max(1, int(log_every))


def _no_sync(module: nn.Module, sync: bool):
    """DDP's ``no_sync`` on a step that only accumulates gradients (also under torch.compile)."""
    inner = getattr(module, '_orig_mod', module)
    return inner.no_sync() if not sync and isinstance(inner, DistributedDataParallel) else nullcontext()


def train_one_epoch(step: TrainStep, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, *, num_epochs: Optional[int] = None, accum_steps: int = 1,
                    on_update: Optional[Callable[[int], None]] = None, amp_dtype: Optional[torch.dtype] = None,
                    loss_scaler=None, clip_grad: Optional[float] = None, model_ema=None, tb_writer=None,
                    log_every: int = 50, check_every: Optional[int] = None, progress: bool = True,
                    set_training_mode: bool = True) -> Dict[str, float]:
    """Train for one pass over ``data_loader``; returns averages over every process's steps.

    Every ``accum_steps`` batches (and at the last) the accumulated gradients update the weights; then the
    EMA follows and ``on_update(num_updates)`` runs (a per-update lr schedule), ``num_updates`` counting
    updates since the start of training. Losses stay on the device and are read on the host only every
    ``check_every`` steps and at the end of the epoch (default: every step on CPU, every ``log_every``
    steps elsewhere), so the hot loop has no host syncs. A NaN/inf loss raises ``NonFiniteLossError`` on
    every rank at the next read, naming the first bad step, before anything is checkpointed.
    """
    module = step.module
    module.train(set_training_mode)
    check_every = check_every or _default_check_every(device, log_every)
    steps = len(data_loader)
    per_epoch = math.ceil(steps / accum_steps)
    bar = _progress(data_loader, steps, f'Epoch {epoch + 1}' + (f'/{num_epochs}' if num_epochs else ''), progress)
    tracker = _LossTracker(device, epoch, steps)
    n_seen, num_updates, start = 0, epoch * per_epoch, time.time()
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        batch = step.prepare(batch)
        last = i == steps - 1
        sync = (i + 1) % accum_steps == 0 or last
        with _no_sync(module, sync):
            with autocast(device, amp_dtype):
                loss, terms = step(batch)
            tracker.add(i, loss, terms)
            # host read; raises before the update if this step's loss is bad
            means = tracker.check() if (i + 1) % check_every == 0 or last else None
            _backward(loss if accum_steps == 1 else loss / accum_steps, loss_scaler)
        n_seen += step.batch_size(batch)
        if sync:
            _update(module, optimizer, loss_scaler, clip_grad)
            num_updates = epoch * per_epoch + i // accum_steps + 1
            if model_ema is not None:
                model_ema.update(unwrap_model(module))
            if on_update is not None:
                on_update(num_updates)
        if means is not None and misc.is_main_process():
            # check_every > 1: every read is logged (means over the steps since the last read)
            _log_step(bar, tb_writer, means, optimizer.param_groups[0]['lr'], num_updates,
                      log_every, force=last or check_every > 1)
    bar.close()
    return _epoch_stats(tracker, optimizer, n_seen, time.time() - start, device)


def _backward(loss: torch.Tensor, loss_scaler) -> None:
    (loss_scaler.scale(loss) if loss_scaler is not None else loss).backward()


def _update(module: nn.Module, optimizer: torch.optim.Optimizer, loss_scaler, clip_grad: Optional[float]) -> None:
    """Clip and apply the accumulated gradients, then clear them; with fp16's loss scaler: unscale before
    clipping, and let the scaler skip steps with inf/NaN gradients."""
    if loss_scaler is not None and clip_grad:
        loss_scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_(module.parameters(), clip_grad)
    if loss_scaler is not None:
        loss_scaler.step(optimizer)
        loss_scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _log_step(bar, tb_writer, means: Dict[str, float], lr: float, num_updates: int, log_every: int,
              force: bool) -> None:
    """Progress-bar postfix, and TensorBoard scalars every ``log_every`` updates (or when ``force``)."""
    if bar.disable is False:
        bar.set_postfix(loss=f'{means["loss"]:.4f}', lr=f'{lr:.2e}', refresh=False)
    if tb_writer is not None and (num_updates % log_every == 0 or force):
        for k, v in means.items():
            tb_writer.add_scalar(f'train/{k}', v, num_updates)
        tb_writer.add_scalar('train/lr', lr, num_updates)


def _epoch_stats(tracker: '_LossTracker', optimizer: torch.optim.Optimizer, n_seen: int, elapsed: float,
                 device: torch.device) -> Dict[str, float]:
    """The epoch's mean losses (averaged over processes), final lr, time and global img/s."""
    stats = tracker.epoch_means()
    stats['lr'] = optimizer.param_groups[0]['lr']
    stats['time'] = elapsed
    stats['img_per_sec'] = n_seen * misc.get_world_size() / max(elapsed, 1e-9)
    if misc.is_dist():
        keys = sorted(k for k in stats if k not in ('lr', 'time', 'img_per_sec'))
        t = misc.all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device))
        stats.update({k: v / misc.get_world_size() for k, v in zip(keys, t.tolist())})
    return stats


class _LossTracker:
    """Running sums of the loss and its logged terms, kept on the device.

    ``add`` reads nothing back: it adds the step's values to the window's sums and remembers the first
    step whose loss is NaN/inf. ``check`` reads them (one host sync; across processes, one all-reduce so
    that every rank stops together), raises ``NonFiniteLossError`` for a bad step, and returns the
    window's means for logging; ``epoch_means`` averages every checked step.
    """

    def __init__(self, device: torch.device, epoch: int, steps: int):
        self.epoch, self.steps = epoch, steps
        self.keys, self.window, self.count = None, None, 0  # device sums of the steps since the last check
        self.totals: Dict[str, float] = {}                   # host sums of the checked steps
        self.checked = 0
        self.first_bad = torch.full((), steps, dtype=torch.long, device=device)  # ``steps``: none yet
        self.bad_value = torch.zeros((), device=device)

    def add(self, step: int, loss: torch.Tensor, terms: Dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float().reshape(()) for t in (loss, *terms.values())])
        if self.keys is None:
            self.keys, self.window = ['loss', *terms], torch.zeros_like(values)
        self.window += values
        bad = ~torch.isfinite(values[0]) & (self.first_bad == self.steps)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.bad_value = torch.where(bad, values[0], self.bad_value)
        self.count += 1

    def check(self) -> Dict[str, float]:
        first_bad = int(misc.all_reduce_min(self.first_bad.clone()))  # the earliest on any process
        if first_bad < self.steps:
            value = float(self.bad_value) if int(self.first_bad) == first_bad else 'non-finite'
            raise NonFiniteLossError(
                f'loss is {value} at epoch {self.epoch + 1}, step {first_bad + 1}/{self.steps} (on at least one '
                'process); stopping. Lower --lr, set --clip-grad, or use --amp bf16 instead of fp16.')
        sums = dict(zip(self.keys, self.window.tolist()))
        self.window.zero_()
        for k, v in sums.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        n, self.count = self.count, 0
        self.checked += n
        return {k: v / n for k, v in sums.items()}

    def epoch_means(self) -> Dict[str, float]:
        return {k: v / self.checked for k, v in self.totals.items()}


def evaluate(data_loader: Iterable, model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             class_mask: Optional[torch.Tensor] = None,
             attack: Optional[Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
             desc: str = 'Test', progress: bool = True,
             evaluator: Optional[evaluation.Evaluator] = None) -> dict:
    """The statistics of ``evaluator`` (``evaluation.py``) over the whole loader: it is ``reset``, given every
    batch's ``update(logits, targets)``, and its ``compute()`` (over every process's shard) is returned.
    Without one, a fresh ``ClassificationEvaluator``: top-1/top-5 accuracy (%), mean cross-entropy, ``n``.

    * ``class_mask``: indices of the logit columns to keep (e.g. the 200 ImageNet-A/R classes); targets are
      then indices into the mask.
    * ``attack(model, images, targets) -> images``: applied per batch with gradients enabled, on the
      model in eval mode (e.g. FGSM/PGD).
    * Distributed: each process evaluates its own shard; the evaluator reduces over processes, so ``n`` is
      the total number of samples evaluated.
    """
    evaluator = evaluator or evaluation.ClassificationEvaluator()
    net = unwrap_model(model)  # no DDP forward: shards may differ in length and must not meet in collectives
    was_training = net.training
    net.eval()
    if class_mask is not None:
        class_mask = torch.as_tensor(class_mask, dtype=torch.long, device=device)
    evaluator.reset(device)
    try:
        for images, targets in _progress(data_loader, len(data_loader), desc, progress):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if attack is not None:
                with torch.enable_grad():
                    images = attack(net, images, targets).detach()
            with torch.no_grad(), autocast(device, amp_dtype):
                logits = net(images)
            logits = logits.float()
            if class_mask is not None:
                logits = logits[:, class_mask]
            evaluator.update(logits, targets)
    finally:
        net.train(was_training)
    return evaluator.compute()
