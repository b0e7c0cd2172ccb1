"""Segmentation training through mmengine's Runner (segmentation/train.py): a tiny AbSViT + UperNet on
synthetic datasets in the ADE20K, VOC and Cityscapes folder layouts, loss falling; a crashed run
resuming from its last checkpoint at the right iteration and learning rate; test.py's mIoU; IoUMetric
against a hand computation; bad dataset folders and label maps as one clear error."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')

from conftest import ROOT  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from segmentation.synthetic import write_ade20k, write_cityscapes, write_voc  # noqa: E402
from test_pipeline_helpers import env_one_thread  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
TINY = ROOT / 'segmentation' / 'configs' / 'tiny'
LAYOUTS = {'ade20k': write_ade20k, 'voc12': write_voc, 'cityscapes': write_cityscapes}


def run_tool(tool, *args, timeout=300):
    """segmentation/{train,test}.py in a subprocess (one thread), as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / 'segmentation' / tool), *map(str, args)], cwd=ROOT,
                          env=env_one_thread(), capture_output=True, text=True, timeout=timeout)


def train_scalars(work_dir):
    """The per-iteration records mmengine's LocalVisBackend wrote (vis_data/scalars.json), over every
    run in the work dir (one timestamped folder each), oldest first."""
    paths = sorted(work_dir.glob('*/vis_data/scalars.json'))
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_tiny_upernet_trains_on_each_standard_layout(tmp_path, layout):
    data = LAYOUTS[layout](str(tmp_path / layout))
    work = tmp_path / 'work'
    r = run_tool('train.py', TINY / f'upernet_absvit-tiny_{layout}.py', '--work-dir', work, '--data-root', data)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [s for s in train_scalars(work) if 'decode.loss_ce' in s]
    assert [s['step'] for s in records] == list(range(1, 17))
    losses = [s['decode.loss_ce'] for s in records]
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    (val,) = [s for s in train_scalars(work) if 'mIoU' in s]
    assert val['mIoU'] > 5  # far above what an untrained head scores on these scenes
    assert (work / 'iter_16.pth').is_file() and list(work.glob('*/vis_data/events.out.tfevents.*'))
    r = run_tool('test.py', TINY / f'upernet_absvit-tiny_{layout}.py', work / 'iter_16.pth',
                 '--work-dir', tmp_path / 'test', '--data-root', data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"mIoU: {val['mIoU']:.4f}" in r.stdout + r.stderr  # the same weights give the same mIoU


@pytest.mark.slow
def test_crashed_run_resumes_at_its_last_checkpoint_with_equal_weights(tmp_path):
    data = write_ade20k(str(tmp_path / 'ade'))
    cfg = TINY / 'upernet_absvit-tiny_ade20k.py'
    fast = ['--data-root', data, '--cfg-options', 'train_cfg.val_interval=100']
    r = run_tool('train.py', cfg, '--work-dir', tmp_path / 'full', *fast)
    assert r.returncode == 0, r.stderr[-3000:]
    # the "crash": the same run stopped after 8 of its 16 iterations (checkpoints every 4)
    r = run_tool('train.py', cfg, '--work-dir', tmp_path / 'crashed', *fast, 'train_cfg.max_iters=8')
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_tool('train.py', cfg, '--work-dir', tmp_path / 'crashed', '--resume', *fast)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed' in (r.stdout + r.stderr).lower() and 'iter_8.pth' in r.stdout + r.stderr
    crashed, uninterrupted = (
        [s for s in train_scalars(tmp_path / d) if 'decode.loss_ce' in s] for d in ('crashed', 'full'))
    assert [s['step'] for s in crashed] == list(range(1, 17))  # 1..8, then 9..16 in the resumed run's log
    # the optimiser and schedulers continue where they stopped: the same learning rate at every step
    assert [s['lr'] for s in crashed] == pytest.approx([s['lr'] for s in uninterrupted])
    # the run resumed from the weights the crashed run saved, equal to the uninterrupted run's there
    full8, crashed8 = (torch.load(tmp_path / d / 'iter_8.pth', map_location='cpu', weights_only=False)
                       for d in ('full', 'crashed'))
    for k, v in full8['state_dict'].items():
        torch.testing.assert_close(crashed8['state_dict'][k], v, msg=k)
    final = torch.load(tmp_path / 'crashed' / 'iter_16.pth', map_location='cpu', weights_only=False)
    assert final['meta']['iter'] == 16 and not all(
        torch.equal(final['state_dict'][k], v) for k, v in crashed8['state_dict'].items())


def test_iou_metric_equals_a_hand_computation():
    """Classes 0..3; class 3 appears nowhere (NaN, left out of the mean), 255 pixels are ignored."""
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255], [255, 1, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 2], [2, 1, 0, 1]])
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=('a', 'b', 'c', 'd'))
    metric.process({}, [{'pred_sem_seg': {'data': torch.from_numpy(pred)[None]},
                         'gt_sem_seg': {'data': torch.from_numpy(gt)[None]}}])
    result = metric.compute_metrics(metric.results)
    valid = gt != 255
    ious = []
    for c in range(4):
        inter = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        if union:
            ious.append(inter / union)
    assert len(ious) == 3  # class 3: no pixel in either map
    assert result['mIoU'] == pytest.approx(round(100 * np.mean(ious), 2))
    assert result['aAcc'] == pytest.approx(round(100 * np.mean(gt[valid] == pred[valid]), 2))


# ------------------------------------------------------------------------------------------------
# Bad input.

def test_wrong_dataset_layout_is_one_clear_error(tmp_path):
    data = write_voc(str(tmp_path / 'voc'))  # a VOC folder given to the ADE20K config
    r = run_tool('train.py', TINY / 'upernet_absvit-tiny_ade20k.py', '--work-dir', tmp_path / 'w', '--data-root', data)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'ADE20KDataset' in r.stderr and 'images/training is missing' in r.stderr
    assert 'ADEChallengeData2016/{images,annotations}' in r.stderr


def test_a_classification_checkpoint_given_to_test_py_is_refused_not_scored(tmp_path):
    """mmengine loads non-strictly: without the check a classification checkpoint would load nothing and
    test.py would score a random segmentor, exit 0."""
    import timm
    import models  # noqa: F401  (registers the zoo)
    data = write_ade20k(str(tmp_path / 'ade'), n_train=2, n_val=1)
    ckpt = tmp_path / 'classification.pth'
    torch.save({'model': timm.create_model('absvit_micro_patch4_28_gap').state_dict()}, ckpt)
    r = run_tool('test.py', TINY / 'upernet_absvit-tiny_ade20k.py', ckpt, '--work-dir', tmp_path / 'w',
                 '--data-root', data)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'Iter(test)' not in r.stdout + r.stderr
    assert 'lacks 145 of the segmentor' in r.stderr and '--backbone-checkpoint' in r.stderr


def test_label_map_with_out_of_range_ids_is_one_clear_error(tmp_path):
    data = write_cityscapes(str(tmp_path / 'city'), n_train=2, n_val=1)
    bad = sorted((tmp_path / 'city' / 'gtFine' / 'train').rglob('*_labelTrainIds.png'))[0]
    label = np.array(Image.open(bad))
    label[:4, :4] = 33  # a Cityscapes label id, not a train id
    Image.fromarray(label).save(bad)
    r = run_tool('train.py', TINY / 'upernet_absvit-tiny_cityscapes.py', '--work-dir', tmp_path / 'w',
                 '--data-root', data)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert bad.name in r.stderr and '[33]' in r.stderr and 'outside [0, 19)' in r.stderr
