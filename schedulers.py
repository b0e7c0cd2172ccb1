"""Learning-rate schedules that timm's ``create_scheduler_v2`` lacks, with timm's scheduler interface.

``OneCycleSchedule`` is PyTorch's ``OneCycleLR`` with its defaults (cosine annealing, two phases, initial lr
max / 25, final lr initial / 1e4, momentum or Adam's beta1 cycled 0.95 -> 0.85 -> 0.95), which the IDA release
runs (max lr 1e-4, 20% warm-up). It is written as a closed form in the update count rather than wrapping
``OneCycleLR``, because ``main.py`` drives schedules by ``step_update(num_updates)`` (so a resumed run only has to
say how many updates were done) and ``OneCycleLR`` keeps a step counter instead. ``tests/test_multilabel_pipeline.py``
checks it against ``OneCycleLR`` step by step.
"""
import math
from typing import Any, Dict

import torch

__all__ = ['OneCycleSchedule']


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class OneCycleSchedule:
    """One cycle over ``total_steps`` updates: up to ``max_lr`` over the first ``pct_start``, then down."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.2,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, base_momentum: float = 0.85,
                 max_momentum: float = 0.95):
        self.optimizer, self.max_lr, self.total_steps = optimizer, max_lr, int(total_steps)
        self.initial_lr = max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.peak = float(pct_start * self.total_steps) - 1
        self.momenta = (max_momentum, base_momentum)
        self.step_update(0)

    def values(self, num_updates: int):
        """``(lr, momentum)`` after ``num_updates`` updates (past the end: the final values)."""
        step = min(num_updates, self.total_steps - 1)
        hi, lo = self.momenta
        if step <= self.peak:
            pct = step / self.peak if self.peak > 0 else 1.0
            return _cos(self.initial_lr, self.max_lr, pct), _cos(hi, lo, pct)
        pct = (step - self.peak) / (self.total_steps - 1 - self.peak)
        return _cos(self.max_lr, self.min_lr, pct), _cos(lo, hi, pct)

    def step_update(self, num_updates: int, metric=None) -> None:
        lr, momentum = self.values(num_updates)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
            if 'betas' in group:
                group['betas'] = (momentum, *group['betas'][1:])
            elif 'momentum' in group:
                group['momentum'] = momentum

    def step(self, epoch: int, metric=None) -> None:
        """Per-epoch steps do nothing: the cycle is defined in updates (run with ``--sched-on-updates``)."""

    def state_dict(self) -> Dict[str, Any]:
        return {}  # a closed form: the update count (restored by main.resume) is the whole state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
