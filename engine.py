"""One training epoch and one evaluation pass.

Nothing here depends on the model's name or kind: the model is called as
``model(images, **criterion.model_kwargs)`` and the criterion decides how to use what it returns
(see ``losses.py``).
"""
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import misc
from errors import NonFiniteLossError

__all__ = ['train_one_epoch', 'evaluate', 'autocast', 'BatchPriors', 'takes_prior', 'attach_prior_table',
           'PRIOR_SOURCES']


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile and DDP wrappers."""
    model = getattr(model, '_orig_mod', model)
    return model.module if isinstance(model, DistributedDataParallel) else model


#: Where a class prior comes from in prior-conditioned training (``--prior-source``).
PRIOR_SOURCES = ('classifier', 'table')


def takes_prior(model: nn.Module) -> bool:
    """Whether the model is steered by a prior: a top-down mode with a learned ``prompt`` (not Feedback,
    not a plain backbone)."""
    return getattr(_unwrap(model), 'prompt', None) is not None


def attach_prior_table(model: nn.Module, num_classes: int) -> nn.Parameter:
    """Give ``model`` a learned class-embedding table ``prior_table`` (num_classes, prior width), the class
    priors of ``--prior-source table``: a parameter of the model, so the optimizer, EMA, DDP and checkpoints
    hold it like any weight. Rows start as random directions, like the prompt."""
    prompt = getattr(model, 'prompt', None)
    if prompt is None:
        raise ValueError(f'{type(model).__name__} takes no prior; a prior table needs a top-down mode with a prompt')
    table = nn.Parameter(torch.randn(num_classes, prompt.shape[-1], device=prompt.device, dtype=prompt.dtype))
    model.register_parameter('prior_table', table)
    return table


class BatchPriors:
    """The per-sample prior vectors ``(B, C)`` of a batch of prior ids: class ``c >= 0`` gives class c's
    prior (its classifier row, ``class_prototypes()``, or its row of the learned ``prior_table``), ``-1`` the
    learned prompt. Built on the unwrapped model and evaluated outside the DDP forward; every row comes from
    one ``torch.where`` over the whole batch, so the prompt and the class priors are in every step's graph
    (DDP then always sees their gradients, zero or not)."""

    def __init__(self, model: nn.Module, source: str = 'classifier'):
        if source not in PRIOR_SOURCES:
            raise ValueError(f'prior source must be one of {PRIOR_SOURCES}, got {source!r}')
        self.model, self.source = _unwrap(model), source
        if not takes_prior(self.model):
            raise ValueError(f'{type(self.model).__name__} takes no prior')
        if self.class_rows() is None:
            raise ValueError('class priors need a linear classifier head (class_prototypes) or --prior-source table')

    def class_rows(self) -> Optional[torch.Tensor]:
        if self.source == 'table':
            return getattr(self.model, 'prior_table', None)
        return self.model.class_prototypes()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.class_rows()
        if ids.device.type == 'cpu' and ids.numel() and int(ids.max()) >= rows.shape[0]:  # no sync on devices
            raise ValueError(f'prior class {int(ids.max())} out of range for {rows.shape[0]} classes')
        chosen = rows[ids.clamp(min=0)]
        prompt = self.model.prompt.to(chosen.dtype).expand_as(chosen)
        return torch.where((ids >= 0)[:, None], chosen, prompt)


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


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int, *,
                    num_epochs: Optional[int] = None, lr_scheduler=None, sched_on_updates: bool = False,
                    amp_dtype: Optional[torch.dtype] = None, loss_scaler=None, clip_grad: Optional[float] = None,
                    model_ema=None, mixup_fn: Optional[Callable] = None, tb_writer=None, log_every: int = 50,
                    check_every: Optional[int] = None, progress: bool = True,
                    set_training_mode: bool = True, batch_priors: Optional[Callable] = None) -> Dict[str, float]:
    """Train for one pass over ``data_loader``; returns averages over this process's steps.

    Losses stay on the device and are read on the host only every ``check_every`` steps and at the end
    of the epoch (default: every step on CPU, every ``log_every`` steps elsewhere), so the hot loop has no
    host syncs. Batches of three, ``(images, targets, prior ids)`` (``datasets.PriorComposites``), call the
    model with ``prior=batch_priors(ids)`` (per-sample priors); without ``batch_priors`` (a model that takes no
    prior) the ids are ignored. A NaN/inf loss raises ``NonFiniteLossError`` on every rank at the next read, naming
    the first bad step, before anything is checkpointed: checkpoints stay those of the last good epoch.
    """
    model.train(set_training_mode)
    model_kwargs = getattr(criterion, 'model_kwargs', {}) or {}
    check_every = check_every or _default_check_every(device, log_every)
    steps = len(data_loader)
    desc = f'Epoch {epoch + 1}' + (f'/{num_epochs}' if num_epochs else '')
    bar = _progress(data_loader, steps, desc, progress)
    tracker = _LossTracker(device, epoch, steps)
    n_seen = 0
    start = time.time()
    for i, batch in enumerate(bar):
        images, targets, prior_ids = _split_batch(batch)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if prior_ids is not None:  # once: the priors and the criterion both read them
            prior_ids = prior_ids.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with autocast(device, amp_dtype):
            kwargs = model_kwargs
            if prior_ids is not None and batch_priors is not None:
                kwargs = {**model_kwargs, 'prior': batch_priors(prior_ids)}
            output = model(images, **kwargs)
            loss = criterion(output, targets) if prior_ids is None else criterion(output, targets, prior_ids)
        tracker.add(i, loss, getattr(criterion, 'last_terms', {}))
        last = i == steps - 1
        # host read; raises before the step if this step's loss is bad
        means = tracker.check() if (i + 1) % check_every == 0 or last else None
        _optimizer_step(model, loss, optimizer, loss_scaler, clip_grad)
        if model_ema is not None:
            model_ema.update(_unwrap(model))
        num_updates = epoch * steps + i + 1
        if lr_scheduler is not None and sched_on_updates:
            lr_scheduler.step_update(num_updates=num_updates)
        n_seen += images.shape[0]
        if means is not None and misc.is_main_process():
            # check_every > 1: every read is logged (means over the steps since the last read)
            _log_step(bar, tb_writer, means, optimizer.param_groups[0]['lr'], num_updates,
                      log_every, force=last or check_every > 1)
    bar.close()
    return _epoch_stats(tracker, optimizer, n_seen, time.time() - start, device)


def _optimizer_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, loss_scaler,
                    clip_grad: Optional[float]) -> None:
    """Backward and update; with fp16's loss scaler: scaled backward, unscale before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if loss_scaler is not None:
        loss_scaler.scale(loss).backward()
        if clip_grad:
            loss_scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        loss_scaler.step(optimizer)
        loss_scaler.update()
    else:
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()


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
             desc: str = 'Test', progress: bool = True, evaluator=None) -> Dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over the whole loader.

    * ``evaluator``: another task's metrics (e.g. ``multilabel_metrics.MultiLabelEvaluator``): it is ``reset()``,
      given every batch's ``update(logits, targets)``, and its ``compute()`` (which gathers the processes' shards)
      is returned instead.

    * ``class_mask``: indices of the logit columns to keep (e.g. the 200 ImageNet-A/R classes); targets are
      then indices into the mask.
    * ``attack(model, images, targets) -> images``: applied per batch with gradients enabled, on the
      model in eval mode (e.g. FGSM/PGD).
    * Distributed: each process evaluates its own shard; sums are all-reduced, so ``n`` is the total
      number of samples evaluated.
    """
    net = _unwrap(model)  # no DDP forward: shards may differ in length and must not meet in collectives
    was_training = net.training
    net.eval()
    if class_mask is not None:
        class_mask = torch.as_tensor(class_mask, dtype=torch.long, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, correct1, correct5, n
    if evaluator is not None:
        evaluator.reset()
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
            if evaluator is not None:
                evaluator.update(logits, targets)
                continue
            loss = F.cross_entropy(logits, targets, reduction='sum')
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(targets[:, None])
            sums += torch.stack([loss.double(), hit[:, :1].sum().double(), hit.sum().double(),
                                 torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
    finally:
        net.train(was_training)
    if evaluator is not None:
        return evaluator.compute()
    misc.all_reduce_sum(sums)
    loss_sum, c1, c5, n = sums.tolist()
    n_safe = max(n, 1.0)
    return {'acc1': 100.0 * c1 / n_safe, 'acc5': 100.0 * c5 / n_safe, 'loss': loss_sum / n_safe, 'n': int(n)}
