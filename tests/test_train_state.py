"""train_state.TrainState: the checkpoint layout, exact restore of every part (RNG included), atomic
writes, weights-only files, the best metric under its evaluator's key (older files' bare max_accuracy
still read), and a checkpoint in the layout main.py wrote before TrainState existed resuming bit-exactly
through main.py."""
import argparse
import os
import random

import numpy as np
import pytest
import timm
import torch
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

import main
import misc
import train_state
from test_pipeline_helpers import needs_fmnist, read_log
from train_state import BEST_KEYS, CHECKPOINT_KEYS, LEGACY_BEST_KEY, TrainState

#: The keys main.py wrote by hand before TrainState (scaler only with fp16 AMP, model_ema only with an EMA).
OLD_LAYOUT = ('model', 'optimizer', 'lr_scheduler', 'epoch', 'max_accuracy', 'args', 'rng', 'model_ema', 'scaler')


def _state(seed=0, with_scaler=True, **best):
    torch.manual_seed(seed)
    model = timm.create_model('vit_micro_patch4_28_gap', num_classes=3, embed_dim=16, depth=1, num_heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=4, warmup_epochs=1, warmup_lr=1e-4,
                                       step_on_epochs=False, updates_per_epoch=3)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10) if with_scaler else None
    return TrainState(model, optimizer, scheduler, loss_scaler=scaler, model_ema=ModelEmaV3(model, decay=0.5),
                      **best)


def _train_steps(state, n=3):
    for i in range(n):
        loss = state.model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.lr_scheduler.step_update(num_updates=i + 1)
        state.model_ema.update(state.model)
    state.loss_scaler.scale(torch.ones(()))  # the scaler's state starts with its first use
    state.loss_scaler.update(new_scale=123.0)


def _assert_tensors_equal(a, b):
    assert type(a) is type(b) or (torch.is_tensor(a) and torch.is_tensor(b))
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_tensors_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_tensors_equal(x, y)
    else:
        assert a == b


def test_save_then_resume_restores_every_part_exactly(tmp_path):
    src = _state(seed=0)
    _train_steps(src)
    src.epoch, src.best_metric = 2, 71.5
    args = argparse.Namespace(model='vit_micro_patch4_28_gap', lr=1e-2, betas=(0.9, 0.99), output_dir=tmp_path)
    path = str(tmp_path / 'checkpoint.pth')
    written = src.save(path, args, train_state.gather_rng_states())
    draws_after_save = (torch.rand(3), np.random.rand(3), random.random())  # what the uninterrupted run draws next

    dst = _state(seed=1)  # other initial weights: everything must come from the file
    assert dst.resume(path) is True
    assert (dst.epoch, dst.start_epoch, dst.best_metric) == (2, 3, 71.5)
    for part in ('model', 'optimizer', 'lr_scheduler'):
        _assert_tensors_equal(getattr(src, part).state_dict(), getattr(dst, part).state_dict())
    _assert_tensors_equal(src.model_ema.module.state_dict(), dst.model_ema.module.state_dict())
    assert dst.loss_scaler.get_scale() == 123.0
    torch.manual_seed(99)  # anything drawn between resume and training is overwritten by restore_rng
    dst.restore_rng()
    redrawn = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(redrawn[0], draws_after_save[0]) and np.array_equal(redrawn[1], draws_after_save[1])
    assert redrawn[2] == draws_after_save[2]

    on_disk = torch.load(path, weights_only=True)  # plain data only: loads without any allow-listed class
    assert tuple(on_disk) == CHECKPOINT_KEYS and on_disk['args']['betas'] == [0.9, 0.99]
    assert on_disk['best_metric'] == {'key': 'acc1', 'value': 71.5}
    assert on_disk['args']['output_dir'] == str(tmp_path)
    src.save_best(str(tmp_path / 'best.pth'), written)
    best = torch.load(tmp_path / 'best.pth', weights_only=True)
    assert set(best) == set(BEST_KEYS) | {'best_metric'} and best['best_metric'] == {'key': 'acc1', 'value': 71.5}


def test_update_best_only_on_a_better_value():
    state = _state(with_scaler=False)
    assert state.best_metric == 0.0 and not state.update_best(0.0)  # a first evaluation at 0 is no best
    assert state.update_best(10.0) and state.best_metric == 10.0
    assert not state.update_best(10.0) and not state.update_best(None)  # equal, or no evaluation
    assert state.update_best(12.5) and state.best_metric == 12.5
    lower = _state(with_scaler=False, best_key='loss', higher_is_better=False)
    assert lower.update_best(3.0) and not lower.update_best(3.5) and lower.update_best(2.0)
    assert lower.best_record() == {'key': 'loss', 'value': 2.0}


def _saved(tmp_path, **best):
    src = _state(seed=0, with_scaler=False, **best)
    src.update_best(40.0)
    path = str(tmp_path / 'ck.pth')
    return src.save(path, argparse.Namespace(), train_state.gather_rng_states()), path


