"""Prior-conditioned training: the composite wrapper (placement, labels, priors and targets), the per-sample
priors the engine calls the model with, main.py's option end to end (a short run raises prior accuracy), its
errors, and the controllability measurement on hand-made cases with known answers."""
import argparse

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import Dataset, Subset

import engine
import losses
import models  # noqa: F401  (registers the zoo)
from datasets import DatasetError, PROMPT, PriorComposites
from datasets.composites import box_masks, cell_boxes, compose, dataset_labels
from demo import controllability as ctl
from test_pipeline_helpers import needs_fmnist, run_main

MICRO = 'absvit_micro_patch4_28_gap'


class Coded(Dataset):
    """Sample i: a (1, 8, 8) image of constant value i + 1 (so a pasted item says which sample it is),
    class ``labels[i]``."""

    def __init__(self, labels):
        self.targets = torch.tensor(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((1, 8, 8), float(i + 1)), int(self.targets[i])


def _composites(**kw):
    labels = [i % 5 for i in range(40)]
    opts = dict(composite_prob=1.0, items=(2, 3), grid=2, present_prob=0.5, absent_prob=0.3, fill=(-1.0,), seed=3)
    opts.update(kw)
    return PriorComposites(Coded(labels), 5, **opts)


# -- the wrapper -----------------------------------------------------------------------------------

def test_items_are_drawn_into_their_cells_and_the_rest_is_background():
    ds = _composites()
    for i in range(30):
        s = ds.sample(i)
        k = len(s['classes'])
        assert k in (2, 3) and len(set(s['classes'])) == k and len(set(s['cells'])) == k
        assert s['indices'][0] == i and s['classes'] == [i % 5 if j == 0 else s['classes'][j] for j in range(k)]
        img = s['image'][0]
        for idx, (t, l, b, r) in zip(s['indices'], s['boxes'].tolist()):
            assert (b - t, r - l) == (4, 4)
            assert torch.all(img[t:b, l:r] == idx + 1)  # a constant item stays constant when shrunk
        covered = box_masks((8, 8), s['boxes']).any(0)
        assert torch.all(img[~covered] == -1.0) and covered.sum() == 16 * k


def test_priors_and_targets_of_each_kind():
    ds = _composites()
    kinds = {}
    for i in range(40):
        for epoch in range(10):
            ds.set_epoch(epoch)
            s = ds.sample(i)
            kinds[s['kind']] = kinds.get(s['kind'], 0) + 1
            t, cls, k = s['target'], s['classes'], len(s['classes'])
            assert t.sum() == pytest.approx(1.0)
            if s['kind'] == 'present':  # the prior names a present item, which is the target
                assert s['prior'] in cls and t[s['prior']] == 1.0
            elif s['kind'] == 'absent':  # an absent class, and the target holds only what the image holds
                assert s['prior'] not in cls and s['prior'] >= 0 and t[s['prior']] == 0.0
                assert torch.allclose(t[cls], torch.full((k,), 1.0 / k))
            else:
                assert s['kind'] == 'prompt' and s['prior'] == PROMPT
                assert torch.allclose(t[cls], torch.full((k,), 1.0 / k))
    n = sum(kinds.values())
    assert kinds['present'] / n == pytest.approx(0.5, abs=0.07) and kinds['absent'] / n == pytest.approx(0.3, abs=0.07)


def test_single_samples_are_the_datasets_own_and_draws_are_seeded():
    ds = _composites(composite_prob=0.4, smoothing=0.1)
    singles = [ds.sample(i) for i in range(40)]
    singles = [s for s in singles if s['kind'] == 'single']
    assert 8 < len(singles) < 40
    for s in singles:
        i = s['indices'][0]
        assert torch.equal(s['image'], ds.base[i][0]) and s['prior'] == PROMPT
        assert s['target'][i % 5] == pytest.approx(0.9 + 0.02) and s['target'].sum() == pytest.approx(1.0)
    again = _composites(composite_prob=0.4, smoothing=0.1)
    x, t, p = ds[7]
    x2, t2, p2 = again[7]
    assert torch.equal(x, x2) and torch.equal(t, t2) and p.dtype == torch.long and int(p) == int(p2)
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], again[i][0]) for i in range(10))  # a new draw per epoch


