"""Evaluators: the one path from a model's outputs to test statistics, the best epoch and the report.

Every task's metrics share one small interface (``Evaluator``): ``reset``, ``update(outputs, targets)`` per
batch, ``compute()`` -> statistics (every process's shard included), ``summary(stats)`` for the console, and
``write_report`` for a file of its own where the task has one. ``key`` names the statistic that ranks
evaluations: ``TrainState`` keeps the best under that name and ``best_model.pth`` follows it.

* ``ClassificationEvaluator``: top-1/top-5 accuracy and mean cross-entropy (single-label data, and what
  ``engine.evaluate`` uses when it is given nothing else, e.g. by the robustness benchmarks).
* ``MultiLabelEvaluator``: mAP (interpolated, as the IDA release reports it, and plain), per-class AP,
  CP/CR/CF1 and OP/OR/OF1 at a score threshold, and a Markdown/JSON report.
* The vision-language tasks' evaluators (VQA score, Flickr30K recall) live with their tasks
  (``vision_language/tasks.py``) and subclass ``Evaluator``.

A top-level module (next to ``engine.py``, which calls it) because it needs neither the datasets nor the models:
outputs and targets in, numbers out.
"""
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import misc

__all__ = ['Evaluator', 'ClassificationEvaluator', 'MultiLabelEvaluator', 'EVALUATORS', 'average_precision',
           'mean_average_precision', 'threshold_scores', 'write_multilabel_report']


