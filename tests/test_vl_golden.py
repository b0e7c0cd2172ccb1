"""The vision-language image encoder in ``release`` prior mode computes what the release computes."""
import os

import pytest
import torch

from vision_language.image_encoder import build_image_encoder

GOLDEN = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'golden', 'absvit_release_vl_micro.pt')
pytestmark = pytest.mark.skipif(not os.path.exists(GOLDEN),
                                reason=f'golden file {GOLDEN} absent (../shared is not laid out beside the repository)')


def _encoder_from_golden(prior_mode='release'):
    g = torch.load(GOLDEN, weights_only=False)
    c = g['config']
    enc = build_image_encoder('absvit_base_patch16_224', c['text_dim'], prior_mode, img_size=c['img_size'],
                              patch_size=c['patch_size'], embed_dim=c['embed_dim'], depth=c['depth'],
                              num_heads=c['num_heads'], mlp_ratio=c['mlp_ratio'], qkv_bias=c['qkv_bias'],
                              num_classes=c['num_classes'], global_pool=c['global_pool'])
    enc.load_release_state_dict(g['state_dict'])
    return enc.eval(), g


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_release_mode_matches_golden_tokens_and_variational_loss():
    enc, g = _encoder_from_golden()
    with torch.no_grad():
        out = enc(g['x'], g['text_prior'], var_loss=True)
    assert out.tokens.shape == g['tokens'].shape
    assert _rel(out.tokens, g['tokens']) <= 1e-5
    assert abs(out.var_loss.item() - g['var_loss_sum'].item()) <= 1e-5 * abs(g['var_loss_sum'].item())
    # the var-loss-free path reports the same tokens
    with torch.no_grad():
        assert torch.equal(enc(g['x'], g['text_prior']).tokens, out.tokens)


def test_paper_mode_differs_from_release_on_the_same_weights():
    """The golden weights in paper mode (scale reweighting, alpha 10) give other tokens: the mode matters."""
    enc, g = _encoder_from_golden('paper')
    with torch.no_grad():
        out = enc(g['x'], g['text_prior'])
    assert _rel(out.tokens, g['tokens']) > 1e-3


def test_golden_mismatched_weights_are_named():
    enc, g = _encoder_from_golden()
    sd = dict(g['state_dict'])
    sd.pop('prompt_decoder.bias')
    with pytest.raises(KeyError, match='prompt_decoder.bias'):
        enc.load_release_state_dict(sd)

