"""Robustness evaluation: CE/mCE, the IN-A/R class masks, folder layouts, the report, FGSM/PGD, and a fake
ImageNet-C/A/R/Sketch run end to end through ``main.py --eval``."""
import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import errors
import robustness
from robustness import benchmarks, folders, metrics, report, runner, wnids
from robustness.attacks import FGSM, PGD
from robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
FMNIST_MEAN, FMNIST_STD = (0.286,), (0.353,)


def fmnist(split='t10k', n=256):
    path = f'{FMNIST_DIR}/{split}-images-idx3-ubyte.gz'
    if not os.path.isfile(path):
        pytest.skip(f'{path} absent (apt-get install dataset-fashion-mnist)')
    with gzip.open(path) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n].copy()
    with gzip.open(f'{FMNIST_DIR}/{split}-labels-idx1-ubyte.gz') as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n].copy()
    return x, y


# ------------------------------------------------------------------------------------------------ flags

def test_flags_and_requested():
    parser = robustness.add_args(argparse.ArgumentParser())
    assert not robustness.requested(parser.parse_args([]))
    args = parser.parse_args(['--inc-path', '/x', '--severity', '3', '--pgd_test'])
    assert robustness.requested(args) and args.inc_path == '/x' and args.severity == '3' and args.pgd_test
    assert robustness.requested(parser.parse_args(['--corruption', 'all']))
    for bad in (['--corruption', 'fgo'], ['--severity', '7']):
        with pytest.raises(Exception, match='unknown corruption|severity'):
            runner.plan(parser.parse_args(bad), None)


def test_plan_fails_at_once_when_frost_photos_or_imagemagick_are_missing(monkeypatch):
    """A missing install is reported before any evaluation, naming what to install; others still plan."""
    from robustness.corruptions import magick, photos
    parser = robustness.add_args(argparse.ArgumentParser())
    monkeypatch.setattr(photos, 'available', lambda: (False, 'frost needs the photographs: pip install X'))
    with pytest.raises(errors.UserError, match='--corruption frost: frost needs the photographs: pip install X'):
        runner.plan(parser.parse_args(['--corruption', 'fog,frost']), None)
    assert tuple(runner.plan(parser.parse_args(['--corruption', 'fog']), None).corruptions) == ('fog',)
    monkeypatch.setattr(magick, 'available', lambda: (False, 'no ImageMagick: apt-get install Y'))
    with pytest.raises(errors.UserError, match='--corruption snow: no ImageMagick: apt-get install Y'):
        runner.plan(parser.parse_args(['--corruption', 'snow,frost']), None)


# ------------------------------------------------------------------------------------------------ mCE

def test_alexnet_accuracies_give_ce_and_mce_100():
    acc = {c: {s: 100 * (1 - metrics.ALEXNET_ERR[c]) for s in range(1, 6)} for c in CORRUPTIONS}
    acc.update({c: {s: 100 * (1 - e) for s in range(1, 6)} for c, e in metrics.ALEXNET_ERR_EXTRA.items()})
    out = metrics.summarise(acc)
    assert out['mce'] == pytest.approx(100.0) and out['mce_complete'] and out['mce_corruptions'] == 15
    assert all(out['per_corruption'][c]['ce'] == pytest.approx(100.0) for c in CORRUPTIONS + EXTRA_CORRUPTIONS)
    assert out['extra_mce'] == pytest.approx(100.0)


