"""RVT and FAN-ViT (and their AbS variants): exactness against the releases (golden file), the
releases' full-size key layouts written out here from their code, RVT*'s attention scaling against a
direct computation, timm integration, and what is their own in the top-down path (the signal against
the full-projection reference, RVT's bridge and mask, the maps' grids); what every backbone must do is
tests/test_backbone_contract.py's."""
import pytest
import timm
import torch
import torch.nn.functional as F

import models
import models.fan  # noqa: F401  (registers fan_* and absfan_* with timm)
import models.rvt  # noqa: F401  (registers rvt_* and absrvt_* with timm)
from conftest import golden
from model_helpers import amplify_feedback, close, rel_err
from models.fan import FAN, AbSFAN
from models.rvt import RVT, AbSRVT

pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
              pytest.mark.usefixtures('one_thread')]

RVT_NAMES = ['rvt_tiny', 'rvt_small', 'rvt_base']
FAN_NAMES = ['fan_tiny_12_p16_224', 'fan_small_12_p16_224', 'fan_base_18_p16_224']
#: The releases' own full-size counts (../shared/README.md, measured with their classes).
RELEASE_PARAMS = {'rvt_tiny': 8_646_376, 'rvt_small': 22_148_392, 'rvt_base': 86_223_784,
                  'fan_tiny_12_p16_224': 7_319_920, 'fan_small_12_p16_224': 28_345_336,
                  'fan_base_18_p16_224': 54_350_320}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Exactness against the releases

@pytest.mark.parametrize('entry,cls', [('rvt_two_stage', RVT), ('rvt_one_stage', RVT), ('fan_vit', FAN)])
def test_golden_release_logits(entry, cls):
    g = golden('rvt_fan_release_micro.pt')[entry]
    model = cls(**g['config']).eval()
    model.load_state_dict(g['state_dict'], strict=True)
    assert n_params(model) == g['params']
    with torch.no_grad():
        logits = model(g['x'])
    assert rel_err(logits, g['logits']) <= 1e-5


def _bn(prefix, c):
    return {f'{prefix}.{n}': (c,) for n in ('weight', 'bias', 'running_mean', 'running_var')} | \
        {f'{prefix}.num_batches_tracked': ()}


def _lin(prefix, c_out, c_in, bias=True):
    return {f'{prefix}.weight': (c_out, c_in)} | ({f'{prefix}.bias': (c_out,)} if bias else {})


def _conv(prefix, c_out, c_in_per_group, k, bias=True):
    return {f'{prefix}.weight': (c_out, c_in_per_group, k, k)} | ({f'{prefix}.bias': (c_out,)} if bias else {})


def _ln(prefix, c):
    return {f'{prefix}.weight': (c,), f'{prefix}.bias': (c,)}


def rvt_release_layout(base_dims, depth, heads, num_classes=1000):
    """Every key and shape of the release's ``PoolingTransformer``, written out from its code."""
    dims = [b * h for b, h in zip(base_dims, heads)]
    keys = _conv('patch_embed.proj.0', 32, 3, 7) | _bn('patch_embed.proj.1', 32) | \
        _conv('patch_embed.proj.3', dims[0], 32, 4)
    for s, (d, n) in enumerate(zip(dims, depth)):
        for i in range(n):
            p = f'transformers.{s}.blocks.{i}.'
            keys |= _ln(p + 'norm1', d) | _lin(p + 'attn.qkv', 3 * d, d) | _lin(p + 'attn.proj', d, d) | \
                _ln(p + 'norm2', d)
            if d == 768:  # the release's plain MLP
                keys |= _lin(p + 'mlp.fc1', 4 * d, d) | _lin(p + 'mlp.fc2', d, 4 * d)
            else:
                keys |= _conv(p + 'mlp.fc1', 4 * d, d, 1) | _bn(p + 'mlp.bn1', 4 * d) | \
                    _conv(p + 'mlp.dwconv', 4 * d, 1, 3) | _bn(p + 'mlp.bn2', 4 * d) | \
                    _conv(p + 'mlp.fc2', d, 4 * d, 1) | _bn(p + 'mlp.bn3', d)
        if s < len(dims) - 1:
            keys |= _conv(f'pools.{s}.conv', dims[s + 1], 1, 3)
    return keys | _ln('norm', dims[-1]) | _lin('head', num_classes, dims[-1])


