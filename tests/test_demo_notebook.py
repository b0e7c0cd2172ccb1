"""demo/attention.ipynb executes headless (nbclient) on a small checkpoint trained here and writes its figures.

The kernel is pinned to the interpreter running the tests: a temporary ``python3`` kernelspec whose argv
is ``sys.executable`` comes first on ``JUPYTER_PATH``, so a user- or system-wide ``python3`` kernel of
another Python can never be picked up (on a fresh clone in CI that is ``.venv/bin/python``).
"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from demo import controllability as ctl

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_notebook_executes_and_writes_its_figures(kernel_env, monkeypatch):
    images, labels = ctl.load_split(train=True, limit=640)  # 20 steps of the AbS loss: a few seconds
    model, info = ctl.train_model('abs', images, labels, epochs=1, batch_size=32, lr=2e-3, log=None)
    ckpt = kernel_env / 'abs.pth'
    ctl.save_model(model, info, ckpt)
    out = kernel_env / 'figures'
    monkeypatch.setenv('ABSVIT_DEMO_MODEL', 'absvit_micro_patch4_28_gap')
    monkeypatch.setenv('ABSVIT_DEMO_CHECKPOINT', str(ckpt))
    monkeypatch.setenv('ABSVIT_DEMO_OUT', str(out))

    nb = nbformat.read(ROOT / 'demo' / 'attention.ipynb', as_version=4)
    assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code'), 'commit the notebook without outputs'
    NotebookClient(nb, kernel_name='python3', timeout=300,
                   resources={'metadata': {'path': str(ROOT / 'demo')}}).execute()

    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
    text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
    # fmnist:1 is a pullover, fmnist:2 a pair of trousers; the CLI ran from the notebook with the vector prior
    assert 'left: prior Pullover' in text and 'right: prior Trouser' in text
    assert 'with vector prior_vector.npy at α=40' in text
    shown = sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
    assert shown == 5  # single, pair left/right, alpha sweep, CLI figure
    expected = {'single.png': (2350, 300), 'pair_left.png': (2350, 300), 'pair_right.png': (2350, 300),
                'pair_alpha.png': (2500, 300), 'cli/fmnist1_fmnist2.png': (2350, 300)}
    for name, size in expected.items():
        assert Image.open(out / name).size == size, name
    assert (out / 'prior_vector.npy').is_file()