def test_ce_arithmetic_by_hand():
    # errors 0.2, 0.4, 0.6, 0.8, 1.0 -> mean 0.6; CE = 0.6 / 0.886428
    g = {s: 100 * (1 - e) for s, e in zip(range(1, 6), (0.2, 0.4, 0.6, 0.8, 1.0))}
    assert metrics.corruption_error(g, 'gaussian_noise') == pytest.approx(100 * 0.6 / 0.886428)
    b = {s: 50.0 for s in range(1, 6)}                                  # error 0.5 everywhere
    out = metrics.summarise({'gaussian_noise': g, 'brightness': b, 'saturate': b})
    assert out['mce'] == pytest.approx((100 * 0.6 / 0.886428 + 100 * 0.5 / 0.564592) / 2)
    assert not out['mce_complete'] and out['mce_corruptions'] == 2      # partial, and flagged
    assert out['extra_mce'] == pytest.approx(100 * 0.5 / 0.658248)      # extras never enter the mCE
    assert metrics.corruption_error({1: 50.0, 2: 50.0}, 'fog') is None  # CE needs all 5 severities
    with pytest.raises(ValueError):
        metrics.corruption_error({s: 0.5 for s in range(1, 6)} | {3: 150.0}, 'fog')


# ------------------------------------------------------------------------------------------------ masks

def test_wnid_lists_and_masks():
    inet = wnids.wnids('imagenet')
    assert len(inet) == 1000 == len(set(inet)) and list(inet) == sorted(inet)
    assert inet[0] == 'n01440764' and inet[1] == 'n01443537' and inet[999] == 'n15075141'
    a, r = wnids.wnids('imagenet_a'), wnids.wnids('imagenet_r')
    assert len(a) == len(set(a)) == 200 and len(r) == len(set(r)) == 200
    mask_a, mask_r = wnids.class_mask(a, inet), wnids.class_mask(r, inet)
    assert mask_a.dtype == torch.long and mask_a.shape == (200,) and mask_r.shape == (200,)
    # the release's own index lists (hendrycks/natural-adv-examples, hendrycks/imagenet-r)
    assert mask_a[:10].tolist() == [6, 11, 13, 15, 17, 22, 23, 27, 30, 37] and mask_a[-1] == 988
    assert mask_r[:10].tolist() == [1, 2, 4, 6, 8, 9, 11, 13, 22, 23] and mask_r[-3:].tolist() == [981, 983, 988]
    assert a[0] == 'n01498041' and r[0] == 'n01443537' and 'n04552348' in r   # stingray, goldfish, warplane
    with pytest.raises(ValueError, match='not among'):
        wnids.class_mask(['n00000000'], inet)


# ------------------------------------------------------------------------------------------------ layouts

def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_imagenet_c_layout_errors(tmp_path):
    for s in range(1, 6):
        _img(tmp_path / 'inc' / 'fog' / str(s) / 'n01440764' / 'a.png')
    plan = folders.imagenet_c_plan(str(tmp_path / 'inc'), None, (1, 2, 3, 4, 5))
    assert list(plan) == ['fog'] and sorted(plan['fog']) == [1, 2, 3, 4, 5]
    cases = [
        (tmp_path / 'missing', None, 'no such folder'),
        (tmp_path / 'inc' / 'fog', None, 'single corruption'),            # one level too deep
        (tmp_path / 'inc' / 'fog' / '1', None, 'single severity folder'),
        (tmp_path / 'inc', ('snow',), 'snow not found'),
    ]
    for root, names, msg in cases:
        with pytest.raises(folders.LayoutError, match=msg) as err:
            folders.imagenet_c_plan(str(root), names, (1, 2, 3, 4, 5))
        assert 'Expected layout: DIR/<corruption>/<severity 1..5>/<wnid>/<image>' in str(err.value)
    (tmp_path / 'inc' / 'fog' / '5' / 'n01440764' / 'a.png').unlink()
    (tmp_path / 'inc' / 'fog' / '5' / 'n01440764').rmdir()
    _img(tmp_path / 'inc' / 'fog' / '5' / 'cat' / 'a.png')
    with pytest.raises(folders.LayoutError, match='not ImageNet wnids'):
        folders.imagenet_c_plan(str(tmp_path / 'inc'), None, (5,))
    with pytest.raises(folders.LayoutError, match='severity folder .*4 not found'):
        (tmp_path / 'inc' / 'fog' / '4' / 'n01440764' / 'a.png').unlink()
        (tmp_path / 'inc' / 'fog' / '4' / 'n01440764').rmdir()
        (tmp_path / 'inc' / 'fog' / '4').rmdir()
        folders.imagenet_c_plan(str(tmp_path / 'inc'), None, (4,))
    _img(tmp_path / 'grouped' / 'noise' / 'gaussian_noise' / '1' / 'n01440764' / 'a.png')
    with pytest.raises(folders.LayoutError, match='group folders'):
        folders.imagenet_c_plan(str(tmp_path / 'grouped'), None, (1,))


