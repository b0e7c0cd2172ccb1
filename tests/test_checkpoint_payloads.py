"""No entry point runs code hidden in a checkpoint: a ``.pth`` whose pickle calls ``os.system`` is
given to every flag that reads a checkpoint, each as a user runs it (a subprocess); the payload would
create a marker file. Each run must refuse the file with one line naming it, and the marker must not
exist. Segmentation's own checkpoints still read back without ``--trusted`` (they are written
weights-only-readable), and ``--trusted`` still reads an mmengine checkpoint of the old kind."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_pipeline_helpers import env_one_thread, needs_fmnist

TINY_SEG = 'segmentation/configs/tiny/upernet_absvit-tiny_ade20k.py'


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture
def payload(tmp_path):
    """(checkpoint path, marker path): a checkpoint shaped like a real one, with the payload inside."""
    marker = tmp_path / 'PAYLOAD_RAN'
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'state_dict': {}, 'meta': {'iter': 1, 'epoch': 0}, 'x': RunsCode(marker)}, path)
    return path, marker


@pytest.fixture(scope='module')
def seg_data(tmp_path_factory):
    pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')
    from segmentation.synthetic import write_ade20k
    return write_ade20k(str(tmp_path_factory.mktemp('ade')))


def seg(tool, *args):
    return [f'segmentation/{tool}', *args]


#: entry point -> its command line with EVIL (the payload) and WORK (a fresh folder) to fill in
COMMANDS = {
    'main.py --resume': ['main.py', '--resume', 'EVIL', '--output_dir', 'WORK', '--epochs', '1'],
    'main.py --eval --resume': ['main.py', '--eval', '--resume', 'EVIL', '--output_dir', 'WORK'],
    'main.py --finetune': ['main.py', '--finetune', 'EVIL', '--output_dir', 'WORK', '--epochs', '1'],
    'segmentation test.py': seg('test.py', TINY_SEG, 'EVIL', '--work-dir', 'WORK', '--data-root', 'SEG'),
    'segmentation train.py --resume-from': seg('train.py', TINY_SEG, '--resume-from', 'EVIL', '--work-dir', 'WORK',
                                               '--data-root', 'SEG'),
    'segmentation train.py --resume (work dir)': seg('train.py', TINY_SEG, '--resume', '--work-dir', 'WORK',
                                                     '--data-root', 'SEG'),
    'segmentation train.py load_from': seg('train.py', TINY_SEG, '--work-dir', 'WORK', '--data-root', 'SEG',
                                           '--cfg-options', 'load_from=EVIL'),
    'segmentation train.py --backbone-checkpoint': seg('train.py', TINY_SEG, '--backbone-checkpoint', 'EVIL',
                                                       '--work-dir', 'WORK', '--data-root', 'SEG'),
    'segmentation steering_figure.py': seg('steering_figure.py', TINY_SEG, 'EVIL', '--out', 'WORK/fig.png'),
    'vision_language.train --resume': ['-m', 'vision_language.train', 'VL', '--resume', 'EVIL'],
    'vision_language.train --image-weights': ['-m', 'vision_language.train', 'VL', '--image-weights', 'EVIL'],
    'demo/visualize.py': ['demo/visualize.py', '--model', 'absvit_micro_patch4_28_gap', '--checkpoint', 'EVIL',
                          '--images', 'skimage:astronaut', '--out-dir', 'WORK'],
    'demo/ida_attention.py': ['demo/ida_attention.py', '--checkpoint', 'EVIL', '--out', 'WORK/fig.png'],
    'demo/controllability.py': ['demo/controllability.py', '--runs', 'AbSViT=EVIL', '--out-dir', 'WORK'],
}


def vl_args(tmp_path, work):
    """The vision-language trainer's arguments on a generated VQA folder (tests/test_vl_train.py's)."""
    from test_vl_train import _args, make_vqa_root
    root = tmp_path / 'vqa'
    root.mkdir()
    make_vqa_root(str(root), n_per_answer=3)
    return _args(root, work, '--train-splits', 'train2014', '--eval-split', 'val2014')


def fill(args, evil, work, seg_root, tmp_path):
    """The command line with its placeholders replaced (VL: the trainer's data and model flags)."""
    out = []
    for a in args:
        if a == 'VL':
            out += vl_args(tmp_path, work)
        else:
            out.append({'SEG': str(seg_root)}.get(a, a.replace('EVIL', str(evil)).replace('WORK', str(work))))
    return out


@needs_fmnist
@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_a_payload_never_runs(name, payload, tmp_path, request):
    evil, marker = payload
    work = tmp_path / 'work'
    seg_root = request.getfixturevalue('seg_data') if name.startswith('segmentation') else None
    if name.endswith('(work dir)'):  # mmengine's --resume reads the file that last_checkpoint names
        work.mkdir()
        (work / 'last_checkpoint').write_text(str(evil))
    r = subprocess.run([sys.executable, *fill(COMMANDS[name], evil, work, seg_root, tmp_path)], cwd=ROOT,
                       env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f'{name}: the payload ran'
    assert r.returncode != 0, f'{name}: exit 0 with a refused checkpoint\n{r.stdout[-2000:]}{r.stderr[-2000:]}'
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert f'refused to load checkpoint {evil}' in r.stderr, r.stderr[-3000:]


def test_segmentation_checkpoints_round_trip_weights_only():
    """What train.py stores (the message hub's HistoryBuffers, numpy values) reads back weights-only and
    rebuilds the same objects."""
    pytest.importorskip('mmengine')
    import io

    import numpy as np
    from mmengine.logging import HistoryBuffer
    from segmentation.checkpoints import from_plain, to_plain
    buf = HistoryBuffer([0.5, 0.25, 0.125], [2, 2, 1], max_length=7)
    state = {'log_scalars': {'train/loss': buf}, 'runtime_info': {'eta': np.float64(1.5), 'iter': 3,
                                                                  'ids': [4, 8], 'arr': np.arange(3)}}
    stream = io.BytesIO()
    torch.save(to_plain(state), stream)
    stream.seek(0)
    back = from_plain(torch.load(stream, weights_only=True))
    restored = back['log_scalars']['train/loss']
    assert isinstance(restored, HistoryBuffer) and restored.max_length == 7
    for a, b in zip(restored.data, buf.data):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert back['runtime_info']['eta'] == 1.5 and back['runtime_info']['ids'] == [4, 8]
    assert torch.equal(back['runtime_info']['arr'], torch.arange(3))
    assert state['log_scalars']['train/loss'] is buf  # the live state is not touched


def test_trusted_reads_an_mmengine_checkpoint_the_safe_reader_refuses(tmp_path):
    """A checkpoint holding HistoryBuffers (what mmengine writes) is refused by default and read with
    ``--trusted``, and the loaders switch back."""
    pytest.importorskip('mmengine')
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    from models.checkpoint import CheckpointError
    from segmentation.checkpoints import use_checkpoint_loaders
    path = tmp_path / 'mmengine.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': {'b': HistoryBuffer([1.0], [1])}}, path)
    use_checkpoint_loaders(trusted=False)
    with pytest.raises(CheckpointError, match='--trusted'):
        CheckpointLoader.load_checkpoint(str(path))
    use_checkpoint_loaders(trusted=True)
    assert torch.equal(CheckpointLoader.load_checkpoint(str(path))['state_dict']['w'], torch.ones(2))
    use_checkpoint_loaders(trusted=False)
    with pytest.raises(CheckpointError, match='remote checkpoints'):
        CheckpointLoader.load_checkpoint('https://example.invalid/weights.pth')


def test_the_safe_loader_puts_tensors_where_mmengine_asks(tmp_path):
    """mmengine resumes with map_location set to the run's device: the weights-only reader honours it."""
    pytest.importorskip('mmengine')
    from mmengine.runner import CheckpointLoader
    from segmentation.checkpoints import use_checkpoint_loaders
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, path)
    use_checkpoint_loaders(trusted=False)
    assert CheckpointLoader.load_checkpoint(str(path), map_location='meta')['state_dict']['w'].is_meta
    assert CheckpointLoader.load_checkpoint(str(path), map_location='cpu')['state_dict']['w'].device.type == 'cpu'
