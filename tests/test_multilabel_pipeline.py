"""The multi-label task through main.py (--data-set FMNIST_ML): training raises mAP far above chance, the report
file, the better of EMA/plain, early stop, and a crashed-and-resumed run equal to one left alone."""
import json
import os

import pytest
import torch

import datasets
import main
import models.ida  # noqa: F401  (registers ida_* with timm)
from evaluation import mean_average_precision

pytestmark = pytest.mark.skipif(not os.path.isdir(datasets.default_data_path('FMNIST')),
                                reason='apt-get install dataset-fashion-mnist')
COMMON = ['--data-set', 'FMNIST_ML', '--num-threads', '2', '--no-progress', '--batch-size', '32']


def _run(*argv):
    return main.run(main.parse_args([*COMMON, *map(str, argv)]))


def _chance_map(n_val):
    """The expected mAP of scores that ignore the image: each class's AP is about its share of positives."""
    ds, _ = datasets.build_dataset(False, main.parse_args([*COMMON, '--val-limit', str(n_val), '--input-size', '64',
                                                           '--in-chans', '3', '--mean', '0.5', '--std', '0.5']))
    targets = torch.stack([ds[i][1] for i in range(len(ds))]).numpy()
    return 100.0 * targets.mean(0).mean(), mean_average_precision(torch.rand(targets.shape).numpy(), targets)[0]


@pytest.mark.slow
def test_training_raises_map_far_above_chance(tmp_path):
    out = tmp_path / 'run'
    result = _run('--train-limit', 1024, '--val-limit', 512, '--epochs', 2, '--output_dir', out)
    prevalence, random_map = _chance_map(512)
    test = result['test']
    assert abs(random_map - prevalence) < 8  # what chance is here: about 30%
    assert test['mAP'] > prevalence + 25, (test['mAP'], prevalence)
    assert test['n'] == 512 and len(test['ap']) == 10 and test['mAP_plain'] <= test['mAP'] + 1e-9
    log = [json.loads(line) for line in (out / 'log.txt').read_text().splitlines()]
    assert [r['test_mAP'] for r in log][-1] == pytest.approx(test['mAP'])
    assert result['max_accuracy'] == pytest.approx(max(r['test_mAP'] for r in log))  # best epoch by mAP
    assert 'Trouser' in (out / 'report.md').read_text()


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_crash_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    """With cutout + RandAugment (global RNGs), EMA evaluated too (the better one decides the best epoch) and
    OneCycle: killed after epoch 1's checkpoint and resumed, the final weights are bit-identical."""
    flags = ['--train-limit', 96, '--val-limit', 64, '--epochs', 2, '--cutout', 0.5, '--aa', 'rand-m9-n2',
             '--model-ema', '--model-ema-decay', 0.9, '--model-ema-eval']
    _run(*flags, '--output_dir', tmp_path / 'a')
    log_epoch = main.log_epoch

    def crash_after_first(loop, epoch, *a):
        log_epoch(loop, epoch, *a)
        if epoch == 0:
            raise _Crash()
    monkeypatch.setattr(main, 'log_epoch', crash_after_first)
    with pytest.raises(_Crash):
        _run(*flags, '--output_dir', tmp_path / 'b')
    monkeypatch.setattr(main, 'log_epoch', log_epoch)
    _run(*flags, '--output_dir', tmp_path / 'b', '--resume', 'auto')
    a, b = (torch.load(tmp_path / d / 'checkpoint.pth', weights_only=True) for d in 'ab')
    for key in ('model', 'model_ema'):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a['best_metric'] == b['best_metric'] and a['best_metric']['key'] == 'mAP'
    rec = json.loads((tmp_path / 'a' / 'log.txt').read_text().splitlines()[-1])
    assert a['best_metric']['value'] >= max(rec['test_mAP'], rec['test_ema_mAP']) - 1e-9
    assert rec['max_accuracy'] == a['best_metric']['value']  # log.txt keeps its name for the best


def test_early_stop(tmp_path, monkeypatch):
    """--early-stop 1 stops once an epoch brings no new best (here every epoch after the first is made worse)."""
    evaluate = main.engine.evaluate
    calls = []

    def worse_each_time(*a, **k):
        stats = evaluate(*a, **k)
        calls.append(1)
        return {**stats, 'mAP': 50.0 - len(calls)}
    monkeypatch.setattr(main.engine, 'evaluate', worse_each_time)
    result = _run('--train-limit', 64, '--val-limit', 32, '--epochs', 5, '--early-stop', 1, '--output_dir', tmp_path)
    assert len(calls) == 2 and result['max_accuracy'] == 49.0


def test_attention_demo_draws_and_measures(tmp_path):
    """The demo draws class attention on canvases and measures its share on the items (random weights here)."""
    from demo import ida_attention
    out = tmp_path / 'maps.png'
    assert ida_attention.main(['--n', '2', '--measure', '3', '--out', str(out)]) == 0
    assert out.stat().st_size > 0
    model = ida_attention.timm.create_model('ida_light_test_resnet', num_classes=10).eval()
    maps = ida_attention.class_maps(model, torch.randn(3, 64, 64), 64)
    assert maps.shape == (10, 64, 64) and torch.allclose(maps.sum((1, 2)), torch.ones(10))