class Evaluator(ABC):
    """What every task's metrics provide.

    ``key``: the statistic that ranks evaluations (the best epoch); ``label``: its name on the console;
    ``higher_is_better``: its direction; ``ranks_ema``: whether an evaluated EMA (``ema_<key>``, which
    ``main.py`` adds to the statistics) competes with the model for the best, as the IDA release keeps the
    better of the two, rather than the model alone, as DeiT does.
    """
    key: str
    label: str
    higher_is_better = True
    ranks_ema = False

    @abstractmethod
    def reset(self, device: Optional[torch.device] = None) -> None:
        """Start a new evaluation; running sums that are all-reduced live on ``device``."""

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None:
        """Add one batch (this process's)."""

    @abstractmethod
    def compute(self) -> Dict[str, Any]:
        """The statistics of everything added since ``reset``, over every process (collective)."""

    def score(self, stats: Dict[str, Any]) -> Optional[float]:
        """The figure that ranks ``stats`` among a run's evaluations; None when there is none (no evaluation
        this epoch, or a split without answers)."""
        names = (self.key, f'ema_{self.key}') if self.ranks_ema else (self.key,)
        values = [stats[k] for k in names if stats.get(k) is not None]
        if not values:
            return None
        return max(values) if self.higher_is_better else min(values)

    def summary(self, stats: Dict[str, Any]) -> str:
        """One line for the console."""
        return f'{self.label} {stats[self.key]:.2f}'

    def result_line(self, stats: Dict[str, Any], source: str) -> str:
        """The line of an evaluation-only run on ``source`` (the data set's name)."""
        return f'{self.summary(stats)} on {source}'

    def write_report(self, out_dir: Path, stats: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> None:
        """A report file in ``out_dir`` beside log.txt, for figures that do not fit one line (by default none)."""


class ClassificationEvaluator(Evaluator):
    """Top-1/top-5 accuracy (%) and mean cross-entropy of single-label targets (class indices).

    Sums (loss x n, top-1 hits, top-5 hits, n) stay on the device and are all-reduced once by ``compute``,
    so shards of different lengths give the figures of the whole set (``n``: samples evaluated). With fewer
    than 5 classes, top-5 is top-all.
    """
    key, label = 'acc1', 'acc@1'

    def __init__(self):
        self.reset()

    def reset(self, device: Optional[torch.device] = None) -> None:
        self._sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        loss = F.cross_entropy(outputs, targets, reduction='sum')
        hit = outputs.topk(min(5, outputs.shape[1]), dim=1).indices.eq(targets[:, None])
        n = torch.tensor(float(len(targets)), dtype=torch.float64, device=self._sums.device)
        self._sums += torch.stack([loss.double(), hit[:, :1].sum().double(), hit.sum().double(), n])

    def compute(self) -> Dict[str, Any]:
        loss_sum, c1, c5, n = misc.all_reduce_sum(self._sums.clone()).tolist()
        n_safe = max(n, 1.0)
        return {'acc1': 100.0 * c1 / n_safe, 'acc5': 100.0 * c5 / n_safe, 'loss': loss_sum / n_safe, 'n': int(n)}

    def summary(self, stats: Dict[str, Any]) -> str:
        return f'acc@1 {stats["acc1"]:.2f} acc@5 {stats["acc5"]:.2f} loss {stats["loss"]:.4f} (n={stats["n"]})'

    def result_line(self, stats: Dict[str, Any], source: str) -> str:
        return (f'acc@1 {stats["acc1"]:.3f} acc@5 {stats["acc5"]:.3f} loss {stats["loss"]:.4f} '
                f'on {stats["n"]} images of {source}')


# ------------------------------------------------------------------------------------------------
# Multi-label: AP needs the whole ranking, so scores are collected and everything is computed at the end.

def _ranked_hits(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Targets of one class sorted by decreasing score; ties keep the data order (a stable sort) so that results
    do not depend on the sort algorithm."""
    order = np.argsort(-scores, kind='stable')
    return targets[order] > 0


def average_precision(scores: np.ndarray, targets: np.ndarray, interpolated: bool = True) -> float:
    """AP of one class in [0, 1]; nan when the class has no positive.

    ``interpolated`` (the release's ``voc_ap``): the area under the precision envelope, i.e. precision at
    each recall replaced by the best precision at any higher recall (VOC 2010+ style, all points).
    Plain: the mean of the precisions at the ranks of the positives (no envelope), which is lower whenever
    the precision curve rises somewhere.
    """
    hits = _ranked_hits(np.asarray(scores, dtype=np.float64), np.asarray(targets))
    npos = int(hits.sum())
    if npos == 0:
        return float('nan')
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    if not interpolated:
        return float(precision[hits].sum() / npos)
    recall = tp / npos
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]   # the envelope: best precision at this recall or beyond
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, interpolated: bool = True):
    """``(mAP in %, per-class AP in %)``; classes without a positive get nan and are left out of the mean
    (the release would return nan for the whole mAP)."""
    aps = np.array([average_precision(scores[:, c], targets[:, c], interpolated) for c in range(scores.shape[1])])
    valid = ~np.isnan(aps)
    return (100.0 * float(aps[valid].mean()) if valid.any() else float('nan')), 100.0 * aps


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def threshold_scores(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> Dict[str, float]:
    """CP, CR, CF1 (per-class precision/recall averaged over classes, F1 of the averages) and OP, OR, OF1
    (over all decisions pooled), in %, for predictions ``score >= threshold``. A class never predicted counts
    precision 0 (0/0 is undefined, and a head that never fires should not be rewarded for it)."""
    pred, gt = scores >= threshold, targets > 0
    tp = (pred & gt).sum(0).astype(np.float64)
    n_pred, n_gt = pred.sum(0).astype(np.float64), gt.sum(0).astype(np.float64)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    cr = float(np.mean(np.divide(tp, n_gt, out=np.zeros_like(tp), where=n_gt > 0)))
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0
    orr = float(tp.sum() / n_gt.sum()) if n_gt.sum() else 0.0
    return {k: 100.0 * v for k, v in dict(CP=cp, CR=cr, CF1=_f1(cp, cr), OP=op, OR=orr, OF1=_f1(op, orr)).items()}


class MultiLabelEvaluator(Evaluator):
    """Collects (sigmoid scores, multi-hot targets) batch by batch; ``compute`` gathers every process's shard
    and returns the test statistics.

    Ranked by ``mAP``, the better of the model and its EMA when both were evaluated (the IDA release keeps
    that one). The loss reported is the mean over images of ``MultiLabelSoftMarginLoss`` (sum over
    classes / K, i.e. the release's per-image loss).
    """
    key, label = 'mAP', 'mAP'
    ranks_ema = True

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.reset()

    def reset(self, device: Optional[torch.device] = None) -> None:
        self._scores: List[torch.Tensor] = []
        self._targets: List[torch.Tensor] = []
        self._loss = 0.0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = outputs.detach().float(), targets.detach().float()
        self._loss += float(F.multilabel_soft_margin_loss(logits, targets, reduction='sum'))
        self._scores.append(torch.sigmoid(logits).cpu())
        self._targets.append(targets.cpu())

    def _gathered(self):
        """Every process's shard (shards differ in length, so objects are gathered, not tensors)."""
        scores = torch.cat(self._scores).numpy() if self._scores else np.zeros((0, 0))
        targets = torch.cat(self._targets).numpy() if self._targets else np.zeros((0, 0))
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return scores, targets, self._loss
        parts: List = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (scores, targets, self._loss))
        parts = [p for p in parts if len(p[0])]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                sum(p[2] for p in parts))

    def compute(self) -> Dict[str, Any]:
        scores, targets, loss = self._gathered()
        n = len(scores)
        m_ap, per_class = mean_average_precision(scores, targets, interpolated=True)
        m_ap_plain, per_class_plain = mean_average_precision(scores, targets, interpolated=False)
        stats: Dict[str, Any] = {'mAP': m_ap, 'mAP_plain': m_ap_plain,
                                 **threshold_scores(scores, targets, self.threshold),
                                 'loss': loss / max(n, 1), 'n': n}
        stats['ap'] = [None if math.isnan(v) else float(v) for v in per_class]
        stats['ap_plain'] = [None if math.isnan(v) else float(v) for v in per_class_plain]
        return stats

    def summary(self, stats: Dict[str, Any]) -> str:
        """One line for the console (``ema_`` statistics too, when the EMA was evaluated)."""
        line = (f"mAP {stats['mAP']:.2f} (plain {stats['mAP_plain']:.2f}) CF1 {stats['CF1']:.2f} "
                f"OF1 {stats['OF1']:.2f} loss {stats['loss']:.4f} (n={stats['n']})")
        return line + (f"; EMA mAP {stats['ema_mAP']:.2f}" if 'ema_mAP' in stats else '')

    def write_report(self, out_dir: Path, stats: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> None:
        """``out_dir/report.md`` (and ``.json``): the last evaluation with per-class AP."""
        write_multilabel_report(str(Path(out_dir) / 'report.md'), stats, class_names)


def write_multilabel_report(path: str, stats: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> None:
    """A Markdown report: the summary line and per-class AP (interpolated, plain), plus ``path + '.json'``."""
    ap, ap_plain = stats['ap'], stats['ap_plain']
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(ap))]
    fmt = lambda v: 'n/a' if v is None else f'{v:.2f}'  # noqa: E731
    lines = [f"mAP {stats['mAP']:.2f} (plain AP {stats['mAP_plain']:.2f}) on {stats['n']} images", '',
             '| CP | CR | CF1 | OP | OR | OF1 |', '|---|---|---|---|---|---|',
             '| ' + ' | '.join(f'{stats[k]:.2f}' for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')) + ' |', '',
             '| class | AP | plain AP |', '|---|---|---|']
    lines += [f'| {n} | {fmt(a)} | {fmt(b)} |' for n, a, b in zip(names, ap, ap_plain)]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(path + '.json', 'w') as f:
        json.dump({**stats, 'classes': names}, f, indent=1)


#: The evaluator of each task of ``datasets.dataset_task`` (what ``main.py`` builds for ``--data-set``).
EVALUATORS = {'classification': ClassificationEvaluator, 'multilabel': MultiLabelEvaluator}