def test_labels_through_subsets_and_bad_settings_are_refused():
    base = Coded([i % 5 for i in range(40)])
    assert dataset_labels(Subset(base, [3, 9, 11])).tolist() == [3, 4, 1]
    with pytest.raises(DatasetError, match='at most 1'):
        _composites(present_prob=0.8, absent_prob=0.3)
    with pytest.raises(DatasetError, match=r'items \(5,\)'):
        _composites(items=(5,))
    with pytest.raises(DatasetError, match='need 4 classes'):
        PriorComposites(Coded([0, 1, 2] * 4), 3, items=(3,), absent_prob=0.2)

    class MultiHot(Coded):
        def __init__(self):
            self.targets = torch.zeros(6, 3)
    with pytest.raises(DatasetError, match='one integer class per sample'):
        PriorComposites(MultiHot(), 3)


def test_compose_geometry_on_an_odd_size():
    img = torch.ones(1, 9, 9)
    out = compose([img, 2 * img], [0, 3], 2, [0.0])
    assert out.shape == (1, 9, 9) and torch.all(out[0, :4, :4] == 1) and torch.all(out[0, 4:8, 4:8] == 2)
    assert out[0, 8].abs().sum() == 0 and out[0, :, 8].abs().sum() == 0  # beyond the last full cell: background
    assert cell_boxes((9, 9), 2, [1, 2]).tolist() == [[0, 4, 4, 8], [4, 0, 8, 4]]


# -- the priors the engine calls the model with ----------------------------------------------------

@pytest.mark.parametrize('source', ['classifier', 'table'])
def test_batch_priors_are_class_rows_or_the_prompt_and_all_get_gradients(source):
    model = timm.create_model(MICRO, img_size=32)
    if source == 'table':
        losses.attach_prior_table(model, 10)
    priors = losses.BatchPriors(model, source)
    rows = model.prior_table if source == 'table' else model.head.weight
    ids = torch.tensor([3, -1, 0, 3])
    p = priors(ids)
    assert torch.equal(p[0], rows[3]) and torch.equal(p[1], model.prompt) and torch.equal(p[3], rows[3])
    p.sum().backward()
    assert model.prompt.grad is not None and rows.grad[3].abs().sum() > 0 and rows.grad[5].abs().sum() == 0
    only_prompt = priors(torch.tensor([-1, -1]))  # still in the graph (DDP needs every parameter's gradient)
    assert only_prompt.requires_grad and torch.equal(only_prompt[0], model.prompt)
    with pytest.raises(ValueError, match='out of range'):
        priors(torch.tensor([10]))


def test_only_models_with_a_prompt_take_priors():
    assert losses.takes_prior(timm.create_model(MICRO, td_mode='perceiver'))
    assert losses.takes_prior(timm.create_model('absdat_tiny', img_size=64, num_classes=4))
    for m in (timm.create_model(MICRO, td_mode='feedback'), timm.create_model('vit_micro_patch4_28_gap')):
        assert not losses.takes_prior(m)
        with pytest.raises(ValueError, match='takes no prior'):
            losses.BatchPriors(m)


