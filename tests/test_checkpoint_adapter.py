"""The zoo's one checkpoint adapter (``models.checkpoint.fit_checkpoint`` / ``load_pretrained``): what each
caller's settings set aside, allow to be missing and how they resample, so that --finetune, the
segmentation backbone and the vision-language image encoder read other weights one way."""
import ast

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

import models
from conftest import ROOT
from models.checkpoint import (CLASSIFIER, MMSEG, RESHAPED_HEAD, TOP_DOWN, TOP_DOWN_PREFIXES, CheckpointError,
                               fit_checkpoint, load_pretrained)
from models.pos_embed import resample_pos_embed


def absvit(**kw):
    return models.AbSViT(**{**dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=5), **kw})


def vit(**kw):
    return VisionTransformer(**{**dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10),
                                **kw})


def test_resampling_is_the_releases_or_timms_as_asked():
    """Shrinking the grid: timm antialiases, the release does not; each way is its resampler's exactly."""
    src = absvit(img_size=64).state_dict()
    model = absvit(img_size=32)
    release, r1 = fit_checkpoint(model, src, resample='release')
    timm_way, r2 = fit_checkpoint(model, src, resample='timm')
    assert r1.resampled == r2.resampled == ((8, 8), (4, 4))
    assert torch.equal(release['pos_embed'], resample_pos_embed(src['pos_embed'], (4, 4), (8, 8), 1))
    assert torch.equal(timm_way['pos_embed'], resample_abs_pos_embed(src['pos_embed'], [4, 4], num_prefix_tokens=1))
    assert not torch.allclose(release['pos_embed'], timm_way['pos_embed'])
    assert "release way" in r1.summary() and torch.equal(release['pos_embed'][:, 0], src['pos_embed'][:, 0])
    with pytest.raises(ValueError, match='resample must be one of'):
        fit_checkpoint(model, src, resample='nearest')


def test_defaults_are_finetunes_a_classifier_of_another_shape_dropped_anything_missing():
    sd, report = fit_checkpoint(absvit(), vit().state_dict())
    assert report.skipped == {'head.weight': RESHAPED_HEAD, 'head.bias': RESHAPED_HEAD}
    assert {'prompt', 'head.weight', 'decoders.0.linear.weight'} <= set(report.missing)
    assert report.loaded == len(sd) and report.resampled is None
    with pytest.raises(CheckpointError, match='unexpected keys'):  # nothing is set aside unless asked
        fit_checkpoint(absvit(num_classes=0), vit().state_dict())


def test_set_aside_only_what_the_model_lacks_and_missing_only_what_may_be():
    bottom_up = vit(num_classes=0)
    sd, report = fit_checkpoint(bottom_up, absvit().state_dict(), set_aside={**CLASSIFIER, **TOP_DOWN},
                                may_miss=TOP_DOWN_PREFIXES)
    assert report.skipped['prompt'] == TOP_DOWN['prompt'] and report.skipped['head.bias'] == 'classifier'
    assert not report.missing and 'skipped (classifier): 2 tensors' in report.summary()
    shallow = vit(depth=2).state_dict()
    with pytest.raises(CheckpointError, match='lacks 24 of'):
        fit_checkpoint(absvit(num_classes=0), shallow, set_aside=CLASSIFIER, may_miss=TOP_DOWN_PREFIXES)
    _, report = fit_checkpoint(absvit(), shallow)  # may_miss=None: a partial start is --finetune's choice
    assert 'blocks.3.attn.qkv.weight' in report.missing


def test_global_pool_checkpoint_leaves_the_final_norm_as_initialised():
    gap = timm.create_model('absvit_micro_patch4_28_gap', num_classes=3)
    token = timm.create_model('absvit_micro_patch4_28_gap', num_classes=0, global_pool='token')
    _, report = fit_checkpoint(token, gap.state_dict(), set_aside=CLASSIFIER, may_miss=TOP_DOWN_PREFIXES)
    assert report.skipped['fc_norm.weight'] == 'classifier' and report.missing == ['norm.weight', 'norm.bias']


def test_mmseg_checkpoint_gives_its_backbone_only_when_asked():
    wrapped = {**{'backbone.vit.' + k: v for k, v in vit(num_classes=0).state_dict().items()},
               'decode_head.conv_seg.weight': torch.zeros(3, 8, 1, 1)}
    model = vit(num_classes=0)
    sd, report = fit_checkpoint(model, wrapped, unwrap=MMSEG)
    assert report.skipped == {'decode_head.conv_seg.weight': 'segmentation heads'} and not report.missing
    assert torch.equal(sd['blocks.1.mlp.fc1.weight'], wrapped['backbone.vit.blocks.1.mlp.fc1.weight'])
    with pytest.raises(CheckpointError, match='unexpected keys'):
        fit_checkpoint(model, wrapped)


def test_image_encoder_settings_set_the_prompt_aside(tmp_path):
    """What vision_language/image_encoder.py needs: the classifier and the learned prompt set aside (the
    text is the prior), timm's resampling, only the feedback possibly missing."""
    cls = timm.create_model('absvit_micro_patch4_28_gap', img_size=16, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, global_pool='token', num_classes=5)
    torch.save({'model': cls.state_dict()}, tmp_path / 'cls.pth')
    enc = timm.create_model('absvit_micro_patch4_28_gap', img_size=32, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, global_pool='token', num_classes=0)
    enc.prompt = None
    report = load_pretrained(enc, str(tmp_path / 'cls.pth'), set_aside={**CLASSIFIER, 'prompt': 'text prior instead'},
                             may_miss=('decoders.',))
    assert report.skipped == {'head.weight': 'classifier', 'head.bias': 'classifier', 'prompt': 'text prior instead'}
    assert report.which == 'model' and report.resampled == ((2, 2), (4, 4)) and not report.missing
    assert torch.equal(enc.decoders[0].linear.weight, cls.decoders[0].linear.weight)
    assert str(tmp_path / 'cls.pth') in report.summary()


@pytest.mark.parametrize('pos_embed, why', [(lambda p: p[:, :-3], 'non-square grid'), (lambda p: p[0], '2-d'),
                                            (lambda p: torch.cat([p, p], -1), 'another width')])
def test_a_position_embedding_that_cannot_be_resampled_is_one_error(tmp_path, pos_embed, why):
    sd = vit(img_size=48).state_dict()
    sd['pos_embed'] = pos_embed(sd['pos_embed'])
    torch.save({'model': sd}, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match='cannot be resampled') as err:
        load_pretrained(absvit(), str(tmp_path / 'odd.pth'))
    assert str(err.value).startswith(str(tmp_path / 'odd.pth')), why


def _imports(path):
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_imports_go_one_way():
    """models/ knows nothing of the sub-projects; the segmentation weights do not import the backbone."""
    for name in ('checkpoint.py', 'pos_embed.py'):
        assert not any(m.split('.')[0] in ('segmentation', 'vision_language') for m in _imports(ROOT / 'models' / name))
    assert 'segmentation.backbone' not in _imports(ROOT / 'segmentation' / 'weights.py')
