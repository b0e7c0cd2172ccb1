"""The project's models as timm citizens, checked against independent computations: the mode table,
``forward_features`` / ``forward_intermediates`` / ``features_only`` (the top-down pass by default, the
bottom-up one on request, steering inputs honoured), pruning, TorchScript and FX, the pretrained
configs, and the DAT constructor's release-config converter. timm's own suite is
``tests/test_timm_suite.py``."""
import copy
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from benchmarks.naive_absvit import naive_like
from models import TD_MODES, TOP_DOWN_MODES, AbSViT
from models.dat import DAT, AbSDAT, RELEASE_ONLY_KEYS, dat_kwargs_from_release
from models.topdown import fold_value_signal
from model_helpers import amplify_feedback, close, fx_traced

pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
              pytest.mark.usefixtures('one_thread')]

SECOND_PASS_MODES = [m for m in TD_MODES if TOP_DOWN_MODES[m].second_pass]
DAT_MICRO = dict(img_size=64, num_classes=10, dim_stem=16, dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                 heads=[1, 1, 2, 4], groups=[1, 1, 1, 2], stage_spec=[['N', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D']],
                 drop_path_rate=0.)


def visible(model, scale=8.0):
    """Scale the feedback path so that the top-down pass differs visibly from the bottom-up one."""
    return amplify_feedback(model, scale).eval()


def absvit(td_mode='abs', global_pool='token', **kw):
    torch.manual_seed(0)
    return visible(AbSViT(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10,
                          global_pool=global_pool, td_mode=td_mode, **kw))


def absdat(td_mode='abs'):
    torch.manual_seed(0)
    return visible(AbSDAT(**DAT_MICRO, td_mode=td_mode))


# ------------------------------------------------------------------------------------------------
# The mode table is what the models build and run

@pytest.mark.parametrize('mode', TD_MODES)
def test_mode_table_is_what_an_absvit_builds_and_runs(mode):
    row = TOP_DOWN_MODES[mode]
    model = absvit(mode)
    assert model.td_spec == row and (model.prompt is not None) == row.prior
    assert (model.decoders is not None) == row.decoders
    assert all(blk.attn.signal == row.signal for blk in model.blocks)  # given at construction
    calls = []
    hook = model.blocks[0].register_forward_hook(lambda m, args, out: calls.append(args[1] if len(args) > 1 else None))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    hook.remove()
    assert len(calls) == (2 if row.second_pass else 1)
    if row.second_pass:  # pass 2 hands block 0 its signal: a token mask (maskatt) or a token-wide tensor
        assert calls[0] is None and calls[1].shape[-1] == (1 if row.signal == 'mask' else 64)


def test_modes_a_backbone_lacks_are_refused_clearly():
    assert AbSDAT.TD_MODES == ('abs', 'feedback')
    with pytest.raises(ValueError, match=r"AbSDAT supports td_mode \('abs', 'feedback'\), got 'qkv'"):
        AbSDAT(**DAT_MICRO, td_mode='qkv')
    with pytest.raises(ValueError, match='td_mode must be one of'):
        AbSViT(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, td_mode='nope')


def test_value_fold_equals_the_releases_two_projections():
    x, td = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    w, b = torch.randn(6, 8), torch.randn(6)
    xs, bs = fold_value_signal(x, td, b)
    assert close(F.linear(xs, w, bs), F.linear(x, w, b) + F.linear(td, w, b))
    assert fold_value_signal(x, None, b) == (x, b)
    xm, tdm, wc = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3), torch.randn(6, 8, 1, 1)
    xs, bs = fold_value_signal(xm, tdm, b)
    assert close(F.conv2d(xs, wc, bs), F.conv2d(xm, wc, b) + F.conv2d(tdm, wc, b))


# ------------------------------------------------------------------------------------------------
# forward_features / forward_intermediates / features_only report the top-down pass

@pytest.mark.parametrize('mode', TD_MODES)
def test_forward_is_head_of_forward_features_with_steering(mode):
    model = absvit(mode, 'avg')
    x = torch.randn(2, 3, 32, 32)
    steer = {} if mode == 'feedback' else dict(classes=[1, 4], alpha=3.0)
    with torch.no_grad():
        assert torch.equal(model.forward_head(model.forward_features(x, **steer)), model(x, **steer))
        assert torch.equal(model(x, **steer), model(x, return_aux=True, **steer).logits)


@pytest.mark.parametrize('pool', ['token', 'avg'])
@pytest.mark.parametrize('mode', SECOND_PASS_MODES)
def test_absvit_intermediates_are_inspects_second_pass_features(mode, pool):
    model = absvit(mode, pool)
    x = torch.randn(2, 3, 32, 32)
    steer = {} if mode == 'feedback' else dict(classes=3, alpha=4.0)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 2, 3], **steer)
        features = model.inspect(x, feature_blocks=(0, 2, 3), **steer)['features']
        assert close(final, model.forward_features(x, **steer))
    for got, block in zip(inter, (0, 2, 3)):
        assert got.shape == (2, 64, 4, 4) and close(got, features[block])


