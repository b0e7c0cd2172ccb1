"""vision_language/attention.ipynb executes headless (nbclient) with a short training and writes its figure.

The kernel is pinned to the interpreter running the tests (conftest's ``kernel_env``).
"""
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from vision_language.offline import fmnist_available

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not fmnist_available(), reason='Fashion-MNIST (Debian dataset-fashion-mnist) absent')]


def test_notebook_executes_and_the_mask_moves_with_the_question(kernel_env, monkeypatch):
    tmp_path = kernel_env
    for var, value in {'VL_DEMO_STEPS': '40', 'VL_DEMO_PRETRAIN_STEPS': '20', 'VL_DEMO_SCENES': '100',
                       'VL_DEMO_OUT': tmp_path / 'out'}.items():
        monkeypatch.setenv(var, str(value))
    nb = nbformat.read(ROOT / 'vision_language' / 'attention.ipynb', as_version=4)
    assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code'), 'commit the notebook without outputs'
    NotebookClient(nb, kernel_name='python3', timeout=300,
                   resources={'metadata': {'path': str(ROOT / 'vision_language')}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    text = '\n'.join(o.get('text', '') for o in outputs)
    assert len(re.findall(r"'what is at the .*\?': answer", text)) == 4
    spread = float(re.search(r'mask spread across questions: ([0-9.]+)', text).group(1))
    assert spread > 0.0  # another question, another mask
    assert (tmp_path / 'out' / 'vl_attention.png').stat().st_size > 0
    assert sum('image/png' in o.get('data', {}) for o in outputs) == 1