def test_checkpoint_of_an_older_version_gives_its_bare_best_to_the_runs_metric(tmp_path):
    """Files from before the best was named hold ``max_accuracy`` (top-1, or mAP for a multi-label run)."""
    new, path = _saved(tmp_path, best_key='mAP')
    old = {(LEGACY_BEST_KEY if k == 'best_metric' else k): (v['value'] if k == 'best_metric' else v)
           for k, v in new.items()}
    torch.save(old, path)
    dst = _state(seed=1, with_scaler=False, best_key='mAP')
    assert dst.resume(path) and (dst.best_key, dst.best_metric) == ('mAP', 40.0)
    del old[LEGACY_BEST_KEY]
    torch.save(old, path)
    bare = _state(seed=1, with_scaler=False)  # a file without any best: nothing to beat yet
    assert bare.resume(path) and bare.best_metric == 0.0


def test_checkpoint_ranked_by_another_metric_restarts_the_best(tmp_path, caplog):
    _, path = _saved(tmp_path, best_key='acc1')
    same = _state(seed=1, with_scaler=False)
    same.resume(path)
    assert same.best_metric == 40.0 and 'restarts' not in caplog.text
    other = _state(seed=1, with_scaler=False, best_key='mAP')
    other.resume(path)
    assert other.best_metric == 0.0 and 'ranked epochs by acc1, this run by mAP' in caplog.text
    assert other.update_best(1.0)


def test_weights_only_file_loads_weights_and_no_training_state(tmp_path):
    src = _state(seed=0, with_scaler=False)
    torch.save({'model': src.model.state_dict(), 'args': argparse.Namespace(model='x')}, tmp_path / 'release.pth')
    dst = _state(seed=1, with_scaler=False)
    opt_before = dst.optimizer.state_dict()
    assert dst.resume(str(tmp_path / 'release.pth')) is False
    _assert_tensors_equal(src.model.state_dict(), dst.model.state_dict())
    assert dst.start_epoch == 0 and dst.rng_state is None
    _assert_tensors_equal(opt_before, dst.optimizer.state_dict())


def test_resume_with_another_world_size_warns_and_keeps_the_generators(tmp_path, caplog):
    src = _state(seed=0, with_scaler=False)
    path = str(tmp_path / 'ck.pth')
    src.save(path, argparse.Namespace(), train_state.gather_rng_states())
    dst = _state(seed=1, with_scaler=False)
    dst.resume(path, rank=0, world=2)
    assert dst.rng_state is None and 'no RNG state for this world size' in caplog.text


def test_interrupted_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pth'
    misc.save_atomic({'epoch': 0}, str(path))

    def torn_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt  # the run is stopped mid-write

    monkeypatch.setattr(torch, 'save', torn_save)
    with pytest.raises(KeyboardInterrupt):
        misc.save_atomic({'epoch': 1}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'epoch': 0}
    assert os.listdir(tmp_path) == ['checkpoint.pth']  # no temporary file left behind


class _StopAfterFirstEpoch(Exception):
    pass


@needs_fmnist
@pytest.mark.slow
def test_checkpoint_in_the_old_layout_resumes_bit_exactly(tmp_path, monkeypatch):
    """A run stopped after epoch 1 whose checkpoint.pth is rewritten key by key in the layout main.py
    wrote by hand before TrainState (plain torch.save, exactly the old keys), resumed by main.py, ends
    bit-identical to the same run left alone: weights, EMA, optimizer state and the logged figures."""
    common = ['--model', 'absvit_micro_patch4_28_gap', '--epochs', '2', '--train-limit', '256', '--val-limit', '32',
              '--batch-size', '32', '--model-ema', '--model-ema-decay', '0.9', '--mixup', '0.8', '--cutmix', '1.0',
              '--drop-path', '0.1', '--reprob', '0.25', '--seed', '5', '--no-progress']
    alone, stopped = tmp_path / 'alone', tmp_path / 'stopped'
    assert main.cli(common + ['--output_dir', str(alone)]) == 0

    real_train_epoch = main.train_epoch

    def stop_at_second_epoch(loop, epoch):
        if epoch == 1:
            raise _StopAfterFirstEpoch
        return real_train_epoch(loop, epoch)

    monkeypatch.setattr(main, 'train_epoch', stop_at_second_epoch)
    with pytest.raises(_StopAfterFirstEpoch):
        main.cli(common + ['--output_dir', str(stopped)])
    monkeypatch.undo()

    new = torch.load(stopped / 'checkpoint.pth', weights_only=True)
    new[LEGACY_BEST_KEY] = new['best_metric']['value']  # the old code's bare best top-1
    old = {k: new[k] for k in OLD_LAYOUT if k in new}  # the old code's dict, in its order
    assert tuple(old) == ('model', 'optimizer', 'lr_scheduler', 'epoch', 'max_accuracy', 'args', 'rng', 'model_ema')
    os.remove(stopped / 'checkpoint.pth')
    torch.save(old, stopped / 'checkpoint.pth')
    assert main.cli(common + ['--output_dir', str(stopped), '--resume', str(stopped / 'checkpoint.pth')]) == 0

    a = torch.load(alone / 'checkpoint.pth', weights_only=True)
    b = torch.load(stopped / 'checkpoint.pth', weights_only=True)
    assert a['epoch'] == b['epoch'] == 1 and a['best_metric'] == b['best_metric']
    assert a['best_metric']['key'] == 'acc1'
    for key in ('model', 'model_ema', 'optimizer', 'lr_scheduler'):
        _assert_tensors_equal(a[key], b[key])
    la, lb = read_log(alone), read_log(stopped)
    for field in ('train_loss', 'train_var_loss', 'test_acc1', 'test_loss'):
        assert [r[field] for r in la] == [r[field] for r in lb], field
