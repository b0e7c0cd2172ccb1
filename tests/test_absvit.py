"""AbSViT model zoo: exactness (release golden + a naive reference written here), the top-down
path's behaviour, the comparison modes, and timm integration. What every backbone must do (every mode
trains, gradient checkpointing, ...) is tests/test_backbone_contract.py's."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import golden
from model_helpers import rel_err
from models import AbSViT

MICRO = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4, qkv_bias=True,
             num_classes=10)


def micro(global_pool='token', **kw):
    return AbSViT(**MICRO, global_pool=global_pool, **kw)


# ------------------------------------------------------------------------------------------------
# A straightforward reference of the method, from the description alone: full qkv of td, naive
# softmax attention, explicit loops. Functional over a dict of parameters.

def _ln(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[name + '.weight'], p[name + '.bias'], eps=1e-6)


def _block(x, p, i, heads, td=None):
    pre = f'blocks.{i}.'
    h = _ln(x, p, pre + 'norm1')
    B, N, C = h.shape
    qkv = h @ p[pre + 'attn.qkv.weight'].t() + p[pre + 'attn.qkv.bias']
    q, k, v = [t.reshape(B, N, heads, C // heads).transpose(1, 2) for t in qkv.split(C, dim=-1)]
    if td is not None:
        qkv_td = td @ p[pre + 'attn.qkv.weight'].t() + p[pre + 'attn.qkv.bias']
        v = v + qkv_td[..., 2 * C:].reshape(B, N, heads, C // heads).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    a = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = x + a @ p[pre + 'attn.proj.weight'].t() + p[pre + 'attn.proj.bias']
    h = _ln(x, p, pre + 'norm2')
    h = F.gelu(h @ p[pre + 'mlp.fc1.weight'].t() + p[pre + 'mlp.fc1.bias'])
    return x + h @ p[pre + 'mlp.fc2.weight'].t() + p[pre + 'mlp.fc2.bias']


def naive_absvit(p, x, depth, heads, patch, gap, prior=None, alpha=1.0):
    """Returns (logits pass 1, logits pass 2, unweighted variational loss)."""
    def features(td=None):
        t = F.conv2d(x, p['patch_embed.proj.weight'], p['patch_embed.proj.bias'], stride=patch)
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([p['cls_token'].expand(len(t), -1, -1), t], 1) + p['pos_embed']
        ins, outs = [], []
        for i in range(depth):
            ins.append(t)
            t = _block(t, p, i, heads, None if td is None else td[i])
            outs.append(t)
        if not gap:
            t = _ln(t, p, 'norm')
        return t, ins, outs

    def head(t):
        t = _ln(t[:, 1:].mean(1), p, 'fc_norm') if gap else t[:, 0]
        return t @ p['head.weight'].t() + p['head.bias']

    z, _, _ = features()
    xi = p['prompt'] if prior is None else prior
    cos = (z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ (xi / xi.norm())
    z = alpha * cos.clamp(0, 1).unsqueeze(-1) * z
    td = [None] * depth
    for i in reversed(range(depth)):
        z = z @ p[f'decoders.{i}.linear.weight'].t()
        td[i] = z @ p[f'decoders.{i}.linear2.weight'].t()
    z2, ins, outs = features(td)
    var = sum(((outs[i].detach() @ p[f'decoders.{i}.linear.weight'].t() - ins[i].detach()) ** 2).mean()
              for i in range(depth))
    return head(features()[0]), head(z2), var


def _objective(logits1, logits2, var, y):
    return 0.5 * (F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y)) + 0.1 * var


@pytest.mark.parametrize('global_pool', ['token', 'avg'])
def test_matches_naive_reference(global_pool):
    model = micro(global_pool).train()
    with torch.no_grad():  # make the top-down path matter
        for d in model.decoders:
            d.linear.weight.mul_(8)
            d.linear2.weight.mul_(8)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    ref1, ref2, ref_var = naive_absvit(params, x, 4, 4, 8, gap=global_pool == 'avg')
    _objective(ref1, ref2, ref_var, y).backward()

    out = model(x, return_aux=True)
    _objective(*out.pass_logits, out.var_loss, y).backward()
    assert rel_err(out.pass_logits[0], ref1) < 1e-5
    assert rel_err(out.pass_logits[1], ref2) < 1e-5
    assert rel_err(out.var_loss, ref_var) < 1e-5
    assert rel_err(out.pass_logits[0], out.pass_logits[1]) > 1e-3, 'the top-down pass should change the logits'
    for name, p in model.named_parameters():
        assert rel_err(p.grad, params[name].grad) < 1e-5, name


def test_class_prior_matches_naive_reference():
    model = micro('avg').eval()
    x = torch.randn(2, 3, 32, 32)
    params = dict(model.named_parameters())
    with torch.no_grad():
        _, ref, _ = naive_absvit(params, x, 4, 4, 8, gap=True, prior=params['head.weight'][3], alpha=10.)
        got = model(x, classes=3, alpha=10.)
    assert rel_err(got, ref) < 1e-5


# ------------------------------------------------------------------------------------------------
# The release's own computation (../shared/golden)

@pytest.mark.parametrize('entry', ['micro_cls', 'micro_gap'])
def test_matches_release_golden(entry):
    g = golden('absvit_release_micro.pt')[entry]
    c = g['config']
    model = AbSViT(img_size=c['img_size'], patch_size=c['patch_size'], embed_dim=c['embed_dim'], depth=c['depth'],
                   num_heads=c['num_heads'], mlp_ratio=c['mlp_ratio'], qkv_bias=c['qkv_bias'],
                   num_classes=c['num_classes'], global_pool=c['global_pool'])
    model.load_state_dict(g['state_dict'], strict=True)
    assert set(model.state_dict()) == set(g['state_dict'])

    model.eval()
    with torch.no_grad():
        assert rel_err(model(g['x']), g['logits_eval']) < 1e-5
        for key, expected in g['steered'].items():  # e.g. class3_alpha10
            cls, alpha = key.split('_alpha')
            assert rel_err(model(g['x'], classes=int(cls[len('class'):]), alpha=float(alpha)), expected) < 1e-5, key

    model.train()
    out = model(g['x'], return_aux=True)
    assert rel_err(out.pass_logits[0], g['logits_pass1']) < 1e-5
    assert rel_err(out.pass_logits[1], g['logits_pass2']) < 1e-5
    assert rel_err(out.var_loss, torch.as_tensor(g['var_loss_sum'])) < 1e-5
    loss = _objective(*out.pass_logits, out.var_loss, g['y'])
    assert rel_err(loss, torch.as_tensor(g['loss'])) < 1e-5
    loss.backward()
    for name, p in model.named_parameters():
        assert rel_err(p.grad, g['grads'][name]) < 1e-5, name


# ------------------------------------------------------------------------------------------------
# Behaviour of the top-down path

def test_plain_forward_is_final_logits_without_var_loss_work():
    model = micro().eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    handles = [d.register_forward_hook(lambda *a: calls.append(1)) for d in model.decoders]
    with torch.no_grad():
        logits = model(x)
        n_plain = len(calls)
        out = model(x, return_aux=True)
    for h in handles:
        h.remove()
    assert torch.equal(logits, out.logits)
    assert n_plain == len(model.decoders)  # the feedback walk only; the var loss calls decoder.linear directly
    assert out.var_loss is not None and out.var_loss > 0


def test_zeroing_decoders_changes_output_and_alpha0_is_zero_feedback():
    model = micro().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
        alpha0 = model(x, alpha=0.0)
        zero_td = model.forward_head(model.forward_pass(x, td=[torch.zeros(2, 17, 64)] * 4).tokens)
        for d in model.decoders:
            d.linear2.weight.zero_()
        no_dec = model(x)
    assert torch.allclose(alpha0, zero_td, atol=1e-6)
    assert torch.allclose(no_dec, zero_td, atol=1e-6)
    assert not torch.allclose(base, no_dec, atol=1e-4)


def test_per_image_prior_equals_shared_prior_rows():
    model = micro().eval()
    x = torch.randn(3, 3, 32, 32)
    priors = torch.randn(3, 64)
    with torch.no_grad():
        batched = model(x, prior=priors)
        single = torch.cat([model(x[i:i + 1], prior=priors[i]) for i in range(3)])
        by_class = model(x, classes=[1, 2, 3])
        by_rows = model(x, prior=model.head.weight[[1, 2, 3]])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.equal(by_class, by_rows)


def test_bad_prior_and_class_errors():
    model = micro().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r'prior must be \(64,\)'):
        model(x, prior=torch.randn(32))
    with pytest.raises(ValueError, match='per-image prior has 3 rows'):
        model(x, prior=torch.randn(3, 64))
    with pytest.raises(ValueError, match='out of range'):
        model(x, classes=10)
    with pytest.raises(ValueError, match='td_mode must be one of'):
        micro(td_mode='nope')


def test_inspect_maps_and_weights():
    model = micro('avg').eval()
    x = torch.randn(2, 3, 32, 32)
    r = model.inspect(x, classes=2, alpha=3.0, attn_weights=True, feature_blocks=(0, 3))
    assert r['bottom_up'].shape == r['top_down'].shape == r['prior_mask'].shape == (2, 4, 4)
    assert torch.allclose(r['logits'], model(x, classes=2, alpha=3.0), atol=1e-5)
    assert len(r['attn_bottom_up']) == len(r['attn_top_down']) == 4
    w = r['attn_top_down'][0]
    assert w.shape == (2, 4, 17, 17) and torch.allclose(w.sum(-1), torch.ones(2, 4, 17), atol=1e-5)
    assert r['features'][3].shape == (2, 64, 4, 4)
    # bottom-up map at default depth (depth - 3 = 1 block): the norm of block 0's patch tokens
    with torch.no_grad():
        t = model.blocks[0](model._pos_embed(model.patch_embed(x)))
    assert torch.allclose(r['bottom_up'], t[:, 1:].norm(dim=-1).reshape(2, 4, 4), atol=1e-5)
    assert not any(m.record_weights for m in model.modules() if hasattr(m, 'record_weights'))
    with pytest.raises(ValueError, match='depth must be in'):
        model.inspect(x, depth=9)


# ------------------------------------------------------------------------------------------------
# The paper's comparison models

def _pass1_and_prompt_mask(model, x):
    """Pass 1's tokens and the prompt's token mask, clamp(cos(prompt, token), 0, 1), computed by hand."""
    z = model.bottom_up(x)
    return z, F.cosine_similarity(z, model.prompt.expand_as(z), dim=-1).clamp(0, 1)


def test_perceiver_is_reweighted_pass1_through_head():
    model = micro('avg', td_mode='perceiver').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z, cos = _pass1_and_prompt_mask(model, x)
        expected = model.forward_head(z * cos.unsqueeze(-1) * 2.0)
        assert torch.allclose(model(x, alpha=2.0), expected, atol=1e-5)


def test_maskatt_multiplies_values_by_token_mask():
    model = micro('token', td_mode='maskatt').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z, mask = _pass1_and_prompt_mask(model, x)
        model.prompt.data = -model.prompt.data  # the other half of the tokens: a different mask
        flipped = model(x)
        model.prompt.data = -model.prompt.data
        # with an all-ones mask the second pass equals the first
        ones = model.forward_head(model.forward_pass(x, td=[torch.ones(2, 17, 1)] * 4).tokens)
        plain = model.forward_head(z)
        assert torch.allclose(ones, plain, atol=1e-5)
        got = model(x)
        zero = model.forward_head(model.forward_pass(x, td=[torch.zeros(2, 17, 1)] * 4).tokens)
        assert not torch.allclose(got, flipped, atol=1e-4) and not torch.allclose(got, zero, atol=1e-4)
        assert 0 < mask.mean() < 1


def test_qkv_mode_adds_td_to_queries_and_keys_too():
    torch.manual_seed(0)
    a, q = micro(td_mode='abs').eval(), micro(td_mode='qkv').eval()
    q.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    td = [torch.randn(2, 17, 64)] * 4
    with torch.no_grad():
        h = a.blocks[0].norm1(a._pos_embed(a.patch_embed(x)))
        # value mode: only v changes; qkv mode: q, k, v all change
        qa, ka, va = a.blocks[0].attn._qkv(h, td[0])
        qq, kq, vq = q.blocks[0].attn._qkv(h, td[0])
        q0, k0, v0 = a.blocks[0].attn._qkv(h, None)
    assert torch.allclose(qa, q0) and torch.allclose(ka, k0) and not torch.allclose(va, v0)
    assert not torch.allclose(qq, q0) and not torch.allclose(kq, k0) and torch.allclose(vq, va, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# timm integration and cost

RELEASE_PARAMS = {'absvit_tiny_patch16_224': 6_602_344, 'absvit_small_patch16_224': 25_589_992,
                  'absvit_base_patch16_224': 100_724_200, 'vit_tiny_patch16_224': 5_717_416}


@pytest.mark.parametrize('name', list(RELEASE_PARAMS))
def test_param_counts_equal_release(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMS[name]


def test_inference_gmacs_within_2_2x_vit():
    from torch.utils.flop_counter import FlopCounterMode
    flops = {}
    for name in ('absvit_tiny_patch16_224', 'vit_tiny_patch16_224'):
        model = timm.create_model(name).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
        flops[name] = counter.get_total_flops()
    assert flops['absvit_tiny_patch16_224'] / flops['vit_tiny_patch16_224'] <= 2.2


@pytest.mark.parametrize('name,pool', [('absvit_tiny_patch16_224', 'token'), ('absvit_tiny_patch8_224_gap', 'avg'),
                                       ('vit_tiny_patch8_224_gap', 'avg'), ('absvit_micro_patch4_28_gap', 'avg')])
def test_registered_and_timm_round_trip(name, pool):
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, img_size=64 if '224' in name else 28)
    assert model.global_pool == pool and model.num_classes == 7
    assert model.pretrained_cfg['architecture'] == name
    if '224' in name:  # the release's (DeiT's) normalisation
        assert model.pretrained_cfg['mean'] == (0.485, 0.456, 0.406) and model.pretrained_cfg['std'] == (0.229, 0.224, 0.225)
    in_chans = model.pretrained_cfg['input_size'][0]
    x = torch.randn(2, in_chans, *model.patch_embed.img_size)
    assert model.eval()(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    if pool == 'avg':  # fc_norm after pooling, as timm does for 'avg'
        assert isinstance(model.fc_norm, torch.nn.LayerNorm) and isinstance(model.norm, torch.nn.Identity)
    if name.startswith('absvit'):
        assert 'prompt' in model.no_weight_decay()


