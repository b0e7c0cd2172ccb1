"""Distributed training with torchrun (2 CPU processes, gloo) and bit-exact resume after SIGKILL."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_pipeline_helpers import ROOT, env_one_thread, main_cmd, needs_fmnist, read_log, run_main

pytestmark = [needs_fmnist, pytest.mark.slow]


def test_torchrun_two_processes_and_distributed_eval(tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'main.py'),
           '--model', 'absvit_micro_patch4_28_gap', '--epochs', '1', '--train-limit', '256', '--val-limit', '101',
           '--batch-size', '16', '--repeated-aug', '--output_dir', str(out), '--no-progress']
    r = subprocess.run(cmd, cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'world size 2 (gloo)' in r.stdout
    (rec,) = read_log(out)
    assert rec['world_size'] == 2 and rec['test_n'] == 101  # shards of 51 and 50, no duplicates
    # the same checkpoint evaluated by one process gives the same numbers
    r = run_main('--model', 'absvit_micro_patch4_28_gap', '--eval', '--resume', out / 'checkpoint.pth',
                 '--val-limit', 101, '--batch-size', 16, '--output_dir', out, '--no-progress')
    assert r.returncode == 0, r.stderr
    ev = read_log(out)[-1]
    assert ev['test_n'] == 101 and ev['world_size'] == 1
    assert ev['test_acc1'] == pytest.approx(rec['test_acc1']) and ev['test_loss'] == pytest.approx(rec['test_loss'])


def test_kill_and_resume_is_bit_identical(tmp_path):
    """Two epochs left alone vs. killed (SIGKILL) after the first epoch's checkpoint and resumed: the final
    weights, EMA and optimizer state are bitwise equal. Every random source is on: shuffling, drop path,
    mixup/cutmix (numpy), random erasing (python random), a data loader worker."""
    common = ['--model', 'absvit_micro_patch4_28_gap', '--epochs', 2, '--train-limit', 768, '--val-limit', 64,
              '--batch-size', 32, '--model-ema', '--model-ema-decay', 0.9, '--mixup', 0.8, '--cutmix', 1.0,
              '--smoothing', 0.1, '--reprob', 0.25, '--drop-path', 0.1, '--num_workers', 1, '--seed', 3,
              '--no-progress']
    a, b = tmp_path / 'alone', tmp_path / 'killed'
    r = run_main(*common, '--output_dir', a)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(main_cmd(*common, '--output_dir', b), cwd=ROOT, env=env_one_thread(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = b / 'log.txt'
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count('\n') >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f'the run was not killed mid-way: {proc.returncode} {proc.stderr.read()}'
    proc.stderr.close()
    assert torch.load(b / 'checkpoint.pth', weights_only=True)['epoch'] == 0

    r = run_main(*common, '--output_dir', b, '--resume', 'auto')  # = b/checkpoint.pth
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stdout

    ca = torch.load(a / 'checkpoint.pth', weights_only=True)
    cb = torch.load(b / 'checkpoint.pth', weights_only=True)
    assert ca['epoch'] == cb['epoch'] == 1
    for key in ('model', 'model_ema'):
        assert ca[key].keys() == cb[key].keys()
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), f'{key}.{k} differs'
    for sa, sb in zip(ca['optimizer']['state'].values(), cb['optimizer']['state'].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k])
    la, lb = read_log(a), read_log(b)
    assert [r['train_loss'] for r in la] == [r['train_loss'] for r in lb]
    assert [r['test_acc1'] for r in la] == [r['test_acc1'] for r in lb]
