"""Top-down steering of a segmentor: the learned prompt is the default, another prior (a class prior
from the decode head, or any vector) changes the features and the map, and bad priors are named."""
import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')

import segmentation  # noqa: E402,F401
from conftest import ROOT  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402
from segmentation.exceptions import BackboneInputError  # noqa: E402
from segmentation.steering import class_prior, steered, steering_effect  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
register_all_modules()


def tiny_segmentor(top_down=True):
    cfg = Config.fromfile(str(ROOT / 'segmentation/configs/tiny/upernet_absvit-tiny_ade20k.py'))
    cfg.model.backbone.top_down = top_down
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    if top_down:
        with torch.no_grad():
            for p in model.backbone.vit.decoders.parameters():
                p.mul_(8)  # fresh decoders barely move the features: make the feedback visible
    return model


def test_prompt_is_the_default_and_a_class_prior_steers():
    model = tiny_segmentor()
    images = torch.randn(2, 3, 64, 64)
    effect = steering_effect(model, images, model.backbone.vit.prompt.detach())
    assert effect['feature_change'].abs().max() == 0 and effect['changed'].sum() == 0
    prior = class_prior(model, images, class_id=int(effect['pred'][0, 0, 0]))
    assert prior.shape == (2, 64)
    effect = steering_effect(model, images, prior, alpha=10)
    assert effect['feature_change'].mean() > 0.05
    assert effect['pred_steered'].shape == (2, 64, 64)
    assert model.backbone.prior is None and model.backbone.alpha is None  # restored after the context


def test_bad_priors_are_named():
    model = tiny_segmentor()
    with pytest.raises(BackboneInputError, match='64 channels'):
        with steered(model, torch.randn(32)):
            pass
    with pytest.raises(BackboneInputError, match='bottom-up'):
        with steered(tiny_segmentor(top_down=False), torch.randn(64)):
            pass


def test_change_share_on_a_hand_case():
    from segmentation.steering_figure import change_share
    change = torch.tensor([[3., 1.], [0., 0.]])
    region = torch.tensor([[1., 0.], [0.5, 0.]])  # cell fractions the class covers
    inside, area = change_share(change, region)
    assert inside == pytest.approx(3 / 4) and area == pytest.approx(1.5 / 4)


def test_steering_figure_writes_the_figure_and_refuses_pickled_training_state(tmp_path, capsys):
    from segmentation import steering_figure
    ckpt, out = tmp_path / 'weights.pth', tmp_path / 'steering.png'
    torch.save({'state_dict': tiny_segmentor().state_dict()}, ckpt)
    cfg = str(ROOT / 'segmentation/configs/tiny/upernet_absvit-tiny_ade20k.py')
    steering_figure.main([cfg, str(ckpt), '--image', 'synthetic:5', '--image', 'skimage:coffee', '--classes', '2',
                          '--out', str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if 'change inside its region' in line]
    assert len(lines) >= 2 and any(line.startswith('skimage:coffee') for line in lines)
    from PIL import Image
    assert Image.open(out).size[0] > Image.open(out).size[1] > 0
    torch.save({'state_dict': {}, 'message_hub': {'history': __import__('collections').OrderedDict(a=object)}},
               tmp_path / 'pickled.pth')
    from models.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match='--trusted'):
        steering_figure.read_weights(str(tmp_path / 'pickled.pth'), trusted=False)


def test_a_reused_baseline_gives_the_same_effect_and_prior():
    from segmentation.steering import final_map_and_logits, prior_from_outputs
    model = tiny_segmentor()
    images = torch.randn(2, 3, 64, 64)
    baseline = final_map_and_logits(model, images)
    k = int(baseline[1].argmax(1)[0, 0, 0])
    prior = class_prior(model, images, k)
    assert torch.equal(prior_from_outputs(*baseline, k), prior)
    fresh, reused = steering_effect(model, images, prior, 10), steering_effect(model, images, prior, 10, baseline)
    assert fresh['feature_change'].mean() > 0.05
    assert all(torch.equal(fresh[key], reused[key]) for key in fresh)
