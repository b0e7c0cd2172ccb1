"""The vision-language model at tiny widths: fusion layers, priors, heads, forward/backward."""
import math

import pytest
import torch
import torch.nn.functional as F

from vision_language.fusion import CoAttentionFusion, co_attention_config
from vision_language.model import VLModel, text_prior
from vision_language.objectives import prior_loss, rank_loss, total_loss, vqa_loss
from vision_language.tiny import tiny_vl_config


def _batch(B=3, L=6, vocab=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0  # a padded text
    ids[1, 3], ids[1, 4:] = 2, 1
    return torch.randn(B, 3, 32, 32, generator=g), ids, mask


def _plain_attention(x, kv, att, mask):
    """Independent multi-head attention + BERT's post-LN output (weights of a transformers layer)."""
    B, L, H = x.shape
    h = att.self.num_attention_heads
    q = att.self.query(x).view(B, L, h, -1).transpose(1, 2)
    k = att.self.key(kv).view(B, kv.shape[1], h, -1).transpose(1, 2)
    v = att.self.value(kv).view(B, kv.shape[1], h, -1).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(mask[:, None, None, :] == 0, float('-inf'))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H)
    return att.output.LayerNorm(att.output.dense(o) + x)


def _plain_layer(layer, x, other, mask, other_mask):
    a = _plain_attention(x, x, layer.attention, mask)
    c = _plain_attention(a, other, layer.crossattention, other_mask)
    return layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(c))) + c)


def test_fusion_equals_a_plain_bidirectional_co_attention():
    """transformers' BertLayer, as the fusion uses it, is METER's co-attention layer: bidirectional
    self-attention (no causal mask), every sample of the batch kept, masks honoured."""
    torch.manual_seed(0)
    fusion = CoAttentionFusion(co_attention_config(16, 2, 32, dropout=0.0), depth=2).eval()
    text, image = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    x, y = fusion(text, image, mask, None)
    xr, yr = text, image
    for tl, il in zip(fusion.text_layers, fusion.image_layers):
        xr, yr = _plain_layer(tl, xr, yr, mask, None), _plain_layer(il, yr, xr, None, mask)
    assert x.shape == text.shape and y.shape == image.shape
    torch.testing.assert_close(x, xr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)


def test_text_prior_per_mode_and_task():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert torch.equal(text_prior(hidden, mask, 'paper', 'vqa'), hidden[:, 0])
    assert torch.equal(text_prior(hidden, mask, 'paper', 'retrieval'), hidden[:, 0])
    torch.testing.assert_close(text_prior(hidden, mask, 'release', 'vqa'), hidden.sum(1) / 5)  # padding included
    assert torch.equal(text_prior(hidden, mask, 'release', 'retrieval'), torch.stack([hidden[0, 4], hidden[1, 2]]))
    with pytest.raises(ValueError, match='task'):
        text_prior(hidden, mask, 'paper', 'captioning')


@pytest.mark.parametrize('prior_mode', ['paper', 'release'])
def test_forward_backward_reaches_every_parameter(prior_mode):
    torch.manual_seed(0)
    model = VLModel(tiny_vl_config(prior_mode))
    images, ids, mask = _batch()
    out = model(images, ids, mask, task='vqa', var_loss=True)
    assert out.cls_feats.shape == (3, 32)
    assert out.image.mask.shape == (3, 17, 1) and out.image.var_loss is not None
    targets = torch.zeros(3, 7)
    targets[0, 2], targets[1, 4] = 1.0, 0.3
    loss, terms = total_loss(model, out, vqa_loss(model.vqa_head(out.cls_feats), targets), 'vqa')
    assert set(terms) == ({'vqa', 'var', 'prior'} if prior_mode == 'paper' else {'vqa', 'var'})
    itm = F.cross_entropy(model.itm_head(out.cls_feats), torch.tensor([1, 0, 1]))
    rank = model.rank_head(out.cls_feats).sum()
    (loss + itm + rank).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # decoders.0.linear learns only from the variational loss (nothing lies below block 0): it must get it too
    assert no_grad == [], no_grad