def test_absvit_intermediates_equal_the_naive_references_second_pass():
    """An independent implementation (full qkv of td, explicit loops): its pass-2 block outputs."""
    model = absvit('abs', 'token')
    naive = naive_like(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, _, _ = naive.forward_features(x)
        _, _, outs = naive.forward_features(x, naive.feedback(naive.reweight(tokens)))
        inter = model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)
    assert all(close(a, b[:, 1:]) for a, b in zip(inter, outs))


@pytest.mark.parametrize('mode', TD_MODES)
def test_bottom_up_intermediates_are_timms_own_vit_pass(mode):
    """``top_down=False`` is pass 1: timm's VisionTransformer.forward_intermediates on the same model."""
    model = absvit(mode)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, top_down=False, return_prefix_tokens=True)
        ref_final, ref_inter = VisionTransformer.forward_intermediates(model, x, return_prefix_tokens=True)
        assert torch.equal(final, model.bottom_up(x)) and close(final, ref_final)
        top = model.forward_intermediates(x, intermediates_only=True)
    for (got, prefix), (ref, ref_prefix) in zip(inter, ref_inter):
        assert close(got, ref) and close(prefix, ref_prefix)
    if TOP_DOWN_MODES[mode].second_pass:
        assert not close(top[-1], inter[-1][0], 1e-3)


def test_perceiver_reports_its_only_pass_with_reweighted_final_features():
    model = absvit('perceiver', 'avg')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, alpha=2.0)
        _, bottom = model.forward_intermediates(x, top_down=False)
        z = model.bottom_up(x)
        mask = F.cosine_similarity(z, model.prompt.expand_as(z), dim=-1).clamp(0, 1)
    assert close(final, z * mask.unsqueeze(-1) * 2.0)
    assert all(torch.equal(a, b) for a, b in zip(inter, bottom))


def test_steering_reaches_forward_intermediates():
    model = absvit('abs', 'avg')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.forward_intermediates(x, intermediates_only=True)
        by_class = model.forward_intermediates(x, classes=[3, 5], alpha=6.0, intermediates_only=True)
        by_vector = model.forward_intermediates(x, prior=model.head.weight[[3, 5]], alpha=6.0,
                                                intermediates_only=True)
        inspected = model.inspect(x, classes=[3, 5], alpha=6.0, feature_blocks=(3,))['features'][3]
    assert (by_class[-1] - plain[-1]).abs().max() > 1e-3
    assert all(torch.equal(a, b) for a, b in zip(by_class, by_vector)) and close(by_class[-1], inspected)


@pytest.mark.parametrize('mode', AbSDAT.TD_MODES)
def test_absdat_stage_intermediates_are_inspects_and_plain_dats(mode):
    model = absdat(mode)
    x = torch.randn(2, 3, 64, 64)
    ends = [2, 4, 6, 8]  # the last block of each stage
    steer = {} if mode == 'feedback' else dict(classes=2, alpha=3.0)
    plain = DAT(**DAT_MICRO).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, **steer)
        features = model.inspect(x, depth=8, feature_blocks=[e - 1 for e in ends], **steer)['features']
        bottom_final, bottom = model.forward_intermediates(x, top_down=False)
        ref_final, ref = plain.forward_intermediates(x)
        assert close(final, model.forward_features(x, **steer)) and close(bottom_final, ref_final)
    assert [t.shape[1:] for t in inter] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    assert all(close(a, features[e - 1]) for a, e in zip(inter, ends))
    assert all(close(a, b) for a, b in zip(bottom, ref)) and not close(inter[0], bottom[0], 1e-3)


@pytest.mark.parametrize('name,kwargs,size', [
    ('absvit_micro_patch4_28_gap', {}, (1, 28, 28)),
    ('absvit_micro_patch4_28_gap', dict(td_mode='maskatt'), (1, 28, 28)),
    ('vit_micro_patch4_28_gap', {}, (1, 28, 28)),
    ('absdat_tiny', DAT_MICRO, (3, 64, 64)),
    ('dat_tiny', DAT_MICRO, (3, 64, 64)),
])
def test_features_only_outputs_are_forward_intermediates(name, kwargs, size):
    torch.manual_seed(0)
    full = timm.create_model(name, **kwargs).eval()
    feats = timm.create_model(name, features_only=True, out_indices=(1, 3), **kwargs).eval()
    missing, unexpected = feats.model.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith(('head.', 'fc_norm.', 'cls_head.', 'cls_norm.')) for k in unexpected)
    x = torch.randn(2, *size)
    with torch.no_grad():
        got = feats(x)
        want = full.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
    assert feats.feature_info.channels() == [t.shape[1] for t in want] and len(got) == 2
    assert all(close(a, b) for a, b in zip(got, want))


