"""evaluation.py: the one interface every task's metrics share (classification, multi-label, the VL tasks),
the classification evaluator against a direct computation, what ranks epochs (``score``), and
engine.evaluate / main.py going through an evaluator whatever the task."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import engine
import main
from evaluation import EVALUATORS, ClassificationEvaluator, Evaluator, MultiLabelEvaluator
from vision_language.tasks import RetrievalEvaluator, VQAEvaluator

ALL = [ClassificationEvaluator, MultiLabelEvaluator, VQAEvaluator, RetrievalEvaluator]


@pytest.mark.parametrize('cls', ALL)
def test_every_evaluator_names_its_key_and_implements_the_interface(cls):
    ev = cls()
    assert isinstance(ev, Evaluator) and ev.key and ev.label and isinstance(ev.higher_is_better, bool)
    assert ev.score({}) is None  # no evaluation this epoch: nothing to rank


def test_classification_matches_a_direct_computation_over_batches():
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 7), torch.randint(0, 7, (10,))
    ev = ClassificationEvaluator()
    ev.update(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long))  # dropped by reset
    ev.reset()
    for lo, hi in ((0, 4), (4, 10)):
        ev.update(logits[lo:hi], targets[lo:hi])
    stats = ev.compute()
    top5 = logits.topk(5, 1).indices
    assert stats['n'] == 10 and stats['acc1'] == pytest.approx(100 * (logits.argmax(1) == targets).float().mean())
    assert stats['acc5'] == pytest.approx(100 * (top5 == targets[:, None]).any(1).float().mean())
    assert stats['loss'] == pytest.approx(F.cross_entropy(logits, targets).item())
    assert ev.compute() == stats  # computing twice changes nothing
    three = ClassificationEvaluator()
    three.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert three.compute()['acc5'] == 100.0  # fewer than 5 classes: top-5 is top-all


def test_score_ranks_by_the_key_and_the_ema_only_where_the_task_does():
    stats = {'acc1': 50.0, 'ema_acc1': 60.0, 'mAP': 40.0, 'ema_mAP': 45.0}
    assert ClassificationEvaluator().score(stats) == 50.0  # DeiT: the model's top-1
    assert MultiLabelEvaluator().score(stats) == 45.0      # the IDA release: the better of model and EMA
    assert MultiLabelEvaluator().score({'mAP': 40.0}) == 40.0
    assert VQAEvaluator().score({'mask_mean': 0.3, 'n': 8}) is None  # a split without answers


def test_summaries_are_the_consoles_lines():
    stats = {'acc1': 21.09375, 'acc5': 81.25, 'loss': 2.08731, 'n': 128}
    ev = ClassificationEvaluator()
    assert ev.summary(stats) == 'acc@1 21.09 acc@5 81.25 loss 2.0873 (n=128)'
    assert ev.result_line(stats, 'FMNIST') == 'acc@1 21.094 acc@5 81.250 loss 2.0873 on 128 images of FMNIST'
    ml = {'mAP': 40.28, 'mAP_plain': 37.6, 'CF1': 6.13, 'OF1': 6.37, 'loss': 0.5919, 'n': 128}
    assert MultiLabelEvaluator().result_line(ml, 'FMNIST_ML') == \
        'mAP 40.28 (plain 37.60) CF1 6.13 OF1 6.37 loss 0.5919 (n=128) on FMNIST_ML'
    assert RetrievalEvaluator().summary({'rsum': 433.333}) == 'R-sum 433.33'


def test_vqa_statistics_are_means_over_the_questions_each_covers():
    ev = VQAEvaluator()
    ev.reset()
    ev.update({'vqa_score': 0.5, 'mask_mean': 0.2}, torch.zeros(4, 3))
    ev.update({'vqa_score': 1.0}, torch.zeros(2, 3))  # a batch without the diagnostics
    stats = ev.compute()
    assert stats == pytest.approx({'vqa_score': 100 * (0.5 * 4 + 1.0 * 2) / 6, 'mask_mean': 0.2, 'n': 6})
    test_split = VQAEvaluator(has_answers=False)
    test_split.update({'vqa_score': 0.0, 'mask_mean': 0.1}, torch.zeros(2, 3))
    assert test_split.compute() == pytest.approx({'mask_mean': 0.1, 'n': 2})


def test_retrieval_recall_and_rsum():
    ev = RetrievalEvaluator()
    ev.update(torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.7]]), [0, 1, 1])  # 2 images x 3 captions
    stats = ev.compute()
    assert stats['tr_r1'] == stats['ir_r1'] == 100.0
    assert stats['rsum'] == pytest.approx(sum(v for k, v in stats.items() if k != 'rsum'))


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x.long().view(-1)]


def test_engine_evaluate_goes_through_the_evaluator_it_is_given_or_a_classification_one():
    torch.manual_seed(1)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(torch.arange(0, 3).float(), targets[:3]), (torch.arange(3, 6).float(), targets[3:])]
    model = _Fixed(logits)
    direct = ClassificationEvaluator()
    for x, y in loader:
        direct.update(logits[x.long()], y)
    assert engine.evaluate(loader, model, torch.device('cpu'), progress=False) == direct.compute()
    multi = [(x, F.one_hot(y, 4).float()) for x, y in loader]
    stats = engine.evaluate(multi, model, torch.device('cpu'), progress=False, evaluator=MultiLabelEvaluator())
    assert stats['n'] == 6 and 'mAP' in stats


@pytest.mark.parametrize('data_set, cls', [('FMNIST', ClassificationEvaluator), ('FMNIST_ML', MultiLabelEvaluator)])
def test_main_always_has_the_evaluator_of_the_task(data_set, cls):
    args = main.parse_args(['--data-set', data_set])
    assert main.evaluator_class(args) is cls and type(main.build_evaluator(args)) is cls
    assert set(EVALUATORS.values()) == {ClassificationEvaluator, MultiLabelEvaluator}