def test_release_retrieval_has_no_variational_or_prior_loss_and_paper_has_both():
    torch.manual_seed(0)
    images, ids, mask = _batch()
    release, paper = VLModel(tiny_vl_config('release')), VLModel(tiny_vl_config('paper'))
    assert not release.uses_var_loss('retrieval') and release.uses_var_loss('vqa') and not release.uses_prior_loss
    assert paper.uses_var_loss('retrieval') and paper.uses_prior_loss
    assert release(images, ids, mask, task='retrieval', var_loss=True).image.var_loss is None
    assert paper(images, ids, mask, task='retrieval', var_loss=True).image.var_loss is not None


def test_plain_vit_baseline_has_no_prior():
    model = VLModel(tiny_vl_config(top_down=False))
    images, ids, mask = _batch()
    out = model(images, ids, mask)
    assert out.image.mask is None and out.image.prior is None and not model.uses_prior_loss
    assert model.image_encoder.prompt_decoder is None


def test_rank_head_starts_as_the_itm_match_logit():
    model = VLModel(tiny_vl_config())
    feats = torch.randn(4, 32)
    torch.testing.assert_close(model.rank_head(feats)[:, 0], model.itm_head(feats)[:, 1])


def test_the_prior_steers_the_image_tokens():
    """Swapping the texts swaps the priors and changes the image tokens."""
    torch.manual_seed(0)
    model = VLModel(tiny_vl_config('paper')).eval()
    with torch.no_grad():  # decoders x8, as the golden files do, so that the top-down path visibly matters
        for p in model.image_encoder.vit.decoders.parameters():
            p.mul_(8)
    images, ids, mask = _batch()
    with torch.no_grad():
        a = model(images, ids, mask).image.tokens
        b = model(images, ids.flip(0), mask.flip(0)).image.tokens
    assert (a - b).abs().max() > 1e-4


def test_prior_loss_is_clip_infonce():
    p, v = torch.randn(4, 8), torch.randn(4, 5, 8)
    scale = torch.tensor(2.0)
    logits = 2.0 ** 0 * math.exp(2.0) * F.normalize(p, dim=-1) @ F.normalize(v.mean(1), dim=-1).t()
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    torch.testing.assert_close(prior_loss(p, v, scale), expected)
    aligned = torch.randn(4, 1, 8).expand(4, 5, 8)
    assert prior_loss(aligned[:, 0] * 3, aligned, scale) < prior_loss(p, v, scale)


def test_rank_loss_prefers_the_true_caption_first():
    good, bad = torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[0.0, 5.0, 0.0]])
    assert rank_loss(good) < rank_loss(bad)
    torch.testing.assert_close(rank_loss(good), -torch.log_softmax(good, -1)[0, 0])


def test_mismatched_batch_is_refused():
    model = VLModel(tiny_vl_config())
    images, ids, mask = _batch()
    with pytest.raises(ValueError, match='one image per text'):
        model(images[:2], ids, mask)


