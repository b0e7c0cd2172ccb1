"""Shared test setup: the project root on sys.path, a fixed seed, one thread per xdist worker, the notebook kernel."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / 'shared'
GOLDEN = SHARED / 'golden'

if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)

import models  # noqa: E402,F401  (registers the zoo with timm)


@pytest.fixture(scope='module')
def one_thread():
    """For modules of micro-model tests (``pytestmark = pytest.mark.usefixtures('one_thread')``): on
    tiny tensors one thread is fastest, and it spares a shared CI box OpenMP oversubscription (10x
    slower under load). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Notebooks run headless on the interpreter running the tests: a temporary ``python3`` kernelspec
    whose argv is ``sys.executable`` comes first on ``JUPYTER_PATH`` (never a user or system kernel of
    another Python), one thread, the Agg backend. Returns ``tmp_path``."""
    spec = tmp_path / 'jupyter' / 'kernels' / 'python3'
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'Python 3 (tests)', 'language': 'python'}))
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
    monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'runtime'))
    monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    return tmp_path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def golden(name: str):
    """Load a reference file from ../shared/golden, or skip with the reason."""
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(f'{path} is absent: the reference outputs of the original releases live in ../shared '
                    '(developers and CI only)')
    return torch.load(path, weights_only=False)