def test_class_folder_layout_errors(tmp_path):
    _img(tmp_path / 'ina' / 'imagenet-a' / 'n01498041' / 'a.png')
    with pytest.raises(folders.LayoutError, match='one level down'):
        folders.class_folder_root(str(tmp_path / 'ina'), '--ina_path')
    assert folders.class_folder_root(str(tmp_path / 'ina' / 'imagenet-a'), '--ina_path') == ['n01498041']
    with pytest.raises(folders.LayoutError, match=r'--inr_path .*no such folder. Expected layout: DIR/<wnid>/<image>'):
        folders.class_folder_root(str(tmp_path / 'nope'), '--inr_path')


def test_model_classes_must_match_the_wnid_list(tmp_path):
    args = argparse.Namespace(inc_path=None, ina_path=str(tmp_path), inr_path=None, insk_path=None, corruption=None,
                              severity='all', robust_wnids=None, fgsm_test=False, pgd_test=False)
    model = timm.create_model('vit_micro_patch4_28_gap')
    with pytest.raises(folders.LayoutError, match='model has 10 outputs but the ImageNet-1k list has 1000'):
        runner.plan(args, model)


# ------------------------------------------------------------------------------------------------ report

def test_report_files(tmp_path):
    acc = {c: {str(s): 80.0 - 10 * s for s in range(1, 6)} for c in ('fog', 'snow', 'saturate')}
    rep = {'meta': {'model': 'm'}, 'clean': {'source': 'val', 'acc1': 90.0},
           'corruptions': {'source': 'x', 'accuracy': acc, 'summary': metrics.summarise(runner._int_keys(acc))},
           'imagenet_a': {'source': 'a', 'classes': 200, 'acc1': 12.5},
           'pgd': {'attack': 'PGD(eps=1/255)', 'acc1': 3.0}, 'timings': {'total': 1.0}}
    paths = report.write(rep, str(tmp_path))
    assert json.loads(Path(paths['json']).read_text())['imagenet_a']['acc1'] == 12.5
    md = Path(paths['md']).read_text()
    assert 'mCE ↓ (partial: 2/15 corruptions)' in md and '| ImageNet-A (200 classes) | top-1 | 12.50 |' in md
    assert 'Extra corruptions' in md and '| saturate |' in md
    with Image.open(paths['png']) as im:
        assert im.size[0] > 300


# ------------------------------------------------------------------------------------------------ the benchmark table

def _add_rows(monkeypatch, subset_file):
    """Two folder benchmarks that exist only in this test, added as rows: one with a class subset (like
    ImageNet-A/R), one covering every model class (like ImageNet-Sketch)."""
    rows = (benchmarks.FolderBenchmark('imagenet_o', '--ino_path', 'ImageNet-O', subset=str(subset_file)),
            benchmarks.FolderBenchmark('imagenet_v2', '--inv2_path', 'ImageNet-V2'))
    monkeypatch.setattr(benchmarks, 'FOLDER_BENCHMARKS', benchmarks.FOLDER_BENCHMARKS + rows)