def test_rank1_reweighting_is_the_release_projection():
    """models.topdown's rank-1 option: (z * mask) @ (p p^T) * alpha, per image or shared prior."""
    from models.topdown import prior_mask, reweight
    z, p = torch.randn(2, 5, 4), torch.randn(2, 4)
    out, mask = reweight(z, p, 5.0, 'rank1')
    expected = torch.stack([(z[b] * mask[b]) @ torch.outer(p[b], p[b]) * 5.0 for b in range(2)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mask, prior_mask(z, p))
    shared, _ = reweight(z, p[0], 2.0, 'rank1')
    torch.testing.assert_close(shared, (z * prior_mask(z, p[0])) @ torch.outer(p[0], p[0]) * 2.0)
    with pytest.raises(ValueError, match='rank1'):
        reweight(z, p, 1.0, 'outer')
    model = VLModel(tiny_vl_config('release'))
    assert model.image_encoder.vit.reweighting == 'rank1' and model.image_encoder.alpha == 5.0
    with pytest.raises(ValueError, match='reweighting'):
        model.image_encoder.vit.set_reweighting('cosine')


def test_classification_checkpoint_starts_the_image_encoder(tmp_path):
    """A classification file (head, learned prompt, another grid) loads into the VL image encoder: the
    classifier and prompt are set aside, the position embedding resampled, the rest equal."""
    import timm
    from models.checkpoint import CheckpointError
    from vision_language.image_encoder import load_image_weights
    cls = timm.create_model('absvit_micro_patch4_28_gap', in_chans=3, img_size=16, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, global_pool='token', class_token=True, num_classes=5)
    torch.save({'model': cls.state_dict()}, tmp_path / 'cls.pth')
    from vision_language.image_encoder import build_image_encoder
    enc = build_image_encoder('absvit_micro_patch4_28_gap', 8, in_chans=3, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2)
    msg = load_image_weights(enc.vit, str(tmp_path / 'cls.pth'))
    assert 'head.weight' in msg and 'prompt' in msg and 'pos_embed' in msg
    assert torch.equal(enc.vit.blocks[1].attn.qkv.weight, cls.blocks[1].attn.qkv.weight)
    assert torch.equal(enc.vit.decoders[0].linear.weight, cls.decoders[0].linear.weight)
    assert enc.vit.pos_embed.shape == (1, 17, 32)
    wide = build_image_encoder('absvit_micro_patch4_28_gap', 8, in_chans=3, img_size=32, patch_size=8, embed_dim=64,
                               depth=2, num_heads=2)
    with pytest.raises(CheckpointError):
        load_image_weights(wide.vit, str(tmp_path / 'cls.pth'))


def test_prior_modes_are_one_table_over_the_tasks():
    """Every mode says, for every task, which text vector steers and whether the variational loss trains;
    the model's flags are read from the row, and an unknown mode is one clear error everywhere."""
    from models.topdown import REWEIGHTINGS
    from vision_language.image_encoder import PRIOR_MODES, TASKS, resolve_prior_mode
    for name, mode in PRIOR_MODES.items():
        assert mode.name == name and mode.reweighting in REWEIGHTINGS and mode.alpha > 0
        assert set(mode.text_vector) == set(TASKS) and set(mode.var_loss_tasks) <= set(TASKS)
        model = VLModel(tiny_vl_config(name))
        assert model.prior_spec is mode and model.image_encoder.vit.reweighting == mode.reweighting
        assert model.uses_prior_loss == mode.prior_loss and (model.prior_logit_scale is not None) == mode.prior_loss
        assert [model.uses_var_loss(t) for t in TASKS] == [t in mode.var_loss_tasks for t in TASKS]
    hidden, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.long)
    for call in (lambda: resolve_prior_mode('clip'), lambda: text_prior(hidden, mask, 'clip', 'vqa'),
                 lambda: VLModel(tiny_vl_config('clip'))):
        with pytest.raises(ValueError, match="prior_mode must be one of \\('paper', 'release'\\), got 'clip'"):
            call()


@pytest.mark.parametrize('prior_mode', ['paper', 'release'])
def test_image_encoder_is_the_zoo_models_own_top_down_pass(prior_mode):
    """The steered encoder runs the mixin's steps: its tokens are ``forward_features`` with the projected
    prior and the mode's alpha, its variational loss ``forward_top_down``'s, its mask the prior's."""
    from models.topdown import prior_mask
    torch.manual_seed(0)
    enc = VLModel(tiny_vl_config(prior_mode)).image_encoder.eval()
    images, text = torch.randn(2, 3, 32, 32), torch.randn(2, 24)
    with torch.no_grad():
        out = enc(images, text, var_loss=True)
        prior = enc.prompt_decoder(text)
        assert torch.equal(out.prior, prior) and torch.equal(out.mask, prior_mask(out.bottom_up, prior))
        assert torch.equal(out.bottom_up, enc.vit.bottom_up(images))
        assert torch.equal(out.tokens, enc.vit.forward_features(images, prior=prior, alpha=enc.alpha))
        assert torch.equal(out.var_loss, enc.vit.forward_top_down(images, prior=prior, alpha=enc.alpha).var_loss)
        assert torch.equal(enc(images, text).tokens, out.tokens) and enc(images, text).var_loss is None


