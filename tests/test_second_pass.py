"""``TopDownMixin.second_pass``, the public step that gives pass 2's tokens and the variational loss: it is
``forward_top_down``'s own tail (same logits, loss and phases), for every backbone and every mode."""
import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / 'timm_suite'))
import micro_variants  # noqa: E402  (registers the test-only micro models with timm)

pytestmark = pytest.mark.usefixtures('one_thread')
#: a micro model of each backbone, and one of a mode without decoders (maskatt: no variational loss)
MODELS = ['absvit_micro_patch4_28_gap', 'absrvt_micro', 'absfan_micro', 'absrvt_micro_maskatt']


@pytest.mark.parametrize('name', MODELS)
def test_second_pass_is_forward_top_downs_tail(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    phases = []
    with torch.no_grad():
        out = model.forward_top_down(x, var_loss=True, phase=phases.append)
        prior, alpha = model.steering()
        signals, mask = model.top_down_signals(model.bottom_up(x), prior, alpha)
        tokens, vloss = model.second_pass(x, signals, var_loss=True)
        lean, none = model.second_pass(x, signals)
        features = model.forward_features(x)
    assert torch.equal(model.forward_head(tokens), out.logits) and none is None
    # the lean pass (no block outputs kept) gives the tokens forward_features gives, up to layout rounding
    assert torch.equal(lean, features)
    torch.testing.assert_close(lean, tokens)
    has_decoders = model.decoders is not None
    assert (vloss is None) == (out.var_loss is None) == (not has_decoders)
    if has_decoders:
        assert torch.equal(vloss, out.var_loss)
    assert phases == ['pass 1 (bottom-up)', 'prior + feedback', 'pass 2 (top-down)'] + \
        ['variational loss'] * has_decoders