def test_a_new_row_makes_its_flag(tmp_path, monkeypatch):
    """The flag, its dashed spelling and requested() follow the table; before the row there is no flag."""
    with pytest.raises(SystemExit):
        robustness.add_args(argparse.ArgumentParser()).parse_args(['--ino_path', '/x'])
    _add_rows(monkeypatch, tmp_path / 'unused.txt')
    parser = robustness.add_args(argparse.ArgumentParser())
    args = parser.parse_args(['--ino-path', '/o', '--inv2_path', '/v'])
    assert args.ino_path == '/o' and args.inv2_path == '/v' and args.ina_path is None
    assert robustness.requested(parser.parse_args(['--inv2-path', '/v']))
    assert 'ImageNet-O: DIR/<wnid>/*' in parser.format_help()
    with pytest.raises(ValueError, match="flag 'ino' is not a --snake_case flag like --ina_path"):
        benchmarks.FolderBenchmark('imagenet_o', 'ino', 'ImageNet-O')
    monkeypatch.setattr(benchmarks, 'FOLDER_BENCHMARKS', benchmarks.FOLDER_BENCHMARKS[:1] * 2)
    with pytest.raises(ValueError, match='duplicated key imagenet_a'):
        robustness.add_args(argparse.ArgumentParser())


def _row_tree(root: Path):
    """Model wnids (10 ImageNet classes), a subset list of 3 wnids (the first not a model class, the others in
    reverse model order) and the folders of both new benchmarks and of ImageNet-A."""
    a = sorted(wnids.wnids('imagenet_a'))
    model = sorted(wnids.wnids('imagenet'))[:9] + a[-1:]
    (root / 'wnids.txt').write_text('\n'.join(model) + '\n')
    subset = ['n15075141', model[5], model[2]]
    (root / 'ino_wnids.txt').write_text('\n'.join(subset) + '\n')
    for tree, classes in (('ino', subset[1:]), ('inv2', model[:3]), ('ina', a[-1:]), ('ino_bad', model[:1])):
        for c in classes:
            _img(root / tree / c / '0.png')
    return model


def test_a_new_row_is_planned_evaluated_and_reported(tmp_path, monkeypatch, caplog):
    """A row added to the table is evaluated with its classes and mask and reported after the existing rows,
    before the attacks; nothing else names it."""
    fmnist('t10k', 1)  # skips without the Fashion-MNIST files (the FGSM val split)
    import main
    model_wnids = _row_tree(tmp_path)
    _add_rows(monkeypatch, tmp_path / 'ino_wnids.txt')
    args = main.parse_args(['--val-limit', '4', '--robust_no_clean', '--fgsm_test', '--robust_wnids',
                            str(tmp_path / 'wnids.txt'), '--ina_path', str(tmp_path / 'ina'),
                            '--ino_path', str(tmp_path / 'ino'), '--inv2_path', str(tmp_path / 'inv2')])
    model = timm.create_model('vit_micro_patch4_28_gap')
    main.resolve_data_args(args, model)
    calls = {}

    def evaluate(loader, net, device, amp_dtype=None, desc='', attack=None, class_mask=None):
        ds = loader.dataset
        calls[desc] = ([int(ds[i][1]) for i in range(len(ds))], None if class_mask is None else class_mask.tolist())
        return {'acc1': 10.0 * len(calls), 'n': len(ds)}

    with caplog.at_level('WARNING', logger='absvit.robustness'):
        rep = robustness.run(args, model, torch.device('cpu'), tmp_path / 'out', amp_dtype=None,
                             make_loader=lambda ds: torch.utils.data.DataLoader(ds, batch_size=4), evaluate=evaluate)
    assert 'imagenet_o: only 2 of its 3 classes are model outputs' in caplog.text
    assert list(calls) == ['imagenet_a', 'imagenet_o', 'imagenet_v2', 'FGSM']
    # subset row: labels are positions in the subset's model classes (subset order), logits masked to them
    assert calls['imagenet_o'] == ([1, 0], [5, 2])
    # every-class row: labels are the model's columns, logits whole
    assert calls['imagenet_v2'] == ([0, 1, 2], None)
    assert [k for k in rep if k not in ('meta', 'timings')] == ['imagenet_a', 'imagenet_o', 'imagenet_v2', 'fgsm']
    assert rep['imagenet_o']['classes'] == 2 and rep['imagenet_v2']['classes'] == len(model_wnids) == 10
    assert {'imagenet_o', 'imagenet_v2'} <= set(rep['timings'])
    md = (tmp_path / 'out' / 'robustness.md').read_text()
    lines = [ln for ln in md.splitlines() if '| top-1 |' in ln]
    assert lines[1:3] == ['| ImageNet-O (2 classes) | top-1 | 20.00 |', '| ImageNet-V2 (10 classes) | top-1 | 30.00 |']
    assert lines[0].startswith('| ImageNet-A (') and lines[3].startswith('| FGSM') and len(lines) == 4