def fan_release_layout(embed_dim, depth, num_heads, num_classes=1000, cls_blocks=2):
    """Every key and shape of the release's ``FAN`` (FAN-ViT, patch 16), written out from its code."""
    C, H = embed_dim, 4 * embed_dim
    keys = {'cls_token': (1, 1, C)}
    for j, (c_out, c_in) in zip((0, 2, 4, 6), ((C // 8, 3), (C // 4, C // 8), (C // 2, C // 4), (C, C // 2))):
        keys |= _conv(f'patch_embed.proj.{j}.0', c_out, c_in, 3, bias=False) | _bn(f'patch_embed.proj.{j}.1', c_out)
    keys |= _conv('pos_embed.token_projection', C, 64, 1)
    for i in range(depth):
        p = f'blocks.{i}.'
        keys |= {p + 'gamma1': (C,), p + 'gamma2': (C,), p + 'mlp.temperature': (num_heads, 1, 1),
                 p + 'mlp.mlp_v.gamma': (H,)}
        keys |= _ln(p + 'norm1', C) | _lin(p + 'attn.q', C, C) | _lin(p + 'attn.kv', 2 * C, C) | \
            _lin(p + 'attn.proj', C, C) | _ln(p + 'norm2', C) | _lin(p + 'mlp.mlp_v.fc1', H, C) | \
            _conv(p + 'mlp.mlp_v.dwconv.conv1', H, 1, 3) | _bn(p + 'mlp.mlp_v.dwconv.bn', H) | \
            _conv(p + 'mlp.mlp_v.dwconv.conv2', H, 1, 3) | _lin(p + 'mlp.mlp_v.fc2', C, H) | \
            _ln(p + 'mlp.norm_v', C) | _lin(p + 'mlp.q', C, C)
    for j in range(cls_blocks):
        p = f'cls_attn_blocks.{j}.'
        keys |= {p + 'gamma1': (C,), p + 'gamma2': (C,)} | _ln(p + 'norm1', C) | _ln(p + 'norm2', C)
        for n in 'qkv':
            keys |= _lin(p + f'attn.{n}', C, C)
        keys |= _lin(p + 'attn.proj', C, C) | _lin(p + 'mlp.fc1', H, C) | _lin(p + 'mlp.fc2', C, H)
    return keys | _ln('norm', C) | _lin('head', num_classes, C)


RELEASE_LAYOUTS = {
    'rvt_tiny': lambda: rvt_release_layout([32, 32], [10, 2], [6, 12]),
    'rvt_small': lambda: rvt_release_layout([64], [12], [6]),
    'rvt_base': lambda: rvt_release_layout([64], [12], [12]),
    'fan_tiny_12_p16_224': lambda: fan_release_layout(192, 12, 4),
    'fan_small_12_p16_224': lambda: fan_release_layout(384, 12, 8),
    'fan_base_18_p16_224': lambda: fan_release_layout(448, 18, 8),
}


def _is_param(key):
    return not key.endswith(('running_mean', 'running_var', 'num_batches_tracked'))


@pytest.mark.parametrize('name', RVT_NAMES + FAN_NAMES)
def test_full_size_release_layout_loads_strictly(name):
    layout = RELEASE_LAYOUTS[name]()
    # the layout written out from the release's code has the release's own parameter count ...
    assert sum(torch.Size(s).numel() for k, s in layout.items() if _is_param(k)) == RELEASE_PARAMS[name]
    with torch.device('meta'):
        model = timm.create_model(name)
        # ... and a state dict of exactly those keys and shapes loads strictly
        model.load_state_dict({k: torch.empty(s, dtype=torch.long if 'num_batches' in k else torch.float)
                               for k, s in layout.items()}, strict=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    assert n_params(model) == RELEASE_PARAMS[name]


def test_golden_micro_configs_are_the_release_layouts():
    g = golden('rvt_fan_release_micro.pt')
    for entry, layout in (('rvt_two_stage', rvt_release_layout([16, 16], [2, 1], [2, 4], 10)),
                          ('rvt_one_stage', rvt_release_layout([32], [2], [2], 10)),
                          ('fan_vit', fan_release_layout(64, 3, 4, 10))):
        assert {k: tuple(v.shape) for k, v in g[entry]['state_dict'].items()} == layout, entry


# ------------------------------------------------------------------------------------------------
# RVT details

def test_rvt_batch_of_one_equals_its_row_of_a_batch():
    """The release's ``squeeze()`` drops the batch axis at batch 1; pooling here keeps it."""
    model = timm.create_model('rvt_tiny', num_classes=7).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched, single = model(x), model(x[1:2])
    assert single.shape == (1, 7) and torch.allclose(single, batched[1:2], atol=1e-5)


def test_rvt_star_attention_scaling_equals_a_direct_computation():
    torch.manual_seed(0)
    model = RVT(img_size=64, base_dims=[16], depth=[2], heads=[2], num_classes=5, use_mask=True,
                masked_block=1).eval()
    attn = model.transformers[0].blocks[0].attn
    assert model.transformers[0].blocks[1].attn.att_mask is None  # only blocks < masked_block
    assert attn.att_mask.shape == (2, 16, 16) and (attn.att_mask == 0).all()  # 4x4 tokens; initialised to 0
    with torch.no_grad():
        attn.att_mask.normal_(0, 2)
        x = torch.randn(3, 16, 32)
        q, k, v = (x @ attn.qkv.weight.t() + attn.qkv.bias).reshape(3, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-1, -2)) / 4.0 * torch.sigmoid(attn.att_mask)
        ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 16, 32) @ attn.proj.weight.t() + attn.proj.bias
        assert torch.allclose(attn(x), ref, atol=1e-5)
        with pytest.raises(ValueError, match='construction size'):
            model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match='masked_block'):
        RVT(use_mask=True)


def test_rvt_base_width_768_takes_the_linear_ffn():
    model = RVT(img_size=32, base_dims=[64], depth=[1], heads=[12], num_classes=3)
    mlp = model.transformers[0].blocks[0].mlp
    x = torch.randn(2, 4, 768)
    ref = F.gelu(x @ mlp.fc1.weight.t() + mlp.fc1.bias) @ mlp.fc2.weight.t() + mlp.fc2.bias
    assert torch.allclose(mlp(x, 2, 2), ref, atol=1e-5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_release_config_errors_are_clear():
    with pytest.raises(ValueError, match='must be 16'):
        RVT(patch_size=8, stride=8)
    with pytest.raises(ValueError, match='one entry per stage'):
        RVT(base_dims=[32, 32], depth=[2], heads=[6])
    with pytest.raises(TypeError):
        RVT(depths=[12])  # typos are not swallowed
    with pytest.raises(TypeError):
        FAN(se_mlp=True)  # FAN-Hybrid / SE variants are not FAN-ViT


# ------------------------------------------------------------------------------------------------
# timm integration

SMALL = {'rvt_tiny': 64, 'fan_tiny_12_p16_224': 64}


@pytest.mark.parametrize('name', list(SMALL))
def test_forward_backward_at_small_resolution(name):
    model = timm.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    logits = model(torch.randn(2, 3, SMALL[name], SMALL[name]))
    assert logits.shape == (2, 5)
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('name', RVT_NAMES + FAN_NAMES + ['abs' + n for n in RVT_NAMES + FAN_NAMES])
def test_pretrained_cfgs_are_the_release_protocols(name):
    with torch.device('meta'):
        model = timm.create_model(name).eval()
        out = model.forward_features(torch.empty(1, 3, 224, 224))
    cfg, keys = model.pretrained_cfg, model.state_dict()
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['interpolation'] == 'bicubic'
    assert cfg['crop_pct'] == (0.875 if 'rvt' in name else 1.0)  # DeiT's eval vs FAN's
    assert cfg['first_conv'] + '.weight' in keys and cfg['classifier'] + '.weight' in keys
    if 'rvt' in name:  # a map, channel-last as output_fmt says
        assert model.output_fmt == 'NHWC' and out.shape[1:] == (*cfg['pool_size'], model.num_features)
        assert cfg['pool_size'] == ((7, 7) if 'tiny' in name else (14, 14))
    else:  # tokens, class token first
        assert cfg['pool_size'] is None and out.shape[1:] == (197, model.num_features)


@pytest.mark.parametrize('name,shapes', [
    ('rvt_tiny', [(192, 4, 4), (384, 2, 2), (384, 2, 2)]),
    ('fan_tiny_12_p16_224', [(192, 4, 4)] * 3)])
def test_features_only_and_intermediates(name, shapes):
    x = torch.randn(2, 3, 64, 64)
    model = timm.create_model(name).eval()
    feats = timm.create_model(name, features_only=True, out_indices=(9, 10, 11)).eval()
    feats.model.load_state_dict(model.state_dict(), strict=False)  # the pruned copy of the same weights
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=(9, 10, 11))
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        got = feats(x)
        nlc = model.forward_intermediates(x, indices=[-1], output_fmt='NLC', intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in inter] == shapes == [tuple(f.shape[1:]) for f in got]
    assert feats.feature_info.reduction() == ([16, 32, 32] if name == 'rvt_tiny' else [16] * 3)
    for a, b in zip(inter, got):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(nlc[0], inter[-1].flatten(2).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize('name', list(SMALL))
def test_pruned_model_keeps_the_early_blocks(name):
    x = torch.randn(1, 3, 64, 64)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[4], intermediates_only=True)
        model.prune_intermediate_layers([4])
        got = model.forward_intermediates(x, indices=[4], intermediates_only=True)
        out = model(x)  # head gone: unpooled features (RVT: a channel-last map; FAN: tokens)
    assert out.shape[-1] == model.num_features
    assert torch.allclose(want[0], got[0], atol=1e-6)


def test_heads_and_pooling_options():
    x = torch.randn(2, 3, 64, 64)
    rvt = timm.create_model('rvt_small', num_classes=4).eval()
    fan = timm.create_model('fan_tiny_12_p16_224', num_classes=4).eval()
    with torch.no_grad():
        feats = rvt.forward_features(x)  # channel-last, as output_fmt says
        assert feats.shape == (2, 4, 4, 384) and rvt.output_fmt == 'NHWC'
        assert torch.allclose(rvt.forward_head(feats, pre_logits=True), rvt.norm(feats.mean((1, 2))))
        rvt.reset_classifier(0, '')
        assert rvt(x).shape == (2, 4, 4, 384)
        tokens = fan.forward_features(x)
        assert tokens.shape == (2, 17, 192) and torch.allclose(fan(x), fan.head(tokens[:, 0]), atol=1e-6)
        fan.reset_classifier(3, 'avg')
        assert torch.allclose(fan(x), fan.head(tokens[:, 1:].mean(1)), atol=1e-6)
    assert rvt.no_weight_decay() == set() and fan.no_weight_decay() == {'cls_token'}


@pytest.mark.parametrize('name', list(SMALL))
def test_torchscript_gives_the_eager_logits(name):
    model = timm.create_model(name, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# AbS-RVT and AbS-FAN

RVT_MICRO = dict(img_size=64, base_dims=[16, 16], depth=[2, 1], heads=[2, 4], num_classes=10)  # two stages
FAN_MICRO = dict(img_size=64, embed_dim=64, depth=3, num_heads=4, tokens_norm=True, num_classes=10)
ABS = {'rvt': (AbSRVT, RVT, RVT_MICRO), 'fan': (AbSFAN, FAN, FAN_MICRO)}


def abs_micro(kind, td_mode='abs', seed=0, scale=8.0):
    """A micro AbS model whose feedback is large enough to change the result visibly."""
    torch.manual_seed(seed)
    cls, _, cfg = ABS[kind]
    return amplify_feedback(cls(**cfg, td_mode=td_mode), scale)


def reference_attention(attn, x, td, signal):
    """The attention of a block as the releases compute it, with the top-down signal projected by
    the FULL projection (weights and bias) and the slices the mode names added; naive softmax."""
    B, N, C = x.shape
    h, d = attn.num_heads, C // attn.num_heads
    split = lambda t, n: t.reshape(B, N, n, h, d).permute(2, 0, 3, 1, 4)  # noqa: E731
    if hasattr(attn, 'qkv'):  # RVT
        q, k, v = split(attn.qkv(x), 3)
        q_td, k_td, v_td = split(attn.qkv(td), 3) if signal in ('value', 'qkv') else (None,) * 3
    else:  # FAN token mixing: q, then one kv projection
        q, (k, v) = split(attn.q(x), 1)[0], split(attn.kv(x), 2)
        q_td, (k_td, v_td) = (split(attn.q(td), 1)[0], split(attn.kv(td), 2)) if signal in ('value', 'qkv') \
            else (None, (None, None))
    if signal == 'qkv':
        q, k = q + q_td, k + k_td
    if signal in ('value', 'qkv'):
        v = v + v_td
    if signal == 'mask':
        v = v * td.reshape(B, 1, N, 1)
    logits = q @ k.transpose(-1, -2) / d ** 0.5
    if getattr(attn, 'att_mask', None) is not None:
        logits = logits * torch.sigmoid(attn.att_mask)
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize('kind', ['rvt', 'rvt_star', 'fan'])
@pytest.mark.parametrize('signal', ['value', 'qkv', 'mask'])
def test_attention_signal_equals_the_full_projection_reference(kind, signal):
    torch.manual_seed(0)
    if kind == 'fan':
        attn = models.fan.TokenMixing(32, 4, signal=signal)
    else:
        attn = models.rvt.RVTAttention(32, 4, num_tokens=9 if kind == 'rvt_star' else None, signal=signal)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)  # biases matter: the fold doubles them
        x = torch.randn(2, 9, 32)
        td = torch.rand(2, 9, 1) if signal == 'mask' else torch.randn(2, 9, 32)
        got, plain = attn(x, td), attn(x)
        assert rel_err(got, reference_attention(attn, x, td, signal)) < 1e-5
        assert rel_err(plain, reference_attention(attn, x, td, 'none')) < 1e-5
        assert (got - plain).abs().max() > 1e-2
    with pytest.raises(ValueError, match='takes no top-down signal'):
        type(attn)(32, 4, signal='none')(x, td)


def reference_signals(model, tokens, prior, alpha):
    """The feedback written out: reweight every final token, walk the decoders down; at RVT's stage
    boundary the transposed conv with the pooling's shape."""
    z = alpha * F.cosine_similarity(tokens, prior.expand_as(tokens), dim=-1).clamp(0, 1).unsqueeze(-1) * tokens
    signals = [None] * len(model.decoders)
    for i in reversed(range(len(model.decoders))):
        z = z @ model.decoders[i].linear.weight.t()
        signals[i] = z @ model.decoders[i].linear2.weight.t()
        if isinstance(model, AbSRVT) and i in model.bridge_blocks:
            up = model.up_projs[model.bridge_blocks.index(i)]
            z = F.conv_transpose2d(z.permute(0, 3, 1, 2), up.weight, stride=2, padding=1, output_padding=1,
                                   groups=up.groups).permute(0, 2, 3, 1)
    return signals


@pytest.mark.parametrize('kind,size', [('rvt', 64), ('rvt', 80), ('fan', 64)])
def test_top_down_pass_equals_the_reference(kind, size):
    """Pass 2 with every attention replaced by the full-projection reference, fed signals that the test
    computes, crops (RVT, odd maps: 5x5 under a 6x6 feedback) and flattens itself, gives the logits."""
    model = abs_micro(kind).eval()
    attns = [blk.attn for stage in model.transformers for blk in stage.blocks] if kind == 'rvt' \
        else [blk.attn for blk in model.blocks]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = model.bottom_up(x)
        prior = tokens.flatten(0, -2).mean(0) + torch.randn(tokens.shape[-1])  # selects some tokens, not all
        got = model(x, prior=prior, alpha=2.0)
        signals = reference_signals(model, tokens, prior, 2.0)
        for attn, sig in zip(attns, signals):
            def ref(a, td, attn=attn, sig=sig):
                n = a.shape[1]
                s = sig[:, 1:] if kind == 'fan' else sig[:, :int(n ** 0.5), :int(n ** 0.5)].reshape(a.shape)
                return reference_attention(attn, a, s, 'value')
            attn.forward = ref
        want = model.forward_head(model.forward_pass(x).tokens)  # the plain pass, every attention the reference
    assert rel_err(got, want) < 1e-5
    assert (got - model.forward_head(tokens)).abs().max() > 1e-2  # the top-down path matters here


@pytest.mark.parametrize('kind,entry', [('rvt', 'rvt_two_stage'), ('rvt', 'rvt_one_stage'), ('fan', 'fan_vit')])
def test_abs_takes_release_weights_and_its_pass_1_is_the_release(kind, entry):
    g = golden('rvt_fan_release_micro.pt')[entry]
    model = ABS[kind][0](**g['config']).eval()
    missing, unexpected = model.load_state_dict(g['state_dict'], strict=False)
    assert unexpected == [] and all(k.startswith(('prompt', 'decoders.', 'up_projs.')) for k in missing)
    with torch.no_grad():
        assert rel_err(model(g['x'], return_aux=True).pass_logits[0], g['logits']) <= 1e-5


def test_rvt_maskatt_repeats_its_mask_for_stage_0():
    model = abs_micro('rvt', 'maskatt').eval()
    x = torch.randn(2, 3, 80, 80)  # stage maps 5x5 and 3x3
    with torch.no_grad():
        plain = model.forward_pass(x).tokens
        ones = model.forward_pass(x, td=[torch.ones(2, 3, 3, 1)] * 3).tokens  # an all-ones mask: pass 1 again
        assert torch.allclose(ones, plain, atol=1e-5)
        mask = torch.rand(2, 3, 3, 1)
        got = model.forward_pass(x, td=[mask] * 3, collect=True)
        # stage 0 sees the mask repeated nearest: the same as handing it the 5x5 repetition
        rep = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :5, :5]
        want = model.forward_pass(x, td=[rep, rep, mask], collect=True)
    assert torch.allclose(got.tokens, want.tokens, atol=1e-6)
    assert not torch.allclose(got.tokens, plain, atol=1e-4)


