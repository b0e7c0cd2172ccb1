"""Segmentation backbone: the release's dense outputs (golden file), images of any size, the bottom-up
twin, and classification checkpoints (main.py's, the release's, plain ViT's, wrong ones) loading with a
report of what was skipped."""
import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')

import segmentation  # noqa: E402,F401  (registers the backbone)
import segmentation.backbone as seg_backbone  # noqa: E402
from conftest import ROOT, golden  # noqa: E402
from models import CheckpointError  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from segmentation.backbone import AbSViTBackbone, resample_pos_embed  # noqa: E402
from segmentation.exceptions import BackboneInputError  # noqa: E402
from segmentation.weights import load_classification_weights  # noqa: E402
from test_pipeline_helpers import env_one_thread, make_folder_dataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
MICRO = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, drop_path_rate=0.0, out_indices=(0, 1, 2, 3))


def golden_backbone():
    """The golden file and the backbone built through mmseg's registry from the file's own config."""
    g = golden('absvit_release_seg_micro.pt')
    c = g['config']
    assert c['transfer_type'] == 'end2end' and c['class_token'] and c['global_pool'] == 'token'
    backbone = MODELS.build(dict(
        type='AbSViTBackbone', top_down=True, img_size=c['img_size'], patch_size=c['patch_size'],
        embed_dim=c['embed_dim'], depth=c['depth'], num_heads=c['num_heads'], mlp_ratio=c['mlp_ratio'],
        qkv_bias=c['qkv_bias'], drop_path_rate=c['drop_path_rate'], out_indices=c['out_indices'],
        layernorm_eps=c['layernorm_eps']))
    backbone.vit.load_state_dict(g['state_dict'], strict=True)  # release keys, nothing left over
    return g, backbone.eval()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_golden_release_segmentation_backbone():
    g, backbone = golden_backbone()
    p = g['config']['patch_size']
    assert g['x'].shape[-2] % p and g['x'].shape[-1] % p  # the input does need padding
    with torch.no_grad():
        outs = backbone(g['x'])
    assert len(outs) == len(g['outputs'])
    for out, ref in zip(outs, g['outputs']):
        assert out.shape == ref.shape
        assert rel_err(out, ref) <= 1e-5


def test_timm_antialiased_resampling_would_miss_the_release(monkeypatch):
    """The release resamples without antialias; timm's default resampler would give other features."""
    g, backbone = golden_backbone()

    def timm_resample(pos, new, old, n):
        return resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=n)  # antialias=True

    monkeypatch.setattr(seg_backbone, 'resample_pos_embed', timm_resample)
    with torch.no_grad():
        outs = backbone(g['x'])
    assert rel_err(outs[0], g['outputs'][0]) > 1e-3


def test_any_size_is_zero_padded_bottom_right():
    backbone = AbSViTBackbone(**MICRO).eval()
    x = torch.randn(2, 3, 37, 52)
    with torch.no_grad():
        outs = backbone(x)
        padded = backbone(F.pad(x, (0, 4, 0, 3)))  # 40 x 56 by hand
    assert [o.shape for o in outs] == [(2, 64, 5, 7)] * 4
    for a, b in zip(outs, padded):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bottom_up_twin_is_timm_vit_and_top_down_differs():
    bu = AbSViTBackbone(top_down=False, **MICRO).eval()
    td = AbSViTBackbone(top_down=True, **MICRO).eval()
    td.vit.load_state_dict(bu.vit.state_dict(), strict=False)  # shared weights; td keeps its prompt/decoders
    with torch.no_grad():
        for p in td.vit.decoders.parameters():
            p.mul_(8)  # freshly initialised decoders barely move the features: make the feedback visible
    ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0).eval()
    ref.load_state_dict(bu.vit.state_dict())
    x = torch.randn(2, 3, 32, 32)  # the native grid: no padding, no resampling
    with torch.no_grad():
        mine = bu(x)
        theirs = ref.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
        theirs[-1] = ref.norm(theirs[-1].flatten(2).transpose(1, 2)).transpose(1, 2).reshape_as(theirs[-1])
        top = td(x)
        bottom = td.vit.forward_intermediates(x, indices=[3], top_down=False, intermediates_only=True)[0]
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)
    assert (top[3] - mine[3]).abs().max() > 1e-2
    torch.testing.assert_close(td.vit.norm(bottom.flatten(2).transpose(1, 2)), mine[3].flatten(2).transpose(1, 2))


def test_bad_inputs_are_named():
    with pytest.raises(BackboneInputError, match='out_indices'):
        AbSViTBackbone(**{**MICRO, 'out_indices': (1, 4)})
    with pytest.raises(BackboneInputError, match=r'\(B, 3, H, W\)'):
        AbSViTBackbone(**MICRO)(torch.randn(1, 1, 32, 32))


# ------------------------------------------------------------------------------------------------
# Checkpoints.