def test_every_mode_trains_a_step_with_per_sample_priors():
    """The engine's three-item batches reach every td_mode (and a plain ViT, which ignores them)."""
    ds = PriorComposites(Coded([i % 4 for i in range(16)]), 4, composite_prob=0.7, items=(2,), seed=0)
    for name, kw in [(MICRO, dict(td_mode=m)) for m in models.TD_MODES] + [('vit_micro_patch4_28_gap', {})]:
        torch.manual_seed(0)
        model = timm.create_model(name, img_size=8, patch_size=4, num_classes=4, **kw)
        loader = torch.utils.data.DataLoader(ds, batch_size=8)
        crit = losses.build_criterion(argparse.Namespace(var_loss=0.1), model, mixup_active=True, composites=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        bp = losses.BatchPriors(model) if losses.takes_prior(model) else None
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        step = engine.ClassificationStep(model, crit, torch.device('cpu'), batch_priors=bp)
        stats = engine.train_one_epoch(step, loader, opt, torch.device('cpu'), 0, progress=False)
        assert np.isfinite(stats['loss'])
        if bp is not None:
            assert not torch.equal(before['prompt'], model.prompt), name  # the prompt rows of the batch trained


def test_absent_prior_rows_are_right_with_any_item_and_other_rows_keep_soft_cross_entropy():
    """An independent per-row computation: rows whose prior names a class outside the target (0 and 3)
    score -(1 - s) log p(items) - (s / K) sum log p; a present prior, the prompt and all of ``soft``
    are timm's soft-target cross-entropy."""
    from timm.loss import SoftTargetCrossEntropy
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    s, k = 0.1, 5
    held = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float)
    target = held / held.sum(1, keepdim=True) * (1 - s) + s / k
    ids = torch.tensor([3, 2, PROMPT, 4])
    soft = SoftTargetCrossEntropy()(logits, target)
    assert losses.PriorTargetLoss('soft')(logits, target, ids).item() == pytest.approx(soft.item(), rel=1e-6)
    logp = logits.log_softmax(-1)
    rows = [-(target[i] * logp[i]).sum() for i in range(4)]
    for i in (0, 3):
        rows[i] = -(1 - s) * torch.log(logp[i].exp()[held[i].bool()].sum()) - s / k * logp[i].sum()
    loss = losses.PriorTargetLoss('any')(logits, target, ids)
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)
    one, row0 = torch.full((1, 5), -4.0), (target[:1], ids[:1])
    sure_item, sure_absent = one.index_fill(1, torch.tensor([1]), 4.0), one.index_fill(1, torch.tensor([3]), 4.0)
    any_, soft_ = losses.PriorTargetLoss('any'), losses.PriorTargetLoss('soft')
    assert any_(sure_item, *row0) < 0.5 * soft_(sure_item, *row0)  # naming one item is right, not half right
    assert any_(sure_absent, *row0) > 10 * any_(sure_item, *row0)  # naming the absent class stays wrong
    with pytest.raises(ValueError, match='absent-prior target'):
        losses.PriorTargetLoss('items')
    model = timm.create_model(MICRO, img_size=32)
    for absent in losses.ABSENT_TARGETS:  # main.py's --absent-target reaches the criterion
        crit = losses.build_criterion(argparse.Namespace(absent_target=absent, var_loss=0.1), model, False, True)
        assert isinstance(crit.base, losses.PriorTargetLoss) and crit.base.absent == absent
    with pytest.raises(TypeError, match='PriorTargetLoss'):
        losses.PlainLoss(SoftTargetCrossEntropy())(logits, target, ids)


