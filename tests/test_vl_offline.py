"""The offline task: scenes and questions are what they claim, the oracle blanks exactly the cells it
says, the pretrained encoder loads into ViT and AbSViT alike, a short training lowers the loss, and
swapping priors moves the steering diagnostics."""
import pytest
import torch

from errors import UserError
from vision_language.model import VLModel
from vision_language.offline import (ANSWERS, NAMES, POSITIONS, QUESTIONS, build_offline_data, encoder_geometry,
                                     fmnist_available, keep_named_cell, make_scenes, offline_config,
                                     region_token_masks, scene_samples, single_item_canvases)
from vision_language.offline_experiment import (_batch, _pretrain_model, evaluate_offline, init_image_encoder, main,
                                                parse_args, pretrain_encoder, train_offline)
from vision_language.steering import mask_statistics

needs_fmnist = pytest.mark.skipif(not fmnist_available(), reason='Fashion-MNIST (Debian dataset-fashion-mnist) absent')


def test_scenes_questions_and_regions_agree():
    items = torch.arange(20, dtype=torch.uint8).view(20, 1, 1).expand(20, 28, 28).contiguous()
    labels = torch.arange(20) % 10
    scenes = make_scenes(items, labels, n=5, seed=0)
    assert scenes.images.shape == (5, 1, 32, 32)
    for s in range(5):
        assert len(set(scenes.classes[s].tolist())) == 4  # distinct classes
        for cell in range(4):
            r, c = divmod(cell, 2)
            value = scenes.images[s, 0, r * 16 + 3, c * 16 + 3].item()
            assert labels[value].item() == scenes.classes[s, cell].item()  # item `value` has that class
    samples = scene_samples(scenes)
    for i in range(len(samples['scene'])):
        q, a, cell = QUESTIONS[samples['question'][i]], ANSWERS[samples['answer'][i]], samples['region'][i].item()
        cls = scenes.classes[samples['scene'][i], cell].item()
        if q.startswith('what'):
            assert q == f'what is at the {POSITIONS[cell]}?' and a == NAMES[cls]
        else:
            assert q == f'where is the {NAMES[cls]}?' and a == POSITIONS[cell]
    cells = region_token_masks(4)
    assert cells.sum(0).tolist() == [1] * 16 and cells[0].view(4, 4)[:2, :2].all() and cells[3].view(4, 4)[2:, 2:].all()


@needs_fmnist
def test_short_training_lowers_the_loss_and_swapped_priors_move_the_diagnostics():
    torch.manual_seed(0)
    model = VLModel(offline_config('minilm', True, 'paper', hidden_size=16, patch_size=8, depth=2))
    model.text_encoder.requires_grad_(False)
    data = build_offline_data(model, n_train=200, n_test=40)
    assert data.questions.hidden.shape == (len(QUESTIONS), 16, 384)  # the real MiniLM, 384 wide
    curve = train_offline(model, data, steps=120, log_every=0)['loss']
    assert sum(curve[-20:]) / 20 < 0.75 * sum(curve[:20]) / 20  # 12.7 -> 7.8 here (4 of it the prior loss)
    result = evaluate_offline(model, data, limit=160)
    assert 0.0 <= result['swap_answer_change'] <= 1.0 and 0.0 < result['mask_positive'] <= 1.0
    assert abs(result['accuracy'] - (result['acc_what'] + result['acc_where']) / 2) < 1e-6  # as many of each
    assert 0.0 <= result['region_mass'] <= 1.0
    # the prior of another question moves the mask itself
    model.eval()
    images, ids, mask, hidden, _, regions = _batch(data, data.test_samples, torch.arange(64), False)
    cells = region_token_masks(4)[regions]
    with torch.no_grad():
        own = model(images, ids, mask, text_hidden=hidden).image.mask
        swapped = model(images, ids, mask, text_hidden=hidden, prior=hidden[:, 0].roll(1, 0)).image.mask
    assert (own - swapped).abs().max() > 1e-3
    a, b = mask_statistics(own, 1, cells), mask_statistics(swapped, 1, cells)
    assert a['region_mass'] != b['region_mass']


