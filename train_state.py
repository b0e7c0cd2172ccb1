"""The state of a training run and its checkpoint file: atomic writes, safe reads, exact resume.

``TrainState`` holds everything a run needs to continue exactly where it stopped: the model (unwrapped:
no DDP or torch.compile prefixes in the file), its EMA, the optimizer, the lr scheduler, the AMP loss
scaler, the last finished epoch, the best test metric so far (under the name of its evaluator's ``key``:
``acc1``, ``mAP``, ``vqa_score``, ...) and the RNG state of every process.
``save`` writes the checkpoint atomically (a run killed mid-write leaves the previous file intact);
``resume`` reads one with ``torch.load(weights_only=True)`` (``models.checkpoint``) and restores it.

The file layout is fixed (``CHECKPOINT_KEYS``; ``best_model.pth``: ``BEST_KEYS`` + ``best_metric``), so
files written by every version of ``main.py`` resume: those from before the best metric was named hold a bare
``max_accuracy`` (read as the run's own metric). Everything written is tensors, numbers, strings and
containers: the files load with ``weights_only=True``.
"""
import logging
import math
import operator
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import misc
from models.checkpoint import check_compatible, load_checkpoint_file, select_state_dict

__all__ = ['TrainState', 'CHECKPOINT_KEYS', 'BEST_KEYS', 'LEGACY_BEST_KEY', 'load_model_weights', 'has_training_state',
           'get_rng_state', 'set_rng_state', 'gather_rng_states']

_logger = logging.getLogger('absvit')

#: Every key a training checkpoint may hold (``model_ema`` only with an EMA, ``scaler`` only with fp16 AMP).
CHECKPOINT_KEYS = ('model', 'optimizer', 'lr_scheduler', 'epoch', 'best_metric', 'args', 'rng', 'model_ema',
                   'scaler')
#: What older checkpoints hold instead of ``best_metric``: the bare best value, whatever its metric.
LEGACY_BEST_KEY = 'max_accuracy'
#: A file with these holds a training state; without them, weights only (e.g. a release checkpoint).
TRAINING_KEYS = ('optimizer', 'lr_scheduler', 'epoch')
#: What best_model.pth keeps of the checkpoint of its epoch (plus ``best_metric``).
BEST_KEYS = ('model', 'model_ema', 'epoch', 'args')
#: The best before any evaluation, by direction: what the first evaluation must beat. The metrics ranked
#: higher-is-better are percentages or sums of them, so 0 (an evaluation at 0 makes no best model, as before).
START_BEST = {True: 0.0, False: math.inf}
#: Whether a value beats the best so far, by direction (a tie does not: the earlier epoch stays the best).
BEATS = {True: operator.gt, False: operator.lt}


def has_training_state(checkpoint: Dict[str, Any]) -> bool:
    return all(k in checkpoint for k in TRAINING_KEYS)