def test_stop_early_and_pruning_keep_the_taps():
    x32, x64 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    for model, x in ((absvit(), x32), (absdat(), x64), (visible(DAT(**DAT_MICRO)), x64)):
        with torch.no_grad():
            taps = model.forward_intermediates(x, intermediates_only=True)
            early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
            pruned = copy.deepcopy(model)
            kept = pruned.prune_intermediate_layers([1], prune_norm=True)
            after = pruned.forward_intermediates(x, indices=kept, intermediates_only=True)
        assert kept == [1] and close(early[0], taps[1]) and close(after[0], taps[1])
        assert sum(p.numel() for p in pruned.get_classifier().parameters()) == 0
        if getattr(model, 'is_top_down', False):  # pass 1 and the feedback need every block
            assert len(list(pruned.parameters())) == len(list(model.parameters())) - 2
        else:
            assert len(pruned.stages) == 2 and close(pruned.forward_features(x).permute(0, 3, 1, 2), taps[1])


# ------------------------------------------------------------------------------------------------
# TorchScript and FX

@pytest.mark.parametrize('mode', TD_MODES)
def test_absvit_scripts_with_steering_and_equals_eager(mode):
    model = absvit(mode)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    steer = [{}] if mode == 'feedback' else [{}, dict(classes=torch.tensor([1, 4]), alpha=3.0),
                                             dict(prior=torch.randn(64))]
    with torch.no_grad():
        for kw in steer:
            assert close(scripted(x, **kw), model(x, **kw)), kw


@pytest.mark.parametrize('mode', TD_MODES)
def test_absvit_fx_trace_takes_steering_at_run_time(mode):
    model = absvit(mode)
    traced = fx_traced(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(traced(x), model(x))
        if mode != 'feedback':
            assert close(traced(x, classes=[2, 7], alpha=5.0), model(x, classes=[2, 7], alpha=5.0))
            with pytest.raises(ValueError, match='either prior or classes'):
                traced(x, prior=torch.randn(64), classes=1)
        with pytest.raises(RuntimeError, match='computes the logits only'):
            traced(x, return_aux=True)


@pytest.mark.parametrize('make', [lambda: visible(DAT(**DAT_MICRO)), absdat], ids=['dat', 'absdat'])
def test_dat_traces_with_timms_tracer_and_refuses_torchscript(make):
    model = make()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert close(fx_traced(model)(x), model(x))
    with pytest.raises(RuntimeError, match='NeighborhoodAttention2D .* is not scriptable: its tiling plan'):
        torch.jit.script(model)


# ------------------------------------------------------------------------------------------------
# Pretrained configs, timm's head interface, the release-config converter

PROJECT_MODELS = [n for n in timm.list_models(['absvit_*', 'dat_*', 'absdat_*', 'vit_*_gap'])
                  if timm.models.is_model_in_modules(n, ['absvit', 'dat'])]


@pytest.mark.parametrize('name', PROJECT_MODELS)
def test_pretrained_cfg_names_real_modules_and_feature_shapes(name):
    with torch.device('meta'):
        model = timm.create_model(name).eval()
    cfg, keys = model.pretrained_cfg, model.state_dict()
    assert cfg['first_conv'] + '.weight' in keys and cfg['classifier'] + '.weight' in keys
    assert cfg['input_size'][0] == model.in_chans and model.num_features == model.head_hidden_size
    out = model.forward_features(torch.empty(1, *cfg['input_size'], device='meta'))
    if name.startswith(('dat', 'absdat')):  # a map, channel-last as output_fmt says
        assert model.output_fmt == 'NHWC' and out.shape[1:] == (*cfg['pool_size'], model.num_features)
    else:  # tokens, as timm's ViT
        assert cfg['pool_size'] is None and out.shape[-1] == model.num_features


def test_dat_classifier_reset_keeps_device_dtype_and_unpools():
    model = DAT(**DAT_MICRO).eval().to(torch.float64)
    model.reset_classifier(5)
    assert model.cls_head.weight.dtype == torch.float64
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model.reset_classifier(0, '')
    assert model(x).shape == (1, 2, 2, 128) and torch.equal(model(x), model.forward_features(x))
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        model.reset_classifier(0, 'max')


def test_release_config_converter_drops_exactly_the_unused_keys(caplog):
    release = dict(DAT_MICRO, window_sizes=[7] * 4, heads_q=[6] * 4, sr_ratios=[8, 4, 2, 1], ns_per_pts=[4] * 4,
                   ksize_qnas=[3] * 4, nqs=[2] * 4, qna_activation='exp', lower_lr_kvs={})
    with caplog.at_level(logging.INFO, logger='models.dat'):
        kwargs = dat_kwargs_from_release(release)
    assert set(release) - set(kwargs) == set(RELEASE_ONLY_KEYS) and kwargs == DAT_MICRO
    assert all(k in caplog.text for k in RELEASE_ONLY_KEYS)
    for key in RELEASE_ONLY_KEYS:
        with pytest.raises(TypeError, match=key):
            DAT(**DAT_MICRO, **{key: release[key]})
