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
