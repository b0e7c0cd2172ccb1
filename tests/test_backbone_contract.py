"""The backbone contract: what every top-down backbone (AbSViT, AbS-DAT, AbS-RVT, AbS-FAN, and the next
one) must do, written once and run on each backbone's micro model, ``micro_variants.contract_models()``
(tests/timm_suite/micro_variants.py), beside the bottom-up twin its registration records:

* pass 1 is the twin: the top-down model takes the twin's weights, and its bottom-up pass gives the
  twin's logits and features bit for bit;
* every ``td_mode`` the backbone supports builds what the mode table says, trains (every parameter
  gets a gradient, as DDP needs), scripts and traces; the others are refused clearly;
* the variational loss trains only the decoders; gradient checkpointing gives the same gradients;
* ``forward_intermediates`` reports the top-down pass, and with ``top_down=False`` the twin's;
* steering moves the logits and ``inspect`` reports them (attention weights where recorded).

And the record itself: every model the project registers says whether it is top-down and, if so,
names a twin with exactly its backbone (``models.backbone.ModelCfg``), which is what the benchmarks
pair (``benchmarks.common.model_record``). Backbone-specific tests (release exactness, the layout of
the bridges, ...) stay in each backbone's test module.
"""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import PretrainedCfg

import models
from benchmarks import common
from model_helpers import amplify_feedback, close, fx_traced
from models.backbone import recorded_cfgs
from models.topdown import TopDownAttentionMixin, TopDownMixin

sys.path.insert(0, str(Path(__file__).resolve().parent / 'timm_suite'))
import micro_variants  # noqa: E402  (registers the test-only micro models with timm)

pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
              pytest.mark.usefixtures('one_thread')]

CONTRACT = micro_variants.contract_models()
#: parameters a top-down model has beyond its twin's: the prior, the decoders, the stage bridges
TOP_DOWN_ONLY = ('prompt', 'decoders.', 'up_projs.')
#: contract models that TorchScript cannot compile, with the reason (they still trace with FX)
NOT_SCRIPTABLE = {'absdat_micro': 'DAT++ picks its neighbourhood-attention kernels in Python '
                                  '(models/dat.py, NeighborhoodAttention2D.__prepare_scriptable__)'}


def supported_modes(name):
    with torch.device('meta'):
        return timm.create_model(name).TD_MODES


MODES = [(name, mode) for name in CONTRACT for mode in supported_modes(name)]
SECOND_PASS = [(name, mode) for name, mode in MODES if models.TOP_DOWN_MODES[mode].second_pass]


def build(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=10, **kwargs)


def visible(name, **kwargs):
    """The micro model with its feedback scaled up, so that pass 2 differs visibly from pass 1 (at 8x,
    FAN's 32-wide micro in qkv mode would differ from abs mode by 4e-6 only)."""
    return amplify_feedback(build(name, **kwargs), scale=32.0)


def twin_of(name):
    return timm.models.get_pretrained_cfg(name).bottom_up_twin


def image(name, batch=2):
    """A batch at the model's input size, capped at 64 px (DAT's micro is configured at 128)."""
    c, h, _ = timm.models.get_pretrained_cfg(name).input_size
    side = min(h, 64)
    return torch.randn(batch, c, side, side)


def objective(out, y):
    """The training loss: cross-entropy of each pass (plain: of the logits) + 0.1 x variational loss."""
    if isinstance(out, torch.Tensor):
        return F.cross_entropy(out, y)
    loss = sum(F.cross_entropy(p, y) for p in out.pass_logits) / len(out.pass_logits)
    return loss if out.var_loss is None else loss + 0.1 * out.var_loss


def steer_args(mode, classes=(1, 4)):
    """Steering inputs for ``mode`` (none for ``feedback``, which has no prior): ``classes`` per image."""
    return {} if mode == 'feedback' else dict(classes=list(classes), alpha=3.0)


# ------------------------------------------------------------------------------------------------
# Pass 1 is the bottom-up twin

@pytest.mark.parametrize('name', CONTRACT)
def test_pass_1_is_the_bottom_up_twin_with_the_same_weights(name):
    plain = build(twin_of(name), seed=1).eval()
    model = visible(name).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(k for k in model.state_dict() if k.startswith(TOP_DOWN_ONLY))
    x = image(name)
    with torch.no_grad():
        model.prompt.copy_(model.bottom_up(x).flatten(0, -2).mean(0))  # a prior that selects tokens
        out = model(x, return_aux=True)
        assert torch.equal(out.pass_logits[0], plain(x))
        assert torch.equal(model.bottom_up(x), plain.forward_features(x))
    assert not torch.allclose(out.logits, out.pass_logits[0], atol=1e-4)  # pass 2 is another computation


