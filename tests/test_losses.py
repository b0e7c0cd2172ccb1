"""The training objectives: the AbS loss equals its formula, gradients included."""
from argparse import Namespace

import pytest
import timm
import torch
import torch.nn.functional as F

import losses
from models import TopDownOutput


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _assert_same_grads(g1, g2):
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('var_weight', [0.1, 0.5])
def test_abs_loss_gradients_equal_formula(var_weight):
    model = timm.create_model('absvit_micro_patch4_28_gap')
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    crit = losses.build_criterion(Namespace(smoothing=0.0, var_loss=var_weight), model, mixup_active=False)
    assert isinstance(crit, losses.AbSLoss) and crit.model_kwargs == {'return_aux': True}
    loss = crit(model(x, **crit.model_kwargs), y)

    out = model(x, return_aux=True)
    assert isinstance(out, TopDownOutput) and len(out.pass_logits) == 2 and out.var_loss is not None
    direct = (F.cross_entropy(out.pass_logits[0], y) + F.cross_entropy(out.pass_logits[1], y)) / 2 \
        + var_weight * out.var_loss
    torch.testing.assert_close(loss, direct)
    _assert_same_grads(_grads(model, loss), _grads(model, direct))
    assert set(crit.last_terms) == {'sup_loss', 'var_loss'}


def test_variational_term_reaches_only_through_its_weight():
    """The decoders' reconstruction weights get a different gradient with and without the var loss."""
    model = timm.create_model('absvit_micro_patch4_28_gap')
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    w = model.decoders[0].linear.weight
    g = {}
    for vw in (0.0, 1.0):
        crit = losses.AbSLoss(torch.nn.CrossEntropyLoss(), var_weight=vw)
        g[vw] = torch.autograd.grad(crit(model(x, **crit.model_kwargs), y), w)[0]
    assert not torch.allclose(g[0.0], g[1.0])


def test_abs_loss_soft_targets_and_smoothing():
    model = timm.create_model('absvit_micro_patch4_28_gap')
    x = torch.randn(4, 1, 28, 28)
    soft = torch.softmax(torch.randn(4, 10), -1)
    crit = losses.build_criterion(Namespace(smoothing=0.1, var_loss=0.1), model, mixup_active=True)
    loss = crit(model(x, return_aux=True), soft)
    out = model(x, return_aux=True)
    ce = lambda logits: (-soft * logits.log_softmax(-1)).sum(-1).mean()
    direct = (ce(out.pass_logits[0]) + ce(out.pass_logits[1])) / 2 + 0.1 * out.var_loss
    _assert_same_grads(_grads(model, loss), _grads(model, direct))

    y = torch.randint(0, 10, (4,))
    crit = losses.build_criterion(Namespace(smoothing=0.1, var_loss=0.1), model, mixup_active=False)
    out = model(x, return_aux=True)
    direct = sum(F.cross_entropy(l, y, label_smoothing=0.1) for l in out.pass_logits) / 2 + 0.1 * out.var_loss
    torch.testing.assert_close(crit(out, y), direct)


def test_mode_without_decoders_has_no_variational_term():
    model = timm.create_model('absvit_micro_patch4_28_gap', td_mode='maskatt')
    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 10, (3,))
    crit = losses.build_criterion(Namespace(smoothing=0.0, var_loss=0.1), model, mixup_active=False)
    out = model(x, **crit.model_kwargs)
    assert out.var_loss is None
    torch.testing.assert_close(crit(out, y), sum(F.cross_entropy(l, y) for l in out.pass_logits) / 2)


def test_plain_model_gets_plain_loss():
    model = timm.create_model('vit_micro_patch4_28_gap')
    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 10, (3,))
    crit = losses.build_criterion(Namespace(smoothing=0.0, var_loss=0.1), model, mixup_active=False)
    assert isinstance(crit, losses.PlainLoss) and crit.model_kwargs == {}
    logits = model(x, **crit.model_kwargs)
    torch.testing.assert_close(crit(logits, y), F.cross_entropy(logits, y))


def test_abs_loss_refuses_bare_logits():
    crit = losses.AbSLoss(torch.nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match='return_aux'):
        crit(torch.randn(2, 10), torch.tensor([0, 1]))