def _cell(images, cell):
    r, c = divmod(cell, 2)
    return images[..., r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]


def test_the_oracle_keeps_only_the_named_cell_and_single_items_sit_in_theirs():
    images = torch.randint(1, 256, (8, 1, 32, 32), dtype=torch.uint8)
    regions = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    kept = keep_named_cell(images, regions)
    for i, named in enumerate(regions.tolist()):
        for cell in range(4):
            expected = _cell(images[i], cell) if cell == named else torch.zeros(1, 16, 16, dtype=torch.uint8)
            assert torch.equal(_cell(kept[i], cell), expected)
    with pytest.raises(ValueError, match='one cell index'):
        keep_named_cell(images, torch.full((8,), 4))
    with pytest.raises(ValueError, match='uint8'):
        keep_named_cell(images.float(), regions)
    items = torch.randint(1, 256, (4, 1, 16, 16), dtype=torch.uint8)
    canvases = single_item_canvases(items, torch.tensor([3, 0, 2, 1]))
    for i, cell in enumerate([3, 0, 2, 1]):
        assert torch.equal(_cell(canvases[i], cell), items[i]) and canvases[i].sum() == items[i].sum()


@pytest.mark.parametrize('top_down', [False, True])
def test_the_pretrained_encoder_loads_into_vit_and_absvit(tmp_path, top_down):
    torch.manual_seed(1)
    pretrained = _pretrain_model(encoder_geometry())
    path = tmp_path / 'encoder.pth'
    torch.save({'model': pretrained.state_dict(), 'info': {}}, path)
    model = VLModel(offline_config('tiny-roberta', top_down, 'paper'))
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    report = init_image_encoder(model, str(path))
    assert 'head.weight' in report  # the single-item classifier is set aside
    own = model.image_encoder.vit.state_dict()
    backbone = [k for k in pretrained.state_dict() if not k.startswith('head.')]
    assert backbone and all(torch.equal(own[k], pretrained.state_dict()[k]) for k in backbone)
    feedback = [k for k in before if 'decoders.' in k or k.startswith('prompt_decoder.')]
    assert bool(feedback) == top_down
    assert all(torch.equal(model.image_encoder.state_dict()[k], before[k]) for k in feedback)


def test_bad_settings_are_one_clear_error(capsys):
    for argv, message in [(['--steps', '0'], 'must be positive'), (['--lr', '-1'], 'must be positive'),
                          (['--seeds', '0', '0'], 'repeats a seed'), (['--patch-size', '5'], 'patch size 5')]:
        with pytest.raises(UserError, match=message):
            parse_args(argv)
    assert main(['--steps', '0']) == 2 and 'error: these must be positive: --steps 0' in capsys.readouterr().err


@needs_fmnist
def test_pretraining_is_cached_and_the_oracle_batch_shows_the_named_cell_only(tmp_path, capsys):
    path, info = pretrain_encoder(encoder_geometry(), steps=4, out_dir=str(tmp_path), batch_size=8, log_every=0)
    assert 0.0 <= info['test_accuracy'] <= 100.0
    again, _ = pretrain_encoder(encoder_geometry(), steps=4, out_dir=str(tmp_path))
    assert again == path and 'reusing' in capsys.readouterr().out
    model = VLModel(offline_config('tiny-roberta', False, 'paper'))
    data = build_offline_data(model, n_train=10, n_test=5)
    idx = torch.arange(len(data.test_samples['scene']))
    full = _batch(data, data.test_samples, idx, False)[0]
    oracle, *_, regions = _batch(data, data.test_samples, idx, False, oracle=True)
    for i, named in enumerate(regions.tolist()):
        for cell in range(4):
            expected = _cell(full[i], cell) if cell == named else torch.full((3, 16, 16), -1.0)
            assert torch.equal(_cell(oracle[i], cell), expected)