def test_feedback_reaches_stage_0_through_the_bridge():
    model = abs_micro('rvt').train()
    out = model(torch.randn(2, 3, 64, 64), return_aux=True)
    out.logits.square().sum().backward()
    for name in ('up_projs.0.weight', 'decoders.0.linear2.weight', 'decoders.2.linear.weight', 'prompt'):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.up_projs[0].weight.shape == model.pools[0].conv.weight.shape  # the pooling's adjoint's shape


ABS_PARAMS = {  # Table 2's AbS rows (M) where one decoder per block gives them; Ti: see the report
    'absrvt_small': 25.7, 'absrvt_base': 100.4, 'absfan_small_12_p16_224': 31.9, 'absfan_base_18_p16_224': 61.6,
    'absrvt_tiny': 10.0, 'absfan_tiny_12_p16_224': 8.2}


@pytest.mark.parametrize('name', list(ABS_PARAMS))
def test_abs_param_counts(name):
    plain_name = name[3:]
    with torch.device('meta'):
        model = timm.create_model(name)
    dims = [d for d, n in zip(*((model.dims, model.depths) if 'rvt' in name else
                                ([model.embed_dim], [len(model.blocks)]))) for _ in range(n)]
    bridge = 384 * 9 if name == 'absrvt_tiny' else 0  # grouped 3x3: 384 in, one output per group
    expected = RELEASE_PARAMS[plain_name] + sum(2 * d * d for d in dims) + dims[-1] + bridge
    assert n_params(model) == expected and round(expected / 1e6, 1) == ABS_PARAMS[name]