def load_model_weights(path: str, model: nn.Module, use_ema: bool = False) -> Tuple[Dict[str, Any], str]:
    """Read ``path`` safely and load its weights strictly into ``model`` (one error listing every
    mismatched key); returns ``(checkpoint, which)`` with ``which`` the entry loaded (``model``, ...)."""
    checkpoint = load_checkpoint_file(path)
    state_dict, which = select_state_dict(checkpoint, use_ema=use_ema)
    check_compatible(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    return checkpoint, which


class TrainState:
    """Model, EMA, optimizer, scheduler, loss scaler, epoch, best metric and RNG states of one run.

    ``best_key`` and ``higher_is_better`` are those of the run's evaluator (``evaluation.Evaluator``): the
    best is kept under that name, so a checkpoint says what it ranked by.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler,
                 loss_scaler: Optional[torch.amp.GradScaler] = None, model_ema=None, best_key: str = 'acc1',
                 higher_is_better: bool = True):
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.loss_scaler, self.model_ema = loss_scaler, model_ema
        self.epoch = -1             # the last finished epoch (0-based); -1: none yet
        self.best_key, self.higher_is_better = best_key, higher_is_better
        self.best_metric = START_BEST[higher_is_better]  # the best ``best_key`` so far
        self.rng_state: Optional[Dict[str, Any]] = None  # this process's generators, set by restore_rng()

    @property
    def start_epoch(self) -> int:
        return self.epoch + 1

    def update_best(self, value: Optional[float]) -> bool:
        """Record ``value`` (the evaluator's ``score``; None: no evaluation) if it beats the best so far;
        returns whether it did."""
        improved = value is not None and BEATS[self.higher_is_better](value, self.best_metric)
        if improved:
            self.best_metric = float(value)
        return improved

    def best_record(self) -> Dict[str, Any]:
        """The best as checkpoints hold it: the metric's name and its value."""
        return {'key': self.best_key, 'value': self.best_metric}

    def _read_best(self, checkpoint: Dict[str, Any], source: str) -> float:
        """The best of ``checkpoint`` for this run's metric: its ``best_metric`` when it ranked by the same key
        (another key, e.g. a checkpoint of another task: the best restarts), else an older file's bare value."""
        record = checkpoint.get('best_metric')
        if not isinstance(record, dict):
            return float(checkpoint.get(LEGACY_BEST_KEY, START_BEST[self.higher_is_better]))
        if record.get('key') != self.best_key:
            _logger.warning(f"{source} ranked epochs by {record.get('key')}, this run by {self.best_key}: "
                            'the best restarts')
            return START_BEST[self.higher_is_better]
        return float(record['value'])

    def state_dict(self, args, rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The checkpoint: ``rngs`` is every rank's RNG state (``gather_rng_states``), ``args`` the run's."""
        state = {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                 'lr_scheduler': self.lr_scheduler.state_dict(), 'epoch': self.epoch,
                 'best_metric': self.best_record(), 'args': misc.plain_args(args), 'rng': rngs}
        if self.model_ema is not None:
            state['model_ema'] = self.model_ema.module.state_dict()
        if self.loss_scaler is not None:
            state['scaler'] = self.loss_scaler.state_dict()
        return state

    def save(self, path: str, args, rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Write the checkpoint atomically; returns it (for ``save_best``)."""
        state = self.state_dict(args, rngs)
        misc.save_atomic(state, path)
        return state

    def save_best(self, path: str, checkpoint: Dict[str, Any]) -> None:
        """Write the weights of ``checkpoint`` (what ``save`` returned) as the best model."""
        best = {k: checkpoint[k] for k in BEST_KEYS if k in checkpoint}
        best['best_metric'] = self.best_record()
        misc.save_atomic(best, path)

    def resume(self, path: str, rank: int = 0, world: int = 1) -> bool:
        """Load the weights of ``path`` and, when it holds one, the training state; returns whether it did."""
        checkpoint, which = load_model_weights(path, self.model)
        if not has_training_state(checkpoint):
            _logger.info(f"loaded '{which}' weights from {path} (no training state: starting at epoch 1)")
            return False
        self.load_state_dict(checkpoint, rank, world, source=path)
        _logger.info(f'resumed from {path} (epoch {self.start_epoch} done, best {self.best_key} '
                     f'{self.best_metric:.2f})')
        return True

    def load_state_dict(self, checkpoint: Dict[str, Any], rank: int = 0, world: int = 1,
                        source: str = 'the checkpoint') -> None:
        """Restore everything but the model weights (``load_model_weights`` loads those)."""
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.lr_scheduler.load_state_dict(checkpoint['lr_scheduler'])
        if self.loss_scaler is not None and 'scaler' in checkpoint:
            self.loss_scaler.load_state_dict(checkpoint['scaler'])
        if self.model_ema is not None:
            if isinstance(checkpoint.get('model_ema'), dict):
                self.model_ema.module.load_state_dict(checkpoint['model_ema'])
            else:
                _logger.warning(f'{source} has no EMA weights; the EMA restarts from the model weights')
                self.model_ema.module.load_state_dict(self.model.state_dict())
        self.epoch = int(checkpoint['epoch'])
        self.best_metric = self._read_best(checkpoint, source)
        rngs = checkpoint.get('rng')
        if isinstance(rngs, list) and len(rngs) == world:
            self.rng_state = rngs[rank]
        else:
            _logger.warning('the checkpoint has no RNG state for this world size: the resumed run will not '
                            'be bit-identical to an uninterrupted one')

    def restore_rng(self) -> None:
        """Put back the generators of the resumed run: the last thing before the first step, so that
        nothing else draws from them in between."""
        if self.rng_state is not None:
            set_rng_state(self.rng_state)


# ------------------------------------------------------------------------------------------------
# RNG state: every generator a training step draws from, in weights_only-loadable form.

def get_rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'name': np_state[0], 'keys': torch.from_numpy(np_state[1].astype(np.int64)),
                  'pos': int(np_state[2]), 'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': {'version': py_state[0], 'state': list(py_state[1]), 'gauss_next': py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss_next']))
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG state, as a list indexed by rank (collective: every rank must call it)."""
    state = get_rng_state()
    if not misc.is_dist():
        return [state]
    out: List[Any] = [None] * misc.get_world_size()
    dist.all_gather_object(out, state)
    return out
