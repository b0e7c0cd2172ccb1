"""Multi-label metrics against hand computations and an independent brute-force definition."""
import json
import math

import numpy as np
import pytest
import torch

from evaluation import MultiLabelEvaluator, average_precision, mean_average_precision, threshold_scores, \
    write_multilabel_report


def test_ap_by_hand_interpolated_differs_from_plain():
    # ranked: neg, pos, pos, neg, pos -> precisions at the positives 1/2, 2/3, 3/5
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([0, 1, 1, 0, 1])
    assert average_precision(scores, targets, interpolated=False) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    # envelope: the first positive's precision 1/2 is lifted to 2/3 (reached at a higher recall)
    assert average_precision(scores, targets, interpolated=True) == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)


def test_ap_perfect_and_empty_class():
    assert average_precision(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert math.isnan(average_precision(np.array([0.9, 0.1]), np.array([0, 0])))
    m, per = mean_average_precision(np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]]))
    assert m == 100.0 and math.isnan(per[1])  # a class without positives is left out of the mean


def _brute_force_ap(scores, targets, interpolated):
    """AP from its definition: precision at each positive's rank, or the best precision at that rank or below."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    prec = [sum(targets[j] for j in order[:r + 1]) / (r + 1) for r in range(len(order))]
    ranks = [r for r, i in enumerate(order) if targets[i]]
    vals = [max(prec[r:]) if interpolated else prec[r] for r in ranks]
    return sum(vals) / len(vals)


@pytest.mark.parametrize('interpolated', [True, False])
def test_ap_matches_definition_on_random_data(interpolated):
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.random(30)  # distinct scores: the ranking is unambiguous
        targets = (rng.random(30) < 0.3).astype(int)
        targets[0] = 1
        assert average_precision(scores, targets, interpolated) == pytest.approx(
            _brute_force_ap(scores, targets, interpolated), abs=1e-12)


def test_threshold_scores_by_hand():
    scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.8], [0.6, 0.1, 0.4]])
    targets = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    s = threshold_scores(scores, targets, 0.5)
    # class 0: predicted {0, 2}, tp 1, gt 2; class 1: predicted {0, 1}, tp 1, gt 1; class 2: predicted {1}, tp 1, gt 2
    cp, cr = (1 / 2 + 1 / 2 + 1) / 3, (1 / 2 + 1 + 1 / 2) / 3
    assert s['CP'] == pytest.approx(100 * cp) and s['CR'] == pytest.approx(100 * cr)
    assert s['CF1'] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert s['OP'] == pytest.approx(100 * 3 / 5) and s['OR'] == pytest.approx(100 * 3 / 5)
    assert s['OF1'] == pytest.approx(100 * 3 / 5)


def test_evaluator_and_report(tmp_path):
    logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ev = MultiLabelEvaluator()
    ev.update(logits[:2], targets[:2])
    ev.update(logits[2:], targets[2:])
    stats = ev.compute()
    assert stats['n'] == 3 and stats['mAP'] == 100.0 and stats['ap'] == [100.0, 100.0]
    expected_loss = torch.nn.MultiLabelSoftMarginLoss(reduction='sum')(logits, targets).item() / 3
    assert stats['loss'] == pytest.approx(expected_loss)
    write_multilabel_report(str(tmp_path / 'report.md'), stats, ['a', 'b'])
    text = (tmp_path / 'report.md').read_text()
    assert 'mAP 100.00' in text and '| b | 100.00 | 100.00 |' in text
    assert json.loads((tmp_path / 'report.md.json').read_text())['classes'] == ['a', 'b']