def test_main_py_checkpoint_loads_with_pos_embed_resampled_and_head_skipped(tmp_path):
    data = make_folder_dataset(tmp_path / 'data', per_class=2, size=32)
    out = tmp_path / 'run'
    r = subprocess.run([sys.executable, str(ROOT / 'main.py'), '--model', 'absvit_tiny_patch16_224', '--data-set',
                        'FOLDER', '--data-path', data, '--input-size', '32', '--epochs', '1', '--batch-size', '2',
                        '--num_workers', '0', '--no-progress', '--output_dir', str(out)],
                       cwd=ROOT, env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    backbone = AbSViTBackbone(img_size=64, embed_dim=192, depth=12, num_heads=3)
    report = load_classification_weights(backbone.vit, str(out / 'checkpoint.pth'))
    src = torch.load(out / 'checkpoint.pth', weights_only=True)['model']
    assert report.which == 'model' and report.resampled == ((2, 2), (4, 4)) and not report.missing
    assert set(report.skipped) == {'head.weight', 'head.bias'}
    assert 'skipped (classifier): 2 tensors' in report.summary()
    own = backbone.vit.state_dict()
    for k in ('prompt', 'decoders.11.linear2.weight', 'blocks.7.attn.qkv.weight', 'norm.weight'):
        assert torch.equal(own[k], src[k]), k
    torch.testing.assert_close(own['pos_embed'], resample_pos_embed(src['pos_embed'], (4, 4), (2, 2)))


def release_file(path, model_sd, **extra):
    """What the release's main.py saves: model, model_ema, optimizer, epoch, a pickled Namespace."""
    torch.save({'model': model_sd, 'model_ema': {k: v + 1 for k, v in model_sd.items()}, 'epoch': 299,
                'args': argparse.Namespace(model='absvit_base_patch16_224'), **extra}, path)


def test_release_absvit_checkpoint_into_bottom_up_twin_reports_top_down_keys(tmp_path):
    src = AbSViTBackbone(**MICRO).vit
    sd = {**src.state_dict(), 'head.weight': torch.randn(10, 64), 'head.bias': torch.randn(10)}
    release_file(tmp_path / 'rel.pth', sd)
    bu = AbSViTBackbone(top_down=False, **MICRO)
    report = load_classification_weights(bu.vit, str(tmp_path / 'rel.pth'))
    assert report.which == 'model'  # not the EMA
    assert report.skipped['prompt'] == 'top-down weights, unused by the bottom-up twin'
    assert sum(k.startswith('decoders.') for k in report.skipped) == 8 and report.skipped['head.bias'] == 'classifier'
    assert torch.equal(bu.vit.state_dict()['blocks.1.mlp.fc2.weight'], sd['blocks.1.mlp.fc2.weight'])


def test_plain_vit_into_absvit_leaves_prompt_and_decoders(tmp_path):
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    torch.save({'model': vit.state_dict()}, tmp_path / 'vit.pth')
    backbone = AbSViTBackbone(**MICRO)
    before = backbone.vit.prompt.detach().clone()
    report = load_classification_weights(backbone.vit, str(tmp_path / 'vit.pth'))
    assert 'prompt' in report.missing and 'decoders.0.linear.weight' in report.missing
    assert torch.equal(backbone.vit.prompt, before)
    assert 'not in the checkpoint' in report.summary()


@pytest.mark.parametrize('other, match', [
    (dict(embed_dim=96, num_heads=4), 'another model or width'),     # another width
    (dict(depth=2, out_indices=(0, 1)), 'lacks 24'),                   # another depth
])
def test_checkpoint_of_another_model_is_one_clear_error(tmp_path, other, match):
    src = AbSViTBackbone(**{**MICRO, **other}).vit
    torch.save({'model': src.state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match=match) as e:
        load_classification_weights(AbSViTBackbone(**MICRO).vit, str(tmp_path / 'other.pth'))
    assert 'other.pth' in str(e.value)


def test_init_cfg_pretrained_loads_once_and_resume_does_not_reinitialise(tmp_path):
    src = AbSViTBackbone(**MICRO).vit
    torch.save({'model': src.state_dict()}, tmp_path / 'cls.pth')
    backbone = AbSViTBackbone(**MICRO, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'cls.pth')))
    backbone.init_weights()
    assert torch.equal(backbone.vit.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    plain = AbSViTBackbone(**MICRO)
    w = plain.vit.pos_embed.detach().clone()
    plain.init_weights()  # no checkpoint: the construction-time weights stay (no timm re-init)
    assert torch.equal(plain.vit.pos_embed, w)


# ------------------------------------------------------------------------------------------------
# Any zoo backbone: built by name, its bottom-up twin from the registry's record.

#: micro AbS-RVT (two stages, a feedback bridge) and AbS-FAN (class-attention tokens), by registered name
ZOO_MICRO = {
    'absrvt_tiny': dict(img_size=64, base_dims=[16, 16], depth=[2, 1], heads=[2, 4], drop_path_rate=0.0),
    'absfan_tiny_12_p16_224': dict(img_size=64, embed_dim=32, depth=3, num_heads=2),
}


@pytest.mark.parametrize('name', sorted(ZOO_MICRO))
def test_zoo_backbone_gives_the_models_own_maps_and_its_twin_the_bottom_up_ones(name):
    """The maps are the model's ``forward_intermediates`` of the top-down pass (the last block after its
    final norm); ``top_down=False`` builds the recorded twin, whose maps are the top-down model's pass 1."""
    from model_helpers import amplify_feedback
    from segmentation.backbone import ZooBackbone
    from timm.models import get_pretrained_cfg
    td = ZooBackbone(name, out_indices=(0, 1, 2), model_kwargs=ZOO_MICRO[name]).eval()
    bu = ZooBackbone(name, top_down=False, out_indices=(0, 1, 2), model_kwargs=ZOO_MICRO[name]).eval()
    assert td.top_down and td.vit.is_top_down and not bu.top_down and not getattr(bu.vit, 'is_top_down', False)
    assert bu.vit.default_cfg['architecture'] == get_pretrained_cfg(name).bottom_up_twin
    amplify_feedback(td.vit)
    missing, unexpected = td.vit.load_state_dict(bu.vit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(('prompt', 'decoders.', 'up_projs.')) for k in missing)
    x = torch.randn(2, 3, 50, 61)
    padded = F.pad(x, (0, (-61) % td.stride[1], 0, (-50) % td.stride[0]))  # to the coarsest reduction taken
    with torch.no_grad():
        top, bottom = td(x), bu(x)
        ref = td.vit.forward_intermediates(padded, indices=[0, 1, 2], intermediates_only=True)
        plain = td.vit.forward_intermediates(padded, indices=[0], top_down=False, intermediates_only=True)
    assert [t.shape for t in top] == [b.shape for b in bottom] and top[0].shape[1] == td.vit.feature_info[0]['num_chs']
    for a, b in zip(top[:2], ref[:2]):
        assert torch.equal(a, b)
    torch.testing.assert_close(top[2], td.vit.norm(ref[2].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    assert (top[2] - bottom[2]).abs().max() > 1e-3  # the feedback reaches the maps
    torch.testing.assert_close(bottom[0], plain[0])


def test_zoo_backbone_is_steered_as_absvit():
    from segmentation.backbone import ZooBackbone
    b = ZooBackbone('absrvt_tiny', out_indices=(2,), model_kwargs=ZOO_MICRO['absrvt_tiny']).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for p in b.vit.decoders.parameters():
            p.mul_(8)
        plain = b(x)[0]
        b.prior, b.alpha = torch.randn(b.width), 10.0
        steered = b(x)[0]
    assert b.width == 64 and (steered - plain).abs().max() > 1e-3


def test_zoo_backbone_bad_names_and_indices_are_one_clear_error():
    from segmentation.backbone import ZooBackbone
    kw = ZOO_MICRO['absrvt_tiny']
    with pytest.raises(BackboneInputError, match="unknown model 'absrvt_tiniest'"):
        ZooBackbone('absrvt_tiniest', model_kwargs=kw)
    with pytest.raises(BackboneInputError, match="top-down backbone was asked of 'rvt_tiny', which is bottom-up"):
        ZooBackbone('rvt_tiny', top_down=True, model_kwargs=kw)
    with pytest.raises(BackboneInputError, match=r'out_indices must be block indices in \[0, 3\)'):
        ZooBackbone('absrvt_tiny', out_indices=(0, 3), model_kwargs=kw)
    with pytest.raises(BackboneInputError, match=r'\(B, 3, H, W\)'):
        ZooBackbone('absrvt_tiny', model_kwargs=kw)(torch.randn(1, 1, 64, 64))
    bu = ZooBackbone('absrvt_tiny', top_down=False, model_kwargs=kw)
    bu.prior = torch.randn(64)
    with pytest.raises(BackboneInputError, match='bottom-up backbone has no top-down pass'):
        bu(torch.randn(1, 3, 64, 64))


def test_tiny_absrvt_config_builds_the_zoo_model_and_its_twin():
    from mmengine.config import Config
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(str(ROOT / 'segmentation/configs/tiny/upernet_absrvt-tiny_ade20k.py'))
    cfg.model.backbone.init_cfg = None
    td = MODELS.build(cfg.model)
    cfg.model.backbone.top_down = False
    bu = MODELS.build(cfg.model)
    assert type(td.backbone.vit).__name__ == 'AbSRVT' and type(bu.backbone.vit).__name__ == 'RVT'
    assert not hasattr(bu.backbone.vit, 'decoders')
    with torch.no_grad():
        maps = td.eval().extract_feat(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4), (2, 32, 4, 4), (2, 64, 2, 2)]