def _micro_zoo():
    """Registers the test-only micro models (tests/timm_suite/micro_variants.py) with timm."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent / 'timm_suite'))
    import micro_variants  # noqa: F401


@pytest.mark.parametrize('name, twin, img', [('absrvt_micro', 'rvt_micro', 64), ('absfan_micro', 'fan_micro', 32)])
def test_image_encoder_takes_any_zoo_backbone_and_its_twin(name, twin, img):
    """AbS-RVT (a two-stage map) and AbS-FAN (class-attention tokens) steer as AbSViT does: the encoder's
    outputs are the zoo model's own steps, as one token sequence; their twins are bottom-up encoders."""
    from models.topdown import prior_mask
    from vision_language.image_encoder import as_sequence
    _micro_zoo()
    torch.manual_seed(0)
    model = VLModel(tiny_vl_config('paper', image_encoder=name, image_kwargs=dict(img_size=img, in_chans=3)))
    enc = model.image_encoder.eval()
    images, text = torch.randn(2, 3, img, img), torch.randn(2, 24)
    with torch.no_grad():
        out = enc(images, text, var_loss=True)
        prior = enc.prompt_decoder(text)
        tokens = enc.vit.forward_features(images, prior=prior, alpha=enc.alpha)
        assert torch.equal(out.tokens, as_sequence(tokens)) and out.tokens.dim() == 3
        assert torch.equal(out.mask, as_sequence(prior_mask(enc.vit.bottom_up(images), prior)))
        assert torch.equal(out.var_loss, enc.vit.forward_top_down(images, prior=prior, alpha=enc.alpha).var_loss)
    assert out.mask.shape[:2] == out.tokens.shape[:2] and enc.width == enc.vit.num_features
    _, ids, mask = _batch(B=2)
    assert model(images, ids, mask, var_loss=True).cls_feats.shape == (2, 32)
    plain = VLModel(tiny_vl_config(image_encoder=twin, image_kwargs=dict(img_size=img, in_chans=3))).image_encoder
    assert not plain.top_down and plain.prompt_decoder is None
    assert plain.num_prefix_tokens == enc.num_prefix_tokens == getattr(enc.vit, 'num_prefix_tokens', 0)
    with torch.no_grad():
        assert torch.equal(plain(images).tokens, as_sequence(plain.vit.forward_features(images)))


def test_plain_rvt_checkpoint_starts_an_abs_rvt_image_encoder(tmp_path):
    """Through the zoo's adapter: the classifier is set aside, the feedback (decoders and the stage
    bridge) kept as initialised, every backbone weight loaded."""
    import timm
    from vision_language.image_encoder import build_image_encoder, load_image_weights
    _micro_zoo()
    cls = timm.create_model('rvt_micro', num_classes=5)
    torch.save({'model': cls.state_dict()}, tmp_path / 'rvt.pth')
    enc = build_image_encoder('absrvt_micro', 8, img_size=64)
    feedback = {k: v.clone() for k, v in enc.vit.state_dict().items() if k.startswith(('decoders.', 'up_projs.'))}
    summary = load_image_weights(enc.vit, str(tmp_path / 'rvt.pth'))  # a plain RVT lacks the bridge too
    assert 'skipped (classifier): 2 tensors, head.weight, head.bias' in summary
    assert 'not in the checkpoint (kept as initialised): decoders.0.linear.weight' in summary
    own = enc.vit.state_dict()
    assert 'up_projs.0.weight' in feedback and all(torch.equal(own[k], v) for k, v in feedback.items())
    assert all(torch.equal(own[k], v) for k, v in cls.state_dict().items() if not k.startswith('head.'))