def test_a_new_row_is_checked_before_evaluation(tmp_path, monkeypatch):
    """Layout and class errors of a new row name its flag, as those of the built-in rows do."""
    _row_tree(tmp_path)
    _add_rows(monkeypatch, tmp_path / 'ino_wnids.txt')
    parser = robustness.add_args(argparse.ArgumentParser())
    wnid_file = ['--robust_wnids', str(tmp_path / 'wnids.txt')]
    cases = [(['--ino_path', str(tmp_path / 'ino_bad')], r'--ino_path: class folder\(s\) n01440764 .* not among the 2 '
                                                        'imagenet_o classes'),
             (['--inv2_path', str(tmp_path / 'nope')], '--inv2_path .*nope: no such folder'),
             (['--inv2_path', str(tmp_path / 'ino')], None)]
    for argv, msg in cases:
        if msg is None:
            assert runner.plan(parser.parse_args(argv + wnid_file), None).folders == {'imagenet_v2': argv[1]}
            continue
        with pytest.raises(folders.LayoutError, match=msg):
            runner.plan(parser.parse_args(argv + wnid_file), None)
    ten_outputs = timm.create_model('vit_micro_patch4_28_gap')
    with pytest.raises(folders.LayoutError, match='/--insk_path/--ino_path/--inv2_path\\) need the wnid'):
        runner.plan(parser.parse_args(['--inv2_path', str(tmp_path / 'inv2')]), ten_outputs)


# ------------------------------------------------------------------------------------------------ attacks