# ------------------------------------------------------------------------------------------------
# Every mode

@pytest.mark.parametrize('name,mode', MODES)
def test_every_td_mode_trains_and_differs(name, mode):
    row = models.TOP_DOWN_MODES[mode]
    ref = visible(name)
    x, y = image(name), torch.tensor([1, 2])
    with torch.no_grad():  # a prompt that matches the tokens, so the prior selects something
        ref.prompt.copy_(ref.bottom_up(x).flatten(0, -2).mean(0))
    model = build(name, td_mode=mode).train()
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if k in model.state_dict()}, strict=False)
    out = model(x, return_aux=True)
    objective(out, y).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [], f'{mode}: parameters without gradient would break DDP: {unused}'
    assert (out.var_loss is not None) == row.decoders and ('prompt' in model.state_dict()) == row.prior
    if mode != ref.td_mode:
        ref.eval(), model.eval()
        with torch.no_grad():
            ref.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()}, strict=False)
            assert (ref(x) - model(x)).abs().max() > 1e-5, mode  # same weights, another mode


@pytest.mark.parametrize('name', CONTRACT)
def test_modes_a_backbone_lacks_are_refused_clearly(name):
    for mode in set(models.TD_MODES) - set(supported_modes(name)):
        with pytest.raises(ValueError, match='supports td_mode'):
            build(name, td_mode=mode)
    with pytest.raises(ValueError, match='td_mode must be one of'):
        build(name, td_mode='nope')


@pytest.mark.parametrize('name,mode', MODES)
def test_mode_table_is_what_the_model_builds_scripts_and_traces(name, mode):
    row = models.TOP_DOWN_MODES[mode]
    model = visible(name, td_mode=mode).eval()
    assert model.td_spec == row and (model.prompt is not None) == row.prior
    assert (model.decoders is not None) == row.decoders
    assert all(m.signal == row.signal for m in model.modules() if isinstance(m, TopDownAttentionMixin))
    x = image(name)
    with torch.no_grad():
        logits = model(x, **steer_args(mode))
        assert torch.equal(model.forward_head(model.forward_features(x, **steer_args(mode))), logits)
        assert torch.equal(model(x, return_aux=True, **steer_args(mode)).logits, logits)
        assert close(fx_traced(model)(x, **steer_args(mode)), logits)
        if name not in NOT_SCRIPTABLE:
            script_steer = {k: torch.tensor(v) if k == 'classes' else v for k, v in steer_args(mode).items()}
            assert close(torch.jit.script(model)(x, **script_steer), logits)


# ------------------------------------------------------------------------------------------------
# Training

@pytest.mark.parametrize('name', CONTRACT)
def test_variational_loss_trains_only_the_decoders(name):
    model = visible(name)
    model(image(name), return_aux=True).var_loss.backward()
    for n, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == (n.startswith('decoders') and n.endswith('.linear.weight')), n


