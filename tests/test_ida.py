"""IDA head: the release's logits (golden file), its view quirk, parameter counts, key names, timm registry."""
import pytest
import timm
import torch
import torchvision

import models.ida  # noqa: F401  (registers ida_* with timm)
from conftest import golden
from errors import UserFacingError
from models.ida import InterventionalClassifier, remap_release_state_dict


def _head_from(entry):
    cfg = entry['config']
    head = InterventionalClassifier(cfg['num_classes'], cfg['feat_dim'], cfg['num_head'], cfg['beta'], cfg['heavy'],
                                    dim_feedforward=cfg['dim_feedforward'])
    head.load_state_dict(entry['state_dict'], strict=True)
    return head.eval()


@pytest.mark.parametrize('entry', ['heavy', 'light'])
def test_golden_release_logits(entry):
    g = golden('ida_release_micro.pt')[entry]
    head = _head_from(g)
    assert sum(p.numel() for p in head.parameters()) == g['params']
    with torch.no_grad():
        logits = head(g['feats'])
    assert logits.shape == g['logits'].shape
    rel = ((logits - g['logits']).abs().max() / g['logits'].abs().max()).item()
    assert rel <= 1e-5, rel


@pytest.mark.parametrize('entry', ['heavy', 'light'])
def test_permuted_variant_differs_from_release(entry):
    g = golden('ida_release_micro.pt')[entry]
    head = _head_from(g)
    head.release_view = False
    with torch.no_grad():
        logits = head(g['feats'])
    assert (logits - g['logits']).abs().max() > 1e-2 * g['logits'].abs().max()


@pytest.mark.parametrize('release_view', [True, False])
def test_class_tokens_layout(release_view):
    """Token j, entry p of a class is element (c, h) of the (C/heads, heads) grid with j*C/heads + p = c*heads + h
    (the view), or element (p, j), i.e. channel group j (the permutation)."""
    head = InterventionalClassifier(num_classes=3, feat_dim=12, num_head=4, heavy=False, release_view=release_view)
    feats = torch.randn(2, 12, 3, 2)
    attn = head.class_attention(feats)
    tokens = head._class_tokens(feats, attn).view(2, 3, 4, 3)
    d = head.head_dim
    for b in range(2):
        for k in range(3):
            grid = torch.stack([attn[b, i, k] @ feats[b, i * d:(i + 1) * d].flatten(1).T for i in range(4)], dim=-1)
            for j in range(4):
                for p in range(d):
                    c, h = divmod(j * d + p, 4) if release_view else (p, j)
                    assert torch.allclose(tokens[b, k, j, p], grid[c, h], atol=1e-6)


def test_class_attention_is_a_softmax_over_positions():
    head = InterventionalClassifier(num_classes=5, feat_dim=8, num_head=2, heavy=True)
    attn = head.class_attention(torch.randn(3, 8, 4, 4))
    assert attn.shape == (3, 2, 5, 16)
    assert torch.allclose(attn.sum(-1), torch.ones(3, 2, 5))


@pytest.mark.parametrize('name, params', [('ida_heavy_resnet101', 53_165_120), ('ida_light_resnet101', 43_714_624)])
def test_resnet101_parameter_counts(name, params):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=80)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.pretrained_cfg['input_size'] == (3, 448, 448)


