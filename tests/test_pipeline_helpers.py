"""Helpers shared by the pipeline tests (no tests here): short main.py runs, in-process and as subprocesses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FMNIST_FILE = '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'
needs_fmnist = pytest.mark.skipif(not os.path.isfile(FMNIST_FILE),
                                  reason='Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)')

# A few seconds of training: micro models, a sliver of Fashion-MNIST, no progress bar.
QUICK = ['--epochs', '1', '--train-limit', '256', '--val-limit', '128', '--batch-size', '32', '--no-progress']


def env_one_thread():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(k, None)
    return env


def main_cmd(*args):
    return [sys.executable, str(ROOT / 'main.py'), *map(str, args)]


def run_main(*args, timeout=300):
    """main.py in a subprocess (one thread); returns the CompletedProcess."""
    return subprocess.run(main_cmd(*args), cwd=ROOT, env=env_one_thread(), capture_output=True, text=True,
                          timeout=timeout)


def read_log(out_dir):
    with open(Path(out_dir) / 'log.txt') as f:
        return [json.loads(line) for line in f if line.strip()]


def make_folder_dataset(root, classes=('cat', 'dog', 'emu'), per_class=2, size=40, splits=('train', 'val')):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f'{i}.png'))
    return str(root)
