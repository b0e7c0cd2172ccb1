"""Prior-conditioned training under torchrun (2 CPU processes, gloo): the option runs, DDP keeps the learned
prior table and the prompt in step (a parameter without a gradient would stop DDP), and the checkpoint
evaluates in one process with the same numbers."""
import subprocess
import sys

import pytest
import torch

from test_pipeline_helpers import ROOT, env_one_thread, needs_fmnist, read_log, run_main

pytestmark = [needs_fmnist, pytest.mark.slow]


def test_torchrun_two_processes_train_with_composites_and_table_priors(tmp_path):
    out = tmp_path / 'ddp'
    flags = ['--model', 'absvit_micro_patch4_28_gap', '--input-size', '32', '--val-limit', '101',
             '--prior-source', 'table', '--batch-size', '16', '--no-progress']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'main.py'),
           *flags, '--epochs', '2', '--train-limit', '256', '--composite-prob', '0.6', '--output_dir', str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'world size 2 (gloo)' in r.stdout and 'composites: PriorComposites' in r.stdout
    first, last = read_log(out)
    assert last['world_size'] == 2 and last['test_n'] == 101
    assert last['train_loss'] < first['train_loss']
    ck = torch.load(out / 'checkpoint.pth', weights_only=True)
    table = ck['model']['prior_table']
    assert table.shape == (10, 64) and torch.isfinite(table).all()
    r = run_main(*flags, '--eval', '--resume', out / 'checkpoint.pth', '--output_dir', out)
    assert r.returncode == 0, r.stderr
    ev = read_log(out)[-1]
    assert ev['test_n'] == 101 and ev['test_acc1'] == pytest.approx(last['test_acc1'])