def test_release_checkpoint_keys_load():
    """A release checkpoint (torchvision ResNet-101 as backbone.resnet_layer, DDP prefix) maps onto our keys."""
    with torch.device('meta'):
        ours = timm.create_model('ida_heavy_resnet101', num_classes=80)
        tv = torchvision.models.resnet101()
    release = {f'module.backbone.resnet_layer.{k}': v
               for k, v in torch.nn.Sequential(*list(tv.children())[:-2]).state_dict().items()}
    release.update({f'module.{k}': v for k, v in ours.state_dict().items() if k.startswith('clf.')})
    remapped = remap_release_state_dict(release)
    assert {k: tuple(v.shape) for k, v in remapped.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_registered_names_and_bad_groups():
    names = timm.list_models('ida_*')
    for n in ('ida_heavy_resnet101', 'ida_light_resnet101', 'ida_heavy_swin_base_patch4_window12_384',
              'ida_light_absvit_micro_patch8_64'):
        assert n in names
    with pytest.raises(UserFacingError, match='num_head'):
        InterventionalClassifier(num_classes=3, feat_dim=10, num_head=4)


def test_absvit_backbone_maps():
    model = timm.create_model('ida_light_absvit_micro_patch8_64', num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    assert model(x).shape == (2, 10)
    assert model.class_attention(x).shape == (2, 4, 10, 8, 8)


def test_channels_last_backbone_is_permuted():
    """timm's Swin gives NHWC maps: the head sees them as NCHW, the same as the permuted map fed directly."""
    model = models.ida.create_ida('swin_tiny_patch4_window7_224', num_classes=5, input_size=64, heavy=False,
                                  window_size=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        nhwc = model.backbone(x)[-1]
        assert model.channels_last and nhwc.shape[-1] == model.num_features
        assert torch.allclose(model(x), model.clf(nhwc.permute(0, 3, 1, 2)))


# -- the timm model API (timm's own test suite runs on the micro variants: tests/test_timm_suite.py) ---------

IDA_NAMES = timm.list_models('ida_*')


@pytest.mark.parametrize('name', IDA_NAMES)
def test_pretrained_cfgs_name_real_weights_and_shapes(name):
    """Every registered name has a cfg (no weights: not listed as pretrained) whose first_conv/classifier are
    state-dict keys, whose pool_size is the feature map at its input size and whose channels are the model's."""
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert name not in timm.list_models('ida_*', pretrained=True)
    assert cfg['crop_pct'] == 1.0 and cfg['input_size'][1] == cfg['input_size'][2]
    with torch.device('meta'):
        model = timm.create_model(name)
        feats = model.forward_features(torch.empty(1, *cfg['input_size']))
    keys = model.state_dict().keys()
    assert model.pretrained_cfg['architecture'] == name and model.in_chans == cfg['input_size'][0]
    assert cfg['first_conv'] + '.weight' in keys
    assert {f'{c}.weight' for c in cfg['classifier']} == {k for k in keys if k.startswith('clf.head.')}
    assert tuple(feats.shape[1:]) == (model.num_features, *cfg['pool_size'])
    assert model.num_classes == cfg['num_classes']


def test_release_preprocessing_in_cfg():
    cfg = timm.models.get_pretrained_cfg('ida_heavy_resnet101')
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.interpolation) == (
        (3, 448, 448), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 'bilinear')


def test_reset_classifier_keeps_attention_layers_and_pre_logits_is_the_pooled_map():
    model = timm.create_model('ida_heavy_test_resnet', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    att = {k: v.clone() for k, v in model.clf.state_dict().items() if not k.startswith('head.')}
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(pooled, feats.mean((2, 3)))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and not model.clf.training
        assert all(torch.equal(v, model.clf.state_dict()[k]) for k, v in att.items())
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.allclose(model(x), pooled)
        model.reset_classifier(0, '')
        assert torch.equal(model(x), feats)
    with pytest.raises(UserFacingError, match='no classes'):
        model.class_attention(x)


def test_num_classes_zero_and_global_pool_at_creation():
    model = timm.create_model('ida_light_test_resnet', num_classes=0, global_pool='')
    assert model.num_classes == 0 and not any(k.startswith('clf.') for k in model.state_dict())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features, 2, 2)


def test_intermediates_and_features_only_are_the_backbones_levels():
    model = timm.create_model('ida_light_absvit_micro_patch8_64').eval()
    feats = timm.create_model('ida_light_absvit_micro_patch8_64', features_only=True).eval()
    feats.load_state_dict({k[len('backbone.'):]: v for k, v in model.state_dict().items()
                           if k.startswith('backbone.')})
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert all(torch.equal(a, b) for a, b in zip(inter, feats(x))) and len(inter) == len(model.feature_info)
        assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
        last = model.forward_intermediates(x, indices=1, output_fmt='NHWC', intermediates_only=True)
    assert len(last) == 1 and torch.equal(last[0], final.permute(0, 2, 3, 1))
    assert feats.pretrained_cfg['input_size'] == (1, 64, 64)


@pytest.mark.parametrize('name', ['ida_heavy_test_resnet', 'ida_light_test_resnet'])
def test_convnet_ida_scripts_and_equals_eager(name):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_absvit_ida_refuses_torchscript_for_its_backbones_reason():
    """The reason tests/test_timm_suite.py gives for not scripting IDA on AbSViT: AbSViT's feature wrapper
    cannot be scripted (its ignored forward_intermediates takes keyword-only arguments)."""
    backbone = timm.create_model('absvit_micro_patch4_28_gap', features_only=True, patch_size=8, img_size=64)
    with pytest.raises(RuntimeError, match=r'arg_types|redefine method: forward on class: .*FeatureGetterNet'):
        torch.jit.script(backbone)


def test_factory_device_dtype_and_unknown_arguments():
    model = timm.create_model('ida_heavy_test_resnet', device='meta', dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {('meta', torch.float64)}
    model.reset_classifier(4)
    assert {(p.device.type, p.dtype) for p in model.clf.parameters()} == {('meta', torch.float64)}
    with pytest.raises(TypeError):
        timm.create_model('ida_heavy_test_resnet', not_a_model_arg=1)