@pytest.mark.parametrize('kind', list(ABS))
def test_inspect_maps_live_on_each_blocks_grid(kind):
    """Steering and inspect in general: tests/test_backbone_contract.py. Here the maps' grids: RVT's two
    stages put block 1 and the prior's mask on different maps; FAN has one 4x4 grid."""
    model = abs_micro(kind).eval()
    r = model.inspect(torch.randn(2, 3, 64, 64), classes=3, alpha=4.0, attn_weights=True, feature_blocks=(0, 2),
                      depth=2)
    assert r['bottom_up'].shape == r['top_down'].shape == (2, 4, 4)
    assert r['prior_mask'].shape == ((2, 2, 2) if kind == 'rvt' else (2, 4, 4))
    assert [tuple(w.shape[-2:]) for w in r['attn_top_down']] == ([(16, 16)] * 2 + [(4, 4)] if kind == 'rvt'
                                                                 else [(16, 16)] * 3)
    assert [tuple(f.shape) for f in r['features'].values()] == \
        ([(2, 32, 4, 4), (2, 64, 2, 2)] if kind == 'rvt' else [(2, 64, 4, 4)] * 2)


# ------------------------------------------------------------------------------------------------
# timm conventions of the AbS variants: the mode table, the top-down pass as the features

@pytest.mark.parametrize('name,kwargs', [('absrvt_tiny', RVT_MICRO), ('rvt_tiny', RVT_MICRO),
                                         ('absfan_tiny_12_p16_224', FAN_MICRO), ('fan_tiny_12_p16_224', FAN_MICRO)])
