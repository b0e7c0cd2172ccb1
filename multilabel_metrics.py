"""Multi-label metrics: mAP (interpolated, as the IDA release reports it, and plain), per-class AP, CP/CR/CF1 and
OP/OR/OF1 at a score threshold, and a report file.

A top-level module (next to ``engine.py``, which calls it) because it needs neither the datasets nor the models:
scores and multi-hot targets in, numbers out. ``MultiLabelEvaluator`` is what ``engine.evaluate`` is given for a
multi-label ``--data-set``: it collects sigmoid scores per batch, gathers every process's shard and computes
everything once at the end (AP needs the whole ranking, so it cannot be summed over batches).
"""
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = ['average_precision', 'mean_average_precision', 'threshold_scores', 'MultiLabelEvaluator',
           'write_report']


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


class MultiLabelEvaluator:
    """Collects (sigmoid scores, multi-hot targets) batch by batch; ``compute`` returns the test statistics.

    ``key`` names the statistic that decides the best epoch (``mAP``). The loss reported is the mean over
    images of ``MultiLabelSoftMarginLoss`` (sum over classes / K, i.e. the release's per-image loss).
    """
    key = 'mAP'

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._scores: List[torch.Tensor] = []
        self._targets: List[torch.Tensor] = []
        self._loss = 0.0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.detach().float(), targets.detach().float()
        self._loss += float(torch.nn.functional.multilabel_soft_margin_loss(logits, targets, reduction='sum'))
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

    def compute(self) -> Dict[str, object]:
        scores, targets, loss = self._gathered()
        n = len(scores)
        m_ap, per_class = mean_average_precision(scores, targets, interpolated=True)
        m_ap_plain, per_class_plain = mean_average_precision(scores, targets, interpolated=False)
        stats: Dict[str, object] = {'mAP': m_ap, 'mAP_plain': m_ap_plain,
                                    **threshold_scores(scores, targets, self.threshold),
                                    'loss': loss / max(n, 1), 'n': n}
        stats['ap'] = [None if math.isnan(v) else float(v) for v in per_class]
        stats['ap_plain'] = [None if math.isnan(v) else float(v) for v in per_class_plain]
        return stats

    @staticmethod
    def summary(stats: Dict[str, object]) -> str:
        """One line for the console (``ema_`` statistics too, when the EMA was evaluated)."""
        line = (f"mAP {stats['mAP']:.2f} (plain {stats['mAP_plain']:.2f}) CF1 {stats['CF1']:.2f} "
                f"OF1 {stats['OF1']:.2f} loss {stats['loss']:.4f} (n={stats['n']})")
        return line + (f"; EMA mAP {stats['ema_mAP']:.2f}" if 'ema_mAP' in stats else '')


def write_report(path: str, stats: Dict[str, object], class_names: Optional[Sequence[str]] = None) -> None:
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