@pytest.fixture(scope='module')
def trained_vit():
    """vit_micro trained for 120 steps on Fashion-MNIST (a few seconds), with 64 held-out test images.

    40 steps at lr 3e-3 were enough with timm 1.0.29's initialisation but not with 1.0.31's (test loss 2.43):
    120 steps at 2e-3 reach 1.37, well clear of the threshold below on either."""
    torch.manual_seed(0)
    x, y = fmnist('train', 2048)
    xt, yt = fmnist('t10k', 64)
    norm = lambda a: (torch.tensor(a).float()[:, None] / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    model = timm.create_model('vit_micro_patch4_28_gap')
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    xs, ys = norm(x), torch.tensor(y).long()
    for _ in range(120):
        idx = torch.randint(0, len(xs), (32,))
        loss = F.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, norm(xt), torch.tensor(yt).long()


def _pixels(x):
    return x * FMNIST_STD[0] + FMNIST_MEAN[0]


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize('amp', [None, torch.bfloat16])
def test_attacks_stay_in_eps_ball_and_raise_loss(trained_vit, amp):
    model, x, y = trained_vit
    if amp is not None:    # bf16 autocast is slow on CPU: fewer images
        x, y = x[:32], y[:32]
    clean_loss = _loss(model, x, y)
    assert clean_loss < 2.0, 'the tiny model did not learn'
    g = torch.Generator().manual_seed(0)      # random signs of the same size: the baseline to beat
    noise = (_pixels(x) + (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) / 255).clamp(0, 1)
    noise_loss = _loss(model, (noise - FMNIST_MEAN[0]) / FMNIST_STD[0], y)
    for atk in (FGSM(FMNIST_MEAN, FMNIST_STD, amp_dtype=amp), PGD(FMNIST_MEAN, FMNIST_STD, amp_dtype=amp)):
        adv = atk(model, x, y)
        delta = _pixels(adv) - _pixels(x).clamp(0, 1)
        assert delta.abs().max() <= 1 / 255 + 1e-6, atk
        assert delta.abs().max() > 0.9 / 255, atk                       # it does use its budget
        assert _pixels(adv).min() >= -1e-6 and _pixels(adv).max() <= 1 + 1e-6
        adv_loss = _loss(model, adv, y)
        assert adv_loss > clean_loss and adv_loss - clean_loss > 3 * abs(noise_loss - clean_loss), \
            (atk, clean_loss, noise_loss, adv_loss)
        assert not model.training and all(p.grad is None for p in model.parameters())


def test_pgd_is_reproducible_and_stronger_than_fgsm(trained_vit):
    model, x, y = trained_vit
    x, y = x[:16], y[:16]
    a = PGD(FMNIST_MEAN, FMNIST_STD, seed=1)(model, x, y)
    torch.testing.assert_close(a, PGD(FMNIST_MEAN, FMNIST_STD, seed=1)(model, x, y))
    assert not torch.equal(a, PGD(FMNIST_MEAN, FMNIST_STD, seed=2)(model, x, y))
    fgsm = FGSM(FMNIST_MEAN, FMNIST_STD)(model, x, y)
    assert _loss(model, a, y) >= _loss(model, fgsm, y) * 0.98


def test_attack_through_absvit_top_down():
    torch.manual_seed(0)
    model = timm.create_model('absvit_micro_patch4_28_gap').eval()
    x, y = fmnist('t10k', 16)
    x = (torch.tensor(x).float()[:, None] / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    y = torch.tensor(y).long()
    adv = PGD(FMNIST_MEAN, FMNIST_STD)(model, x, y)
    assert (_pixels(adv) - _pixels(x)).abs().max() <= 1 / 255 + 1e-6
    assert _loss(model, adv, y) > _loss(model, x, y)


# ------------------------------------------------------------------------------------------------ end to end

def _fake_benchmarks(root: Path):
    """A 10-class model's wnid file and fake ImageNet-C/A/R/Sketch trees made from Fashion-MNIST test images:
    class k is wnid k of the file; 7 of the wnids are ImageNet-A classes and 7 ImageNet-R classes."""
    a, r = set(wnids.wnids('imagenet_a')), set(wnids.wnids('imagenet_r'))
    classes = sorted(a & r)[:4] + sorted(a - r)[:3] + sorted(r - a)[:3]
    (root / 'wnids.txt').write_text('\n'.join(classes) + '\n')
    x, y = fmnist('t10k', 200)
    per_class = {k: [i for i in range(len(y)) if y[i] == k][:3] for k in range(10)}
    for k, idx in per_class.items():
        for i in idx:
            for tree, keep in (('src', True), ('ina', classes[k] in a), ('inr', classes[k] in r), ('insk', True)):
                if keep:
                    _img_from(root / tree / classes[k] / f'{i}.png', x[i])
    from robustness.make_corrupted import main
    assert main([str(root / 'src'), str(root / 'inc'), '--corruption', 'gaussian_noise,contrast,speckle_noise',
                 '--quiet']) == 0
    return classes


def _img_from(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.mark.slow
def test_fake_benchmarks_end_to_end_through_main(tmp_path):
    _fake_benchmarks(tmp_path)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    common = [sys.executable, str(ROOT / 'main.py'), '--model', 'vit_micro_patch4_28_gap', '--no-progress',
              '--num-threads', '1']
    train = subprocess.run(common + ['--epochs', '1', '--train-limit', '256', '--val-limit', '64', '--batch-size',
                                     '64', '--output-dir', str(tmp_path / 'train')],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = tmp_path / 'train' / 'checkpoint.pth'
    flags = ['--eval', '--resume', str(ckpt), '--val-limit', '32', '--output-dir', str(tmp_path / 'eval'),
             '--inc_path', str(tmp_path / 'inc'), '--ina_path', str(tmp_path / 'ina'),
             '--inr_path', str(tmp_path / 'inr'), '--insk_path', str(tmp_path / 'insk'),
             '--robust_wnids', str(tmp_path / 'wnids.txt'),
             '--corruption', 'fog', '--fgsm_test', '--pgd_test']
    ev = subprocess.run(common + flags, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    rep = json.loads((tmp_path / 'eval' / 'robustness.json').read_text())
    inc = rep['imagenet_c']
    assert sorted(inc['accuracy']) == ['contrast', 'gaussian_noise', 'speckle_noise']
    assert all(sorted(v) == ['1', '2', '3', '4', '5'] for v in inc['accuracy'].values())
    assert inc['summary']['mce_corruptions'] == 2 and inc['summary']['extra_mce'] is not None
    assert rep['imagenet_a']['classes'] == 7 and rep['imagenet_a']['n'] == 21
    assert rep['imagenet_r']['classes'] == 7 and rep['imagenet_r']['n'] == 21
    assert rep['imagenet_sketch']['n'] == 30 and rep['clean']['n'] == 32
    assert list(rep['corruptions']['accuracy']) == ['fog'] and rep['fgsm']['n'] == rep['pgd']['n'] == 32
    assert rep['pgd']['acc1'] <= rep['clean']['acc1']
    md = (tmp_path / 'eval' / 'robustness.md').read_text()
    for title in ('ImageNet-C', 'Corrupted on the fly', 'ImageNet-A', 'ImageNet-R', 'ImageNet-Sketch', 'FGSM', 'PGD'):
        assert title in md
    with Image.open(tmp_path / 'eval' / 'robustness_severity.png') as im:
        assert im.format == 'PNG'

    bad = subprocess.run(common + ['--eval', '--resume', str(ckpt), '--output-dir', str(tmp_path / 'bad'),
                                   '--inc_path', str(tmp_path / 'inc' / 'fog'), '--robust_wnids',
                                   str(tmp_path / 'wnids.txt')],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and 'Expected layout: DIR/<corruption>/<severity 1..5>/<wnid>' in bad.stderr
    assert 'Traceback' not in bad.stderr


def test_run_evaluates_with_the_pieces_it_is_given(tmp_path):
    """robustness.run parses only its own flags: the model, device, autocast dtype, loader factory and
    evaluation function come from the caller, and the report is written only on the main process."""
    fmnist('t10k', 1)  # skips without the Fashion-MNIST files
    import main
    args = main.parse_args(['--val-limit', '6', '--fgsm_test', '--corruption', 'contrast', '--severity', '2'])
    args.eval_batch_size = 4
    model = timm.create_model('vit_micro_patch4_28_gap')
    main.resolve_data_args(args, model)
    loaders, calls = [], []

    def make_loader(dataset):
        loaders.append(len(dataset))
        return torch.utils.data.DataLoader(dataset, batch_size=4)

    def evaluate(loader, net, device, amp_dtype=None, desc='', attack=None, class_mask=None):
        calls.append((net, device.type, amp_dtype, desc, type(attack).__name__))
        return {'acc1': 50.0, 'acc5': 90.0, 'loss': 1.0, 'n': len(loader.dataset)}

    rep = robustness.run(args, model, torch.device('cpu'), tmp_path / 'none', amp_dtype=torch.bfloat16,
                         make_loader=make_loader, evaluate=evaluate, is_main=False)
    assert loaders == [6, 6, 6]  # clean, contrast s2, FGSM: all on the 6-image val split
    assert calls == [(model, 'cpu', torch.bfloat16, 'clean', 'NoneType'),
                     (model, 'cpu', torch.bfloat16, 'contrast s2', 'NoneType'),
                     (model, 'cpu', torch.bfloat16, 'FGSM', 'FGSM')]
    assert rep['meta']['amp'] == 'torch.bfloat16' and rep['fgsm']['acc1'] == 50.0 and rep['clean']['n'] == 6
    assert rep['corruptions']['accuracy'] == {'contrast': {'2': 50.0}}
    assert not (tmp_path / 'none').exists()  # not the main process: nothing written