def test_the_engine_hands_the_batch_prior_ids_to_the_criterion():
    """What the criterion sees is the batch's ids (absent-prior rows included), for every step."""
    ds = PriorComposites(Coded([i % 4 for i in range(16)]), 4, composite_prob=1.0, items=(2,), absent_prob=0.5,
                         seed=0)
    model = timm.create_model(MICRO, img_size=8, patch_size=4, num_classes=4)
    crit = losses.build_criterion(argparse.Namespace(var_loss=0.1), model, False, composites=True)
    seen, forward = [], crit.forward
    crit.forward = lambda out, t, ids=None: (seen.append(ids), forward(out, t, ids))[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    step = engine.ClassificationStep(model, crit, torch.device('cpu'), batch_priors=losses.BatchPriors(model))
    engine.train_one_epoch(step, loader, torch.optim.SGD(model.parameters(), lr=0.1), torch.device('cpu'), 0,
                           progress=False)
    assert len(seen) == 2 and torch.equal(torch.cat(seen), torch.stack([ds[i][2] for i in range(16)]))


# -- main.py ---------------------------------------------------------------------------------------

@needs_fmnist
def test_composites_refuse_mixup_and_multilabel_data(tmp_path):
    common = ['--model', MICRO, '--epochs', 1, '--train-limit', 64, '--val-limit', 16, '--batch-size', 16,
              '--composite-prob', 0.5, '--output_dir', tmp_path, '--no-progress']
    r = run_main(*common, '--mixup', 0.8)
    assert r.returncode == 2 and 'turn mixup/cutmix off' in r.stderr
    r = run_main(*common, '--composite-prob', 0.5, '--data-set', 'FMNIST_ML')
    assert r.returncode == 2 and 'classification dataset' in r.stderr
    r = run_main(*common, '--present-prior-prob', 0.9)
    assert r.returncode == 2 and 'at most 1' in r.stderr
    r = run_main(*common, '--loss', 'asl')
    assert r.returncode == 2 and 'PriorTargetLoss' in r.stderr and '--loss asl' in r.stderr


@needs_fmnist
@pytest.mark.slow
def test_a_short_prior_conditioned_run_raises_prior_accuracy(tmp_path):
    """80 steps of main.py's option: prior accuracy on held-out 2-item composites rises well above the
    untrained model's, and above the trained model's own no-prior rate."""
    out = tmp_path / 'run'
    r = run_main('--model', MICRO, '--input-size', 32, '--epochs', 1, '--train-limit', 2560, '--val-limit', 200,
                 '--batch-size', 32, '--composite-prob', 0.8, '--composite-items', 2, '--present-prior-prob', 0.7,
                 '--absent-prior-prob', 0.2, '--lr', 6.4e-2, '--output_dir', out,
                 '--no-progress', '--num-threads', 1, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'composites: PriorComposites' in r.stdout and "PriorTargetLoss(absent='any')" in r.stdout
    trained, settings = ctl.load_run(str(out / 'checkpoint.pth'))
    assert settings['prior_source'] == 'classifier' and settings['input_size'] == 32
    x, y = ctl.load_split(False, limit=600)
    comp = ctl.grid_composites(x, y, 2, 120, 2, ctl.run_transform(settings), [-0.286 / 0.353], seed=0)
    torch.manual_seed(1)
    untrained = timm.create_model(MICRO, img_size=32).eval()
    before = ctl.measure_composites(ctl.Steered(untrained), comp, [1.0])
    after = ctl.measure_composites(ctl.Steered(trained), comp, [1.0])
    acc_before, acc_after = before['alphas']['1']['acc']['mean'], after['alphas']['1']['acc']['mean']
    # here: 0.075 untrained, 0.288 trained, 0.096 without a prior (deterministic: seeded, one thread)
    assert acc_after > acc_before + 0.12, (acc_before, acc_after)
    assert acc_after > after['baseline']['acc']['mean'] + 0.1, after


# -- the measurement on hand-made cases ------------------------------------------------------------

def test_item_shares_count_token_mass_inside_each_box():
    att = torch.zeros(2, 4, 4)
    att[0, :2, :2] = 1.0         # all on the top-left cell
    att[1, :2, 2:] = 1.0         # 3/4 of the mass on the top-right cell, 1/4 outside every item
    att[1, 3, 0] = 4 / 3
    boxes = torch.stack([cell_boxes((8, 8), 2, [0, 1]), cell_boxes((8, 8), 2, [1, 3])])
    s = ctl.item_shares(att, boxes, (8, 8))
    assert torch.allclose(s, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(ctl.item_shares(torch.zeros(1, 4, 4), boxes[:1], (8, 8)), torch.tensor([[0.5, 0.5]]))


class Oracle:
    """A stand-in for ``ctl.Steered`` whose answers are known: with a prior it predicts the prior's class when
    that class is in the image and attends only to its item; an absent prior (or none) gives the first
    item's class and a map on the first item. ``echo=True``: it predicts whatever the prior names."""
    top_down = True
    depth = 1

    def __init__(self, comp, echo=False):
        self.comp, self.echo = comp, echo
        self.model = type('M', (), {'num_td_blocks': staticmethod(lambda: 2)})()

    def __call__(self, x, classes=None, alpha=None, depth=None):
        idx = [int(torch.nonzero((self.comp['x'] == xi).flatten(1).all(1))[0]) for xi in x]
        cls, boxes = self.comp['classes'][idx], self.comp['boxes'][idx]
        pick = torch.zeros(len(x), dtype=torch.long)
        if classes is not None:
            present = cls == classes[:, None]
            pick = torch.where(present.any(1), present.float().argmax(1), pick)
        pred = classes if (self.echo and classes is not None) else cls[torch.arange(len(x)), pick]
        att = torch.zeros(len(x), 4, 4)
        for i, (t, l, b, r) in enumerate(boxes[torch.arange(len(x)), pick].tolist()):
            att[i, t // 2:b // 2, l // 2:r // 2] = 1.0
        return torch.nn.functional.one_hot(pred, 10).float(), att, None


def _hand_made(n=6, k=3):
    g = torch.Generator().manual_seed(0)
    classes = torch.stack([torch.randperm(10, generator=g)[:k + 1] for _ in range(n)])
    return {'x': torch.randn(n, 1, 8, 8, generator=g), 'classes': classes[:, :k], 'absent': classes[:, k],
            'boxes': torch.stack([cell_boxes((8, 8), 2, torch.randperm(4, generator=g)[:k].tolist())
                                  for _ in range(n)])}


def test_measurement_of_a_model_that_attends_and_of_one_that_echoes():
    comp = _hand_made()
    r = ctl.measure_composites(Oracle(comp), comp, [1.0, 10.0], batch_size=4)
    for a in ('1', '10'):
        m = r['alphas'][a]
        assert m['acc'] == {'mean': 1.0, 'se': 0.0} and m['share']['mean'] == 1.0 and m['echo']['mean'] == 0.0
    assert r['baseline']['acc']['mean'] == pytest.approx(1 / 3)  # no prior: always the first of 3 items
    assert r['baseline']['share']['mean'] == pytest.approx(1 / 3) and r['baseline']['echo']['mean'] == 0.0
    assert r['share_by_depth']['1']['mean'] == 1.0 and r['n'] == 6 and r['items'] == 3
    e = ctl.measure_composites(Oracle(comp, echo=True), comp, [1.0])
    assert e['alphas']['1']['echo']['mean'] == 1.0 and e['baseline']['echo']['mean'] == 0.0


def test_standard_errors_are_over_composites():
    assert ctl.mean_se(torch.tensor([1.0, 0.0, 1.0, 0.0])) == pytest.approx({'mean': 0.5, 'se': 0.5774 / 2}, abs=1e-4)


def test_models_without_priors_measure_as_their_own_baseline():
    """Feedback and a plain ViT ignore priors: every alpha gives exactly the no-prior numbers, no masks."""
    comp = _hand_made(n=4, k=2)
    comp['x'] = torch.randn(4, 1, 32, 32)
    comp['boxes'] = torch.stack([cell_boxes((32, 32), 2, [0, 3])] * 4)
    for model in (timm.create_model(MICRO, img_size=32, td_mode='feedback'),
                  timm.create_model('vit_micro_patch4_28_gap', img_size=32)):
        r = ctl.measure_composites(ctl.Steered(model.eval()), comp, [1.0, 40.0])
        assert r['alphas']['1'] == r['alphas']['40'] == r['baseline'] and r['mask_share'] is None


def test_runs_are_named_checkpoints():
    assert ctl.parse_runs(['AbSViT=a.pth', 'ViT (plain)=b/runs.json']) == {'AbSViT': 'a.pth', 'ViT (plain)': 'b/runs.json'}
    for bad in ('a.pth', '=a.pth', 'AbSViT='):
        with pytest.raises(ctl.DemoError, match='NAME=CHECKPOINT'):
            ctl.parse_runs([bad])
    with pytest.raises(ctl.DemoError, match='not found'):
        ctl.load_run('/nonexistent/checkpoint.pth')


# -- the location-only control ---------------------------------------------------------------------

def test_a_region_becomes_the_token_mask_of_the_models_own_layout():
    model = timm.create_model(MICRO, img_size=32).eval()  # one class token, then 8 x 8 patch tokens
    region = torch.rand(2, 8, 8)
    tokens = torch.randn(2, 65, 64)
    mask = ctl.token_layout_mask(model, tokens, region, (32, 32))
    assert mask.shape == (2, 65, 1) and (mask[:, 0] == 0).all()
    assert torch.equal(model.tokens_to_map(mask, (32, 32))[:, 0], region)
    with pytest.raises(ValueError, match='does not match'):
        ctl.token_layout_mask(model, tokens, torch.rand(2, 4, 4), (32, 32))


@pytest.mark.parametrize('td_mode', ['abs', 'maskatt', 'perceiver'])
def test_location_control_given_the_priors_own_mask_is_the_priors_steering(td_mode):
    """Without prefix tokens, the prior's mask is a map of patch tokens only: handing that map to ``located``
    must reproduce the prior's own steering (logits and attention map) in every mode."""
    torch.manual_seed(0)
    model = timm.create_model(MICRO, img_size=32, td_mode=td_mode, class_token=False).eval()
    steer = ctl.Steered(model)
    x, classes = torch.randn(3, 1, 32, 32), torch.tensor([1, 4, 7])
    logits, att, mask = steer(x, classes, 3.0)
    logits2, att2 = steer.located(x, mask, 3.0)
    assert torch.allclose(logits, logits2, atol=1e-5) and torch.allclose(att, att2, atol=1e-5)
    other_logits, _ = steer.located(x, torch.zeros_like(mask), 3.0)  # the mask matters (small at init)
    assert (logits - other_logits).abs().max() > 1e-5


def test_region_means_split_the_mask_into_named_item_other_items_and_background():
    frac = torch.zeros(1, 2, 2, 2)
    frac[0, 0, 0, 0] = 1.0          # item 0: the top-left token; item 1: half of the top-right token
    frac[0, 1, 0, 1] = 0.5
    mask = torch.tensor([[[0.8, 0.4], [0.1, 0.3]]])
    r = ctl.region_means(mask, frac, 0)
    assert r['item'].item() == pytest.approx(0.8) and r['others'].item() == pytest.approx(0.4)
    assert r['background'].item() == pytest.approx((0.5 * 0.4 + 0.1 + 0.3) / 2.5)
    absent = ctl.region_means(mask, frac, None)
    assert absent['item'].isnan().all() and absent['others'].item() == pytest.approx((0.8 + 0.2) / 1.5)


def test_the_control_is_measured_for_models_that_take_priors_only():
    comp = _hand_made(n=4, k=2)
    comp['x'] = torch.randn(4, 1, 32, 32)
    comp['boxes'] = torch.stack([cell_boxes((32, 32), 2, [0, 3])] * 4)
    r = ctl.measure_composites(ctl.Steered(timm.create_model(MICRO, img_size=32).eval()), comp, [1.0])
    assert set(r['control']) == set(ctl.CONTROL_KEYS)
    steer = ctl.Steered(timm.create_model(MICRO, img_size=32).eval())  # the echo of the nearest absent class:
    nearest = ctl.nearest_absent(steer.priors.class_rows(), comp['classes'])  # recomputed outside the control
    rows = ctl.control_rows(steer, comp['x'], comp['classes'], comp['boxes'],
                            [steer(comp['x'], comp['classes'][:, j], 1.0)[2] for j in range(2)],
                            steer(comp['x'], comp['absent'], 1.0)[2], 1.0)
    hits = (steer(comp['x'], nearest, 1.0)[0].argmax(-1) == nearest).float()
    assert torch.equal(rows['echo_nearest'], hits)  # the nearest absent class, not the uniform one
    assert torch.equal(rows['echo_nearest_base'], (steer(comp['x'])[0].argmax(-1) == nearest).float())
    assert 0 <= r['control']['located_acc']['mean'] <= 1 and 0 <= r['control']['mask_item']['mean'] <= 1
    plain = ctl.measure_composites(ctl.Steered(timm.create_model(MICRO, img_size=32, td_mode='feedback').eval()),
                                   comp, [1.0])
    assert plain['control'] is None
    assert 'mask = item pixels' in ctl.control_table({'m': {'composites': {'2': r}}})


def test_the_nearest_absent_class_is_the_one_most_like_an_item():
    """Priors 0 and 1 nearly alike, 2 and 3 orthogonal, 4 opposite 0: an image of 0 and 2 -> 1; of 1 and 3 -> 0;
    of 0, 1 and 2 -> 3 (0 cosine beats 4's negative one)."""
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.95, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 1.0], [-1.0, 0.0, 0.0]])
    assert ctl.nearest_absent(rows, torch.tensor([[0, 2], [1, 3]])).tolist() == [1, 0]
    assert ctl.nearest_absent(rows, torch.tensor([[0, 1, 2]])).tolist() == [3]


def test_item_readout_is_perceivers_location_control_at_alpha_one():
    """The readout of a region's pass-1 tokens is what PerceiverIO predicts with that region as its mask."""
    torch.manual_seed(0)
    steer = ctl.Steered(timm.create_model(MICRO, img_size=32, td_mode='perceiver').eval())
    x, region = torch.randn(2, 1, 32, 32), torch.zeros(2, 8, 8)
    region[:, :4, :4] = 1.0
    assert torch.allclose(steer.item_readout(x, region), steer.located(x, region, 1.0)[0], atol=1e-6)
    assert not torch.allclose(steer.item_readout(x, region), steer.item_readout(x, 1 - region), atol=1e-4)


def test_checkpoints_of_model_kwargs_runs_rebuild_the_same_model(tmp_path):
    """A main.py run with ``--model-kwargs patch_size=8 depth=2`` records them; the measurement and the demos
    rebuild that model, not the registered default."""
    from demo import common
    model = timm.create_model(MICRO, img_size=32, patch_size=8, depth=2)
    args = {'model': MICRO, 'input_size': 32, 'td_mode': 'abs', 'model_kwargs': {'patch_size': 8, 'depth': 2},
            'mean': [0.286], 'std': [0.353]}
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': model.state_dict(), 'args': args}, path)
    loaded, _ = ctl.load_run(str(path))
    assert loaded.patch_embed.patch_size == (8, 8) and len(loaded.blocks) == 2
    shown, _ = common.load_model(MICRO, str(path))
    assert shown.patch_embed.patch_size == (8, 8) and len(shown.blocks) == 2


def test_the_depth_table_has_every_runs_blocks():
    def run(depths):
        share = {str(d): {'mean': 0.5, 'se': 0.0} for d in depths}
        return {'composites': {'2': {'share_by_depth': share, 'mask_share': None}}}
    table = ctl.depth_table({'two blocks': run([1, 2]), 'four blocks': run([1, 2, 3, 4])})
    assert 'attn share, block 4 |' in table.splitlines()[0]
    assert table.splitlines()[2].endswith('| – | – |')  # the 2-block run has no blocks 3 and 4
