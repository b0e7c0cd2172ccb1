"""DAT++ and AbS-DAT: exactness against the release (golden file), neighbourhood and deformable
attention against independent references written here, the release's key layout, timm integration,
and what is AbS-DAT's own in the top-down path (its bridges); what every backbone must do (pass 1 is
plain DAT, the variational loss, gradient checkpointing, the modes) is tests/test_backbone_contract.py's."""
import sys
import types
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import golden
from model_helpers import amplify_feedback, rel_err
from models import neighborhood_attention as na
from models.dat import DAT, AbSDAT, DeformableAttention, NeighborhoodAttention2D, dat_kwargs_from_release

# The micro DAT++ of ../shared/golden/dat_release_micro.pt: every block type in every stage.
MICRO = dict(img_size=128, patch_size=4, num_classes=10, expansion=4, dim_stem=16, dims=[16, 32, 64, 128],
             depths=[2, 2, 2, 2], stage_spec=[['N', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D']], heads=[1, 1, 2, 4],
             window_sizes=[7, 7, 7, 7], groups=[1, 1, 1, 2], use_pes=[True] * 4, dwc_pes=[False] * 4,
             strides=[8, 4, 2, 1], offset_range_factor=[-1] * 4, no_offs=[False] * 4, fixed_pes=[False] * 4,
             use_dwc_mlps=[True] * 4, use_lpus=[True] * 4, use_conv_patches=True, ksizes=[9, 7, 5, 3],
             nat_ksizes=[7] * 4, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)
MICRO_KW = dat_kwargs_from_release(MICRO)  # the constructor's keys (the release's, less those it ignores)
DAT_T_PP_PARAMS = 23_962_876  # the release's DAT-T++, measured
VARIANTS = ['dat_tiny', 'dat_small', 'dat_base', 'dat_base_384', 'absdat_tiny', 'absdat_small', 'absdat_base']

pytestmark = pytest.mark.usefixtures('one_thread')


def spread(model, std=0.5):
    """Redraw offset convs and bias tables so that deformation and biases matter (as the golden file does)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'conv_offset' in n or n.endswith(('rpe_table', 'rpb')):
                p.normal_(0, std)
    return model


# ------------------------------------------------------------------------------------------------
# Exactness against the release

def test_golden_release_logits():
    g = golden('dat_release_micro.pt')
    model = DAT(**dat_kwargs_from_release(g['config'])).eval()
    model.load_state_dict(g['state_dict'], strict=True)
    with torch.no_grad():
        logits = model(g['x'])
    assert rel_err(logits, g['logits']) <= 1e-5


def test_golden_config_is_the_micro_used_here():
    assert golden('dat_release_micro.pt')['config'] == MICRO


def test_dat_tiny_loads_the_release_key_set_strictly():
    g = golden('dat_release_micro.pt')
    release = {k: torch.full(tuple(shape), 0.5) for k, shape in g['dat_tiny_pp_keys'].items()}
    model = timm.create_model('dat_tiny')
    model.load_state_dict(release, strict=True)  # every key, every shape
    assert all((p == 0.5).all() for p in model.parameters())
    assert g['dat_tiny_pp_params'] == DAT_T_PP_PARAMS


def test_dat_tiny_has_the_release_param_count():
    with torch.device('meta'):
        model = timm.create_model('dat_tiny')
    assert sum(p.numel() for p in model.parameters()) == DAT_T_PP_PARAMS


# ------------------------------------------------------------------------------------------------
# Neighbourhood attention against a brute-force masked softmax

def _window_mask(L, k):
    """(L, L): key j is in query i's window = the k consecutive positions holding i, centred on i as
    nearly as the map allows (an argmin, not the clamp formula of the implementation)."""
    m = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        starts = [s for s in range(L - k + 1) if s <= i < s + k]
        s = min(starts, key=lambda s: abs(s + k // 2 - i))
        m[i, s:s + k] = True
    return m


def _full_logits(q, k, rpb, ks):
    """(B, h, HW, HW) logits of every query against every key, bias rpb[h, dy + ks - 1, dx + ks - 1] where
    the offset is in range, and the (HW, HW) window mask."""
    B, h, H, W, d = q.shape
    N = H * W
    mask = (_window_mask(H, ks)[:, None, :, None] & _window_mask(W, ks)[None, :, None, :]).reshape(N, N)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[None, :] - ys[:, None] + ks - 1).clamp(0, 2 * ks - 2)  # key - query; outside: masked anyway
    dx = (xs[None, :] - xs[:, None] + ks - 1).clamp(0, 2 * ks - 2)
    logits = q.reshape(B, h, N, d) @ k.reshape(B, h, N, d).transpose(-1, -2)
    return (logits if rpb is None else logits + rpb[:, dy, dx]), mask


def brute_force_na(q, k, v, rpb, ks):
    """Full (HW x HW) attention, masked to the windows."""
    B, h, H, W, d = q.shape
    logits, mask = _full_logits(q, k, rpb, ks)
    attn = logits.masked_fill(~mask, float('-inf')).softmax(-1)
    return (attn @ v.reshape(B, h, H * W, d)).reshape(B, h, H, W, d)


def test_window_start_examples():
    assert na.window_start(9, 7).tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 2]  # shifted inwards at the borders
    assert na.window_start(7, 7).tolist() == [0] * 7
    assert na.window_start(6, 3).tolist() == [0, 0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match='at least kernel_size=7'):
        na.window_start(6, 7)
    with pytest.raises(ValueError, match='at least kernel_size=7'):
        na.neighborhood_attention(*(torch.randn(1, 1, 6, 9, 4) for _ in range(3)), None, 7)


@pytest.mark.parametrize('H,W,ks', [(9, 11, 7), (7, 7, 7), (12, 8, 3), (5, 13, 5), (15, 16, 7)])
def test_na_equals_brute_force(H, W, ks):
    q, k, v = (torch.randn(2, 3, H, W, 4, requires_grad=True) for _ in range(3))
    rpb = torch.randn(3, 2 * ks - 1, 2 * ks - 1, requires_grad=True)
    out = na.neighborhood_attention(q, k, v, rpb, ks)
    ref = brute_force_na(q, k, v, rpb, ks)
    assert torch.allclose(out, ref, atol=1e-5)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad((out * cot).sum(), (q, k, v, rpb))
    grads_ref = torch.autograd.grad((ref * cot).sum(), (q, k, v, rpb))
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4)
    no_bias = na.neighborhood_attention(q, k, v, None, ks)
    assert torch.allclose(no_bias, brute_force_na(q, k, v, None, ks), atol=1e-5)
    assert not torch.allclose(no_bias, out, atol=1e-3)  # the bias matters in this test


def _na_module_reference(m, x, td=None):
    """Release semantics of the module: zero-pad maps smaller than the kernel before qkv, crop after."""
    B, C, H, W = x.shape
    ks = m.kernel_size
    pad = (0, 0, 0, max(0, ks - W), 0, max(0, ks - H))
    xp = F.pad(x.permute(0, 2, 3, 1), pad)
    Hp, Wp = xp.shape[1:3]
    q, k, v = (t.reshape(B, Hp, Wp, m.num_heads, -1).permute(0, 3, 1, 2, 4)
               for t in m.qkv(xp).chunk(3, dim=-1))
    if td is not None:  # AbS: the signal, projected by the value projection (with its bias), joins v
        v_td = m.qkv(F.pad(td.permute(0, 2, 3, 1), pad)).chunk(3, dim=-1)[2]
        v = v + v_td.reshape(B, Hp, Wp, m.num_heads, -1).permute(0, 3, 1, 2, 4)
    out = brute_force_na(q * m.scale, k, v, m.rpb, ks).permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, C)
    return m.proj(out[:, :H, :W]).permute(0, 3, 1, 2)


@pytest.mark.parametrize('H,W', [(9, 8), (5, 6), (4, 10), (1, 7)])
@pytest.mark.parametrize('with_td', [False, True])
def test_na_module_borders_small_maps_and_td(H, W, with_td):
    m = NeighborhoodAttention2D(dim=8, kernel_size=7, num_heads=2)
    with torch.no_grad():
        m.rpb.normal_(0, 0.5)
    x = torch.randn(2, 8, H, W)
    td = torch.randn(2, 8, H, W) if with_td else None
    assert torch.allclose(m(x, td), _na_module_reference(m, x, td), atol=1e-5)


def _natten_qk(q, k, rpb, ks):
    """natten's kernel contract, for a fake natten: logits (B, h, H, W, ks * ks), window row-major."""
    B, h, H, W, _ = q.shape
    logits, mask = _full_logits(q, k, rpb, ks)
    return logits[:, :, mask].reshape(B, h, H, W, ks * ks)


def _natten_av(attn, v, ks):
    B, h, H, W, d = v.shape
    _, mask = _full_logits(v, v, None, ks)
    full = attn.new_zeros(B, h, H * W, H * W)
    full[:, :, mask] = attn.reshape(B, h, -1)
    return (full @ v.reshape(B, h, H * W, d)).reshape(B, h, H, W, d)


class _FakeNatten:
    """Installs a fake ``natten`` package whose kernels are ``qk``/``av``."""

    def __init__(self, monkeypatch, qk, av):
        self.calls = 0

        def counted_qk(q, k, ks, dilation, rpb=None):
            self.calls += 1
            return qk(q, k, rpb, ks)

        functional = types.SimpleNamespace(na2d_qk=counted_qk, na2d_av=lambda a, v, ks, dilation: av(a, v, ks))
        pkg = types.ModuleType('natten')
        pkg.functional = functional
        monkeypatch.setitem(sys.modules, 'natten', pkg)
        monkeypatch.setitem(sys.modules, 'natten.functional', functional)
        monkeypatch.setattr(na, '_checked', {})


def test_natten_used_when_it_agrees_and_refused_when_not(monkeypatch):
    q, k, v = (torch.randn(1, 2, 9, 9, 4) for _ in range(3))
    rpb = torch.randn(2, 13, 13)
    ref = brute_force_na(q, k, v, rpb, 7)
    good = _FakeNatten(monkeypatch, _natten_qk, _natten_av)
    assert torch.allclose(na.neighborhood_attention(q, k, v, rpb, 7), ref, atol=1e-5)
    assert good.calls == 2  # the probe, then the call itself

    wrong = _FakeNatten(monkeypatch, lambda q, k, rpb, ks: _natten_qk(q, k, None, ks), _natten_av)  # drops rpb
    with pytest.warns(UserWarning, match='disagrees'):
        out = na.neighborhood_attention(q, k, v, rpb, 7)
    assert torch.allclose(out, ref, atol=1e-5) and wrong.calls == 1  # probed once, then not used
    monkeypatch.setattr(na, '_backend', 'natten')
    with pytest.raises(RuntimeError, match='does not reproduce'):
        na.neighborhood_attention(q, k, v, rpb, 7)
    with pytest.raises(ValueError, match='backend must be one of'):
        na.set_backend('cuda')


def test_real_natten_if_installed():
    pytest.importorskip('natten.functional', reason='natten is not installed (optional: the pure-PyTorch path is the default)')
    q, k, v = (torch.randn(1, 2, 9, 9, 4) for _ in range(3))
    rpb = torch.randn(2, 13, 13)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a disagreeing natten would warn and fall back
        out = na.neighborhood_attention(q, k, v, rpb, 7)
    assert torch.allclose(out, brute_force_na(q, k, v, rpb, 7), atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Deformable attention against a direct per-query computation

def bilinear(img, py, px):
    """img (C, H, W) at pixel coordinates (N,) -> (C, N); zero outside, as grid_sample pads."""
    C, H, W = img.shape
    y0, x0 = py.floor().long(), px.floor().long()
    out = img.new_zeros(C, py.numel())
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            w = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            out[:, ok] += w[ok] * img[:, yy[ok], xx[ok]]
    return out


def direct_deformable(m, x, td=None):
    """The DAT++ deformable attention, one query and head at a time, from its description: each group
    samples its channels at its own deformed points; k and v project all sampled channels."""
    B, C, H, W = x.shape
    G, hg, hc = m.n_groups, m.n_group_heads, m.n_head_channels
    conv = lambda t, layer: torch.einsum('oc,bchw->bohw', layer.weight[:, :, 0, 0], t) + layer.bias.view(1, -1, 1, 1)
    to_pix = lambda p, n: (p + 1) / 2 * (n - 1)
    q = conv(x, m.proj_q)
    off = m.conv_offset(q.reshape(B * G, C // G, H, W))  # the offset network itself
    Hk, Wk = off.shape[-2:]
    off = off.reshape(B, G, 2, Hk * Wk)
    ref_y = ((torch.arange(Hk) + 0.5) / (Hk - 1) * 2 - 1)[:, None].expand(Hk, Wk).flatten()
    ref_x = ((torch.arange(Wk) + 0.5) / (Wk - 1) * 2 - 1)[None, :].expand(Hk, Wk).flatten()
    out = torch.zeros(B, C, H, W)
    for b in range(B):
        pts, xs, tds = [], [], []
        for g in range(G):
            oy, ox = off[b, g, 0], off[b, g, 1]
            if m.offset_range_factor >= 0:
                py = ref_y + oy.tanh() / (Hk - 1) * m.offset_range_factor
                px = ref_x + ox.tanh() / (Wk - 1) * m.offset_range_factor
            else:
                py, px = (ref_y + oy).clamp(-1, 1), (ref_x + ox).clamp(-1, 1)
            pts.append((py, px))
            ch = slice(g * C // G, (g + 1) * C // G)
            xs.append(bilinear(x[b, ch], to_pix(py, H), to_pix(px, W)))
            if td is not None:
                tds.append(bilinear(td[b, ch], to_pix(py, H), to_pix(px, W)))
        xs = torch.cat(xs)  # (C, Ns)
        for head in range(m.n_heads):
            py, px = pts[head // hg]
            hch = slice(head * hc, (head + 1) * hc)
            k = m.proj_k.weight[hch, :, 0, 0] @ xs + m.proj_k.bias[hch, None]
            v = m.proj_v.weight[hch, :, 0, 0] @ xs + m.proj_v.bias[hch, None]
            if td is not None:  # AbS: the sampled signal through the value projection (with its bias)
                v = v + m.proj_v.weight[hch, :, 0, 0] @ torch.cat(tds) + m.proj_v.bias[hch, None]
            for i in range(H):
                for j in range(W):
                    qy, qx = i / (H - 1) * 2 - 1, j / (W - 1) * 2 - 1
                    logits = q[b, hch, i, j] @ k * m.scale
                    if m.rpe_table is not None:
                        table = m.rpe_table[head][None]
                        ty = to_pix((qy - py) * 0.5, table.shape[1])
                        tx = to_pix((qx - px) * 0.5, table.shape[2])
                        logits = logits + bilinear(table, ty, tx)[0]
                    out[b, hch, i, j] = v @ logits.softmax(0)
    return conv(out, m.proj_out)


@pytest.mark.parametrize('cfg', [
    dict(H=6, W=7, heads=4, groups=2, stride=2, ksize=3, orf=-1, use_pe=True, td=False),
    dict(H=5, W=5, heads=2, groups=1, stride=1, ksize=3, orf=-1, use_pe=True, td=True),
    dict(H=7, W=6, heads=2, groups=2, stride=2, ksize=5, orf=2.0, use_pe=True, td=False),
    dict(H=6, W=6, heads=2, groups=1, stride=3, ksize=3, orf=-1, use_pe=False, td=True),
], ids=['groups-clamped', 'stride1-td', 'v1-bounded-offsets', 'no-pe-td'])
def test_deformable_equals_direct_per_query_computation(cfg):
    hc = 4
    m = spread(DeformableAttention((cfg['H'], cfg['W']), cfg['heads'], hc, cfg['groups'], 0., 0., cfg['stride'],
                                   cfg['orf'], cfg['use_pe'], cfg['ksize']), std=1.0)
    x = torch.randn(2, cfg['heads'] * hc, cfg['H'], cfg['W'])
    td = torch.randn_like(x) if cfg['td'] else None
    with torch.no_grad():
        out = m(x, td)
        ref = direct_deformable(m, x, td)
        pos = m.sample_positions(m.proj_q(x))
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    if cfg['orf'] < 0:  # the clamp is exercised: some samples sit on the border
        assert (pos.abs() == 1).any()


def test_deformable_rejects_too_small_maps():
    m = DeformableAttention((4, 4), 2, 4, 1, 0., 0., 8, -1, True, 9)
    with pytest.raises(ValueError, match='too small'):
        m(torch.randn(1, 8, 8, 8))  # 8x8 with stride 8 leaves a 1x1 key grid


# ------------------------------------------------------------------------------------------------
# The model: construction, timm integration, every variant

RELEASE_YAML = """
MODEL:
  TYPE: dat
  DAT:
    img_size: 224
    patch_size: 4
    num_classes: 1000
    expansion: 4
    dim_stem: {stem}
    dims: [{stem}, {d1}, {d2}, {d3}]
    depths: [2, 4, 18, 2]
    stage_spec: [[N, D], [N, D, N, D], [N, D, N, D, N, D, N, D, N, D, N, D, N, D, N, D, N, D], [D, D]]
    heads: {heads}
    window_sizes: [7, 7, 7, 7]
    groups: {groups}
    use_pes: [True, True, True, True]
    dwc_pes: [False, False, False, False]
    strides: [8, 4, 2, 1]
    offset_range_factor: [-1, -1, -1, -1]
    no_offs: [False, False, False, False]
    fixed_pes: [False, False, False, False]
    use_dwc_mlps: [True, True, True, True]
    use_lpus: [True, True, True, True]
    use_conv_patches: True
    ksizes: [9, 7, 5, 3]
    nat_ksizes: [7, 7, 7, 7]
    drop_rate: 0.0
    attn_drop_rate: 0.0
    drop_path_rate: {dpr}
"""


@pytest.mark.parametrize('name,stem,heads,groups,dpr', [
    ('dat_tiny', 64, [2, 4, 8, 16], [1, 2, 4, 8], 0.2),
    ('dat_small', 96, [3, 6, 12, 24], [1, 2, 3, 6], 0.4),
    ('dat_base_384', 128, [4, 8, 16, 32], [2, 4, 8, 16], 0.6),  # the 384 config builds at 224
])
def test_release_yaml_builds_the_registered_model(name, stem, heads, groups, dpr):
    import yaml
    cfg = yaml.safe_load(RELEASE_YAML.format(stem=stem, d1=2 * stem, d2=4 * stem, d3=8 * stem, heads=heads,
                                             groups=groups, dpr=dpr))['MODEL']['DAT']
    with torch.device('meta'):
        from_yaml, registered = DAT(**dat_kwargs_from_release(cfg)), timm.create_model(name)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(from_yaml) == shapes(registered)
    rates = lambda m: [dp.drop_prob for s in m.stages for dp in s.drop_path if hasattr(dp, 'drop_prob')]
    assert rates(from_yaml) == rates(registered) and max(rates(registered)) == pytest.approx(dpr)


def test_release_config_errors_are_clear():
    with pytest.raises(NotImplementedError, match="only N .* and D"):
        DAT(**{**MICRO_KW, 'stage_spec': [['L', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D']]})
    with pytest.raises(NotImplementedError, match='dwc_pes'):
        DAT(**{**MICRO_KW, 'dwc_pes': [True] * 4})
    with pytest.raises(ValueError, match='double'):
        DAT(**{**MICRO_KW, 'dims': [16, 32, 48, 96]})
    with pytest.raises(ValueError, match=r'stage_spec\[1\] has 2 blocks but depths\[1\] = 3'):
        DAT(**{**MICRO_KW, 'depths': [2, 3, 2, 2]})
    with pytest.raises(TypeError):
        DAT(**{**MICRO_KW, 'dimz': [16, 32, 64, 128]})  # typos are not swallowed


def test_dat_plus_layout_builds_with_release_names():
    """The DAT+ config (token MLP, no LPU, 4x4 patch stem, 2x2 down-projections)."""
    model = DAT(**{**MICRO_KW, 'use_dwc_mlps': [False] * 4, 'use_lpus': [False] * 4, 'use_conv_patches': False})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes['patch_proj.0.weight'] == (16, 3, 4, 4) and shapes['down_projs.0.0.weight'] == (32, 16, 2, 2)
    assert shapes['stages.1.mlps.0.chunk.linear1.weight'] == (128, 32)
    assert not any('local_perception_units' in k for k in shapes)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize('name', VARIANTS)
def test_every_variant_builds_and_trains_at_small_resolution(name):
    model = timm.create_model(name, num_classes=5)
    assert model.pretrained_cfg['architecture'] == name and model.num_classes == 5
    x = torch.randn(1, 3, 64, 64)
    if name.startswith('abs'):
        out = model(x, return_aux=True)
        loss = sum(l.logsumexp(-1).sum() for l in out.pass_logits) + out.var_loss
        assert out.logits.shape == (1, 5)
    else:
        logits = model(x)
        loss = logits.logsumexp(-1).sum()
        assert logits.shape == (1, 5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_transform_is_the_release_protocol():
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config
    import torchvision.transforms.functional as TF
    img = Image.fromarray((torch.rand(300, 410, 3) * 255).byte().numpy())
    for name, side, resized in (('dat_tiny', 224, 256), ('dat_base_384', 384, 384)):
        with torch.device('meta'):
            model = timm.create_model(name)
        cfg = resolve_model_data_config(model)
        assert cfg['interpolation'] == 'bicubic' and cfg['crop_mode'] == 'squash'
        got = create_transform(**cfg)(img)
        squashed = img.resize((resized, resized), Image.BICUBIC)
        want = TF.normalize(TF.to_tensor(TF.center_crop(squashed, side)), cfg['mean'], cfg['std'])
        assert got.shape == (3, side, side) and torch.allclose(got, want, atol=1e-6)


def test_no_weight_decay_names_the_release_exemptions():
    model = AbSDAT(**MICRO_KW)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {n for n in names if n.endswith('rpe_table')} | {'prompt'}


# ------------------------------------------------------------------------------------------------
# AbS-DAT

def _abs_micro(td_mode='abs', seed=0, decoder_scale=8.0):
    torch.manual_seed(seed)
    # make the top-down path visible at init (as the AbSViT golden file does)
    return amplify_feedback(spread(AbSDAT(**MICRO_KW, td_mode=td_mode)), decoder_scale)


def test_absdat_takes_release_weights_and_its_pass_1_is_the_release():
    g = golden('dat_release_micro.pt')
    model = AbSDAT(**dat_kwargs_from_release(g['config']))
    missing, unexpected = model.load_state_dict(g['state_dict'], strict=False)
    assert unexpected == []
    assert set(missing) == {n for n in model.state_dict() if n == 'prompt' or n.startswith(('decoders.', 'up_projs.'))}
    with torch.no_grad():
        out = model.eval()(g['x'], return_aux=True)
    assert rel_err(out.pass_logits[0], g['logits']) <= 1e-5


def test_top_down_signal_reaches_every_block_through_the_bridges():
    model = _abs_micro()
    x = torch.randn(2, 3, 72, 72)  # maps 18, 9, 5, 3: odd sizes and a map smaller than the NA kernel
    tokens, ins, _ = model.forward_pass(x, collect=True)
    signals, _ = model.top_down_signals(tokens, model.prompt, 1.0)
    assert len(signals) == model.num_td_blocks() == len(ins) == 8
    for s, inp in zip(signals, ins):
        assert s.shape[0] == inp.shape[0] and s.shape[3] == inp.shape[3]
        assert s.shape[1] >= inp.shape[1] and s.shape[2] >= inp.shape[2] and s.abs().sum() > 0
    out = model(x, return_aux=True)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.var_loss)
    with pytest.raises(ValueError, match='7 top-down signals for 8 blocks'):
        model.forward_pass(x, td=signals[:7])


def test_absdat_trains_a_step():
    model = _abs_micro(decoder_scale=1.0).train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def objective():
        out = model(x, return_aux=True)
        return sum(F.cross_entropy(l, y) for l in out.pass_logits) / 2 + 0.1 * out.var_loss

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {'prompt', 'up_projs.0.weight', 'decoders.0.linear2.weight', 'cls_head.weight'} <= changed


def test_inspect_gives_maps_of_the_final_stage():
    model = _abs_micro()
    res = model.inspect(torch.randn(1, 3, 64, 64), depth=8)
    assert res['bottom_up'].shape == res['top_down'].shape == res['prior_mask'].shape == (1, 2, 2)