def test_features_only_and_pruning_keep_the_taps(name, kwargs):
    torch.manual_seed(0)
    full = timm.create_model(name, **kwargs).eval()
    feats = timm.create_model(name, features_only=True, out_indices=(0, 2), **kwargs).eval()
    missing, unexpected = feats.model.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith(('head.', 'norm.', 'cls_attn_blocks.', 'cls_token')) for k in unexpected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = full.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
        got = feats(x)
        early = full.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert feats.feature_info.channels() == [t.shape[1] for t in taps] and close(early[0], taps[0])
    assert all(close(a, b) for a, b in zip(got, taps))
    if name.startswith('abs'):  # pass 1 and the feedback need every block: only the classifier goes
        assert n_params(feats.model) == n_params(full) - n_params(full.get_classifier())


@pytest.mark.parametrize('td_mode', ['perceiver', 'abs'])
def test_stop_early_below_a_stage_boundary_gives_that_stage(td_mode):
    """Two-stage AbS-RVT stopped in stage 0: the final features are stage 0's tokens (the prior, as wide as
    the last stage, never acts there), and the taps equal the full pass's."""
    torch.manual_seed(0)
    model = timm.create_model('absrvt_tiny', td_mode=td_mode, **RVT_MICRO).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, early = model.forward_intermediates(x, indices=[0], stop_early=True, output_fmt='NHWC')
        full_final, taps = model.forward_intermediates(x, indices=[0], output_fmt='NHWC')
    assert close(early[0], taps[0]) and close(final, early[0])
    assert final.shape[-1] < full_final.shape[-1] == model.num_features
    assert close(full_final, model.forward_features(x))
