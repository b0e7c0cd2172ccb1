"""Checkpoints: release-format files load strictly and safely; bad files fail with a message that
names the problem; plain ViT weights initialise AbSViT with only the top-down parts missing."""
import argparse

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import models
from models import CheckpointError, adapt_state_dict, load_weights

NAME = 'absvit_micro_patch4_28_gap'


def release_checkpoint(path, model, ema_shift=1.0):
    """What the release's main.py saves: model, model_ema, optimizer, epoch and a pickled Namespace."""
    sd = model.state_dict()
    torch.save({'model': sd, 'model_ema': {k: v + ema_shift for k, v in sd.items()},
                'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 299,
                'args': argparse.Namespace(model=NAME, lr=5e-4, drop_path=0.1, input_size=224, var_loss=0.1)}, path)


def test_release_checkpoint_loads_model_weights_by_default(tmp_path):
    src = timm.create_model(NAME)
    release_checkpoint(tmp_path / 'release.pth', src)
    model = timm.create_model(NAME)
    msg = load_weights(model, str(tmp_path / 'release.pth'))
    assert "'model'" in msg
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    msg = load_weights(model, str(tmp_path / 'release.pth'), use_ema=True)
    assert "'model_ema'" in msg
    assert torch.equal(model.state_dict()['prompt'], src.state_dict()['prompt'] + 1)


def test_release_checkpoint_loads_through_timm_create_model(tmp_path):
    src = timm.create_model(NAME)
    release_checkpoint(tmp_path / 'release.pth', src, ema_shift=0.0)
    model = timm.create_model(NAME, checkpoint_path=str(tmp_path / 'release.pth'))  # strict, weights_only
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


class Payload:
    """Stands for any class a malicious pickle could name."""


def test_checkpoint_with_arbitrary_pickle_is_refused(tmp_path):
    torch.save({'model': timm.create_model(NAME).state_dict(), 'extra': Payload()},
               tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='weights_only=True'):
        load_weights(timm.create_model(NAME), str(tmp_path / 'evil.pth'))


def test_wrong_shape_and_key_are_named(tmp_path):
    model = timm.create_model(NAME)
    sd = model.state_dict()
    sd['decoders.0.linear.weight'] = torch.zeros(3, 3)
    sd['blocks.9.extra'] = torch.zeros(1)
    del sd['prompt']
    torch.save({'model': sd}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError) as err:
        load_weights(model, str(tmp_path / 'bad.pth'))
    text = str(err.value)
    assert 'decoders.0.linear.weight: (3, 3)' in text and 'blocks.9.extra' in text and 'prompt' in text
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        load_weights(model, str(tmp_path / 'missing.pth'))
    with pytest.raises(CheckpointError, match='EMA weights were asked for'):
        torch.save({'model': model.state_dict()}, tmp_path / 'plain.pth')
        load_weights(model, str(tmp_path / 'plain.pth'), use_ema=True)


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    src = timm.create_model(NAME)
    torch.save({'model': {'module.' + k: v for k, v in src.state_dict().items()}}, tmp_path / 'ddp.pth')
    model = timm.create_model(NAME)
    load_weights(model, str(tmp_path / 'ddp.pth'))
    assert torch.equal(model.prompt, src.prompt)


def test_plain_vit_weights_initialise_absvit():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    absvit = models.AbSViT(img_size=48, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=5)
    sd, report = adapt_state_dict(absvit, vit.state_dict())
    assert report['resampled'] == ['pos_embed'] and sd['pos_embed'].shape == (1, 37, 64)
    assert sorted(report['dropped_head']) == ['head.bias', 'head.weight']
    assert set(report['missing']) == {'prompt', 'head.weight', 'head.bias'} | {
        f'decoders.{i}.{n}.weight' for i in range(4) for n in ('linear', 'linear2')}
    absvit.load_state_dict(sd, strict=False)
    assert torch.equal(absvit.blocks[2].attn.qkv.weight, vit.blocks[2].attn.qkv.weight)
    # the class token's position embedding is kept, the grid is resampled
    assert torch.equal(sd['pos_embed'][:, 0], vit.pos_embed[:, 0])

    bad = dict(vit.state_dict(), **{'blocks.0.unknown': torch.zeros(1)})
    with pytest.raises(CheckpointError, match='blocks.0.unknown'):
        adapt_state_dict(absvit, bad)


# ------------------------------------------------------------------------------------------------
# Files torch.load(weights_only=True) rejects: our own one-line message, never torch's retry advice.

TORCH_ADVICE = ('weights_only=False', 'weights_only` set to `False`', 'will likely succeed')


def _one_line_error(path):
    with pytest.raises(CheckpointError) as err:
        models.load_checkpoint_file(str(path))
    text = str(err.value)
    assert '\n' not in text and str(path) in text, text
    assert not any(advice in text for advice in TORCH_ADVICE), text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained torch message
    return text


def test_truncated_or_garbage_checkpoint_says_so_and_names_the_file(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'model': timm.create_model(NAME).state_dict()}, good)
    data = good.read_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])  # a copy interrupted half-way
    text = _one_line_error(cut)
    assert 'corrupt or truncated' in text and f'({len(data) // 2} bytes)' in text
    for name, content in (('garbage.pth', b'not a checkpoint at all'), ('empty.pth', b'')):
        (tmp_path / name).write_bytes(content)
        assert 'corrupt or truncated' in _one_line_error(tmp_path / name)
    assert 'model' in models.load_checkpoint_file(str(good))  # the intact file still loads


class RunsCode:
    """What a malicious checkpoint pickles: unpickling it would call os.system."""

    def __reduce__(self):
        import os
        return os.system, ('echo this must never run',)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capfd):
    evil = tmp_path / 'evil.pth'
    torch.save({'model': timm.create_model(NAME).state_dict(), 'payload': RunsCode()}, evil)
    text = _one_line_error(evil)
    assert text.startswith(f'refused to load checkpoint {evil}') and 'may run code' in text
    assert 'system' in text  # names what it refused
    assert 'this must never run' not in capfd.readouterr().out
    plain_class = tmp_path / 'payload.pth'
    torch.save({'model': timm.create_model(NAME).state_dict(), 'extra': Payload()}, plain_class)
    assert 'test_checkpoint.Payload' in _one_line_error(plain_class)
