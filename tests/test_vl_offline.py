"""The offline task: scenes and questions are what they claim, a short training lowers the loss, and
swapping priors moves the steering diagnostics."""
import pytest
import torch

from vision_language.model import VLModel
from vision_language.offline import (ANSWERS, NAMES, POSITIONS, QUESTIONS, build_offline_data, fmnist_available,
                                     make_scenes, offline_config, region_token_masks, scene_samples)
from vision_language.offline_experiment import _batch, evaluate_offline, train_offline
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