@pytest.mark.parametrize('name', CONTRACT + sorted({twin_of(n) for n in CONTRACT}))
def test_grad_checkpointing_gives_equal_gradients(name):
    x, y = image(name), torch.tensor([1, 2])
    grads = []
    for ckpt in (False, True):
        model = visible(name).train()
        model.set_grad_checkpointing(ckpt)
        objective(model(x, return_aux=True) if isinstance(model, TopDownMixin) else model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


# ------------------------------------------------------------------------------------------------
# What it reports

@pytest.mark.parametrize('name,mode', SECOND_PASS)
def test_intermediates_are_the_top_down_pass_and_bottom_up_the_twins(name, mode):
    model = visible(name, td_mode=mode).eval()
    plain = build(twin_of(name)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x, n = image(name), model.num_td_blocks()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, **steer_args(mode, (2, 5)))
        bottom_final, bottom = model.forward_intermediates(x, top_down=False)
        ref_final, ref = plain.forward_intermediates(x)
        assert close(final, model.forward_features(x, **steer_args(mode, (2, 5))))
        assert close(bottom_final, ref_final) and all(close(a, b) for a, b in zip(bottom, ref))
        assert not close(inter[-1], bottom[-1], 1e-3)
        if len(model.feature_info) == n:  # one feature per block: inspect's second-pass block outputs
            features = model.inspect(x, depth=n, feature_blocks=range(n), **steer_args(mode, (2, 5)))['features']
            assert all(close(a, features[i]) for i, a in enumerate(inter))


@pytest.mark.parametrize('name', CONTRACT)
def test_steering_moves_the_logits_and_inspect_reports_them(name):
    model = visible(name).eval()
    x = image(name)
    with torch.no_grad():
        z = model.bottom_up(x).flatten(0, -2)
        head = model.get_classifier()
        head.weight[3], head.weight[7] = z.mean(0), z[1]  # prototypes that select tokens
        steer = [model(x, classes=c, alpha=4.0) for c in (3, 7)]
        weak, pass1 = model(x, classes=3, alpha=0.5), model(x, return_aux=True).pass_logits[0]
        r = model.inspect(x, classes=3, alpha=4.0, attn_weights=True, depth=model.num_td_blocks())
    assert (steer[0] - steer[1]).abs().max() > 1e-3 and (steer[0] - weak).abs().max() > 1e-3
    assert (steer[0] - pass1).abs().max() > 1e-3
    assert torch.allclose(r['logits'], steer[0], atol=1e-5)
    assert r['bottom_up'].shape == r['top_down'].shape and r['bottom_up'].shape[0] == 2
    recording = [m for m in model.modules() if isinstance(m, TopDownAttentionMixin)]
    assert len(r['attn_bottom_up']) == len(r['attn_top_down']) == len(recording)
    assert all(torch.allclose(w.sum(-1), torch.ones(1), atol=1e-5) for w in r['attn_top_down'])
    assert not any(m.record_weights for m in recording)


# ------------------------------------------------------------------------------------------------
# The record the benchmarks read

#: the pairs the benchmarks made before the records (from name prefixes): they must hold
PAIRS = {
    'absvit_tiny_patch16_224': 'vit_tiny_patch16_224', 'absvit_small_patch16_224': 'vit_small_patch16_224',
    'absvit_base_patch16_224': 'vit_base_patch16_224', 'absvit_tiny_patch8_224_gap': 'vit_tiny_patch8_224_gap',
    'absvit_micro_patch4_28_gap': 'vit_micro_patch4_28_gap',
    **{f'absdat_{s}': f'dat_{s}' for s in ('tiny', 'small', 'base')},
    **{f'absrvt_{s}': f'rvt_{s}' for s in ('tiny', 'small', 'base')},
    **{f'absfan_{n}': f'fan_{n}' for n in ('tiny_12_p16_224', 'small_12_p16_224', 'base_18_p16_224')},
}
PROJECT = common.project_model_names()
TOP_DOWN = [n for n in PROJECT if common.is_top_down_name(n)]


def test_every_project_model_records_what_it_is_and_the_benchmark_pairs_hold():
    assert all(timm.models.get_pretrained_cfg(n).top_down is not None for n in PROJECT)
    assert {n: common.twin_of(n) for n in PAIRS} == PAIRS and set(PAIRS) <= set(TOP_DOWN)
    assert not any(common.is_top_down_name(n) for n in common.VIT_BASELINES)
    assert common.model_record('naive:absvit_tiny_patch16_224')[:2] == (True, 'vit_tiny_patch16_224')


@pytest.mark.parametrize('name', TOP_DOWN)
def test_a_twin_is_the_top_down_models_backbone(name):
    """The recorded twin is registered, bottom-up, and has exactly the top-down model's parameters but
    its own (``TOP_DOWN_ONLY``); built on the meta device."""
    twin = common.twin_of(name)
    assert twin is not None, f'{name} records no registered bottom-up twin'
    with torch.device('meta'):
        model, plain = timm.create_model(name), timm.create_model(twin)
    assert isinstance(model, TopDownMixin) and not isinstance(plain, TopDownMixin)
    assert model.pretrained_cfg['top_down'] and model.pretrained_cfg['bottom_up_twin'] == twin
    assert not common.is_top_down_name(twin)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(TOP_DOWN_ONLY)}
    assert ours == {k: tuple(v.shape) for k, v in plain.state_dict().items()}


def test_an_unrecorded_model_is_an_error_not_bottom_up(monkeypatch):
    monkeypatch.setattr(timm.models, 'get_pretrained_cfg', lambda name: PretrainedCfg())
    with pytest.raises(common.UnrecordedModelError, match='recorded_cfgs'):
        common.twin_of('absrvt_tiny')
    assert common.model_record('vit_small_patch16_224') == (False, None, "timm's own zoo")
    with pytest.raises(ValueError, match='unknown model'):
        common.is_top_down_name('absnothing_tiny')


def test_recorded_cfgs_refuses_inconsistent_twins():
    cfgs = {'abs_x': {}, 'x': {}}
    assert recorded_cfgs(cfgs, {'abs_x': 'x'})['x'].top_down is False
    with pytest.raises(ValueError, match='without a config'):
        recorded_cfgs(cfgs, {'abs_y': 'x'})
    with pytest.raises(ValueError, match='top-down twins'):
        recorded_cfgs(cfgs, {'abs_x': 'x', 'x': None})
