"""A micro top-down backbone that is not a ViT trains through both downstream entry points on the generated
data of their tests: AbS-RVT (two stages, a feedback bridge) through segmentation/train.py with UperNet,
AbS-RVT and AbS-FAN (class-attention tokens) through ``vision_language.train`` on VQA."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_vl_train import _args, _log, make_vqa_root

sys.path.insert(0, str(Path(__file__).resolve().parent / 'timm_suite'))
import micro_variants  # noqa: E402,F401  (registers the test-only micro models with timm)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::UserWarning')
def test_absrvt_upernet_trains_through_segmentation_train_py(tmp_path):
    pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')
    from segmentation.synthetic import write_ade20k
    from test_segmentation_train import TINY, run_tool, train_scalars
    data, work = write_ade20k(str(tmp_path / 'ade')), tmp_path / 'work'
    r = run_tool('train.py', TINY / 'upernet_absrvt-tiny_ade20k.py', '--work-dir', work, '--data-root', data)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [s for s in train_scalars(work) if 'decode.loss_ce' in s]
    assert [s['step'] for s in records] == list(range(1, 17))
    losses = [s['decode.loss_ce'] for s in records]
    assert all(map(math.isfinite, losses)) and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    (val,) = [s for s in train_scalars(work) if 'mIoU' in s]
    assert math.isfinite(val['mIoU']) and val['mIoU'] > 5
    weights = torch.load(work / 'iter_16.pth', map_location='cpu', weights_only=False)['state_dict']
    # the AbS-RVT's own parts were trained: the decoders and the bridge across its stage boundary
    assert 'backbone.vit.up_projs.0.weight' in weights and 'backbone.vit.decoders.2.linear2.weight' in weights


@pytest.mark.parametrize('encoder, size', [('absrvt_micro', 64), ('absfan_micro', 32)])
def test_abs_backbone_trains_through_vision_language_train(tmp_path, encoder, size):
    from vision_language import train
    make_vqa_root(tmp_path)
    out = tmp_path / 'out'
    assert train.main(_args(tmp_path, out, '--image-encoder', encoder, '--image-size', str(size), '--train-splits',
                            'train2014', '--eval-split', 'val2014', '--eval-limit', '8', '--epochs', '3')) == 0
    log = _log(out)
    assert [r['epoch'] for r in log] == [1, 2, 3]
    assert all(math.isfinite(v) for r in log for v in r.values() if isinstance(v, float))
    assert log[-1]['train_loss'] < log[0]['train_loss'], [r['train_loss'] for r in log]
    assert {'train_var', 'train_prior', 'eval_vqa_score', 'eval_mask_positive'} <= set(log[-1])
    weights = torch.load(out / 'checkpoint.pth', weights_only=True)['model']
    assert any(k.startswith('image_encoder.vit.decoders.') for k in weights)
    assert json.loads((out / 'answers.json').read_text()) == ['2', 'yes', 'no']
