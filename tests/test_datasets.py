"""Datasets: Fashion-MNIST from the Debian files, image folders, transforms and their errors."""
import gzip
import os
import struct
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets import DatasetError, UnreadableImageError
from datasets.verify import unreadable_images

FMNIST = datasets.default_data_path('FMNIST')
needs_fmnist = pytest.mark.skipif(not os.path.isfile(os.path.join(FMNIST, 't10k-images-idx3-ubyte.gz')),
                                  reason='Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)')


def data_args(**kw):
    base = dict(data_set='FMNIST', data_path=None, input_size=28, in_chans=1, mean=[0.286], std=[0.353],
                crop_pct=1.0, interpolation='bicubic', train_interpolation='bicubic', train_crop='pad',
                crop_padding=2, hflip=0.5, aa='none', color_jitter=0.0, reprob=0.0, train_limit=None,
                val_limit=None)
    base.update(kw)
    return Namespace(**base)


def make_folder(root, classes=('cat', 'dog', 'emu'), per_class=2, size=36):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f'{i}.png'))
    return str(root)


@needs_fmnist
def test_fmnist_splits_limits_and_transforms():
    train, n = datasets.build_dataset(True, data_args(train_limit=100))
    assert n == 10 and len(train) == 100
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 9  # the first image is an ankle boot
    test, _ = datasets.build_dataset(False, data_args())
    assert len(test) == 10000
    assert sorted(set(test.targets.tolist())) == list(range(10))
    # an RGB model gets the grey image on three channels
    x3, _ = datasets.build_dataset(False, data_args(in_chans=3, mean=[0.5], std=[0.5], val_limit=3))[0][0]
    assert x3.shape == (3, 28, 28) and torch.equal(x3[0], x3[2])


@needs_fmnist
def test_eval_transform_applies_corruption_between_crop_and_normalize():
    seen = []

    def invert(arr):
        seen.append((arr.shape, arr.dtype))
        return 255 - arr

    args = data_args(val_limit=2)
    clean, _ = datasets.build_dataset(False, args)
    dirty, _ = datasets.build_dataset(False, args, corruption=invert)
    a, b = clean[0][0], dirty[0][0]
    assert seen[-1] == ((28, 28, 1), np.uint8)
    # normalised (255 - p) equals (1 - p/255 - m)/s
    m, s = 0.286, 0.353
    torch.testing.assert_close(b, ((1 - (a * s + m)) - m) / s, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        datasets.build_dataset(True, args, corruption=invert)


def test_fmnist_missing_or_malformed(tmp_path):
    with pytest.raises(DatasetError, match='apt-get install dataset-fashion-mnist'):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path / 'nowhere')))
    with pytest.raises(DatasetError, match='train-images-idx3-ubyte.gz not found'):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path)))
    # wrong magic number
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(struct.pack('>IIII', 0x801, 10, 28, 28) + bytes(10 * 784))
    with pytest.raises(DatasetError, match='not a Fashion-MNIST IDX file'):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path)))
    # truncated data
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(struct.pack('>IIII', 0x803, 60000, 28, 28) + bytes(5 * 784))
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(struct.pack('>II', 0x801, 60000) + bytes(60000))
    with pytest.raises(DatasetError, match='truncated'):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path)))
    # not gzip at all
    (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'this is not gzip')
    with pytest.raises(DatasetError, match='cannot read'):
        datasets.build_dataset(True, data_args(data_path=str(tmp_path)))


def test_folder_dataset(tmp_path):
    root = make_folder(tmp_path / 'ds')
    args = data_args(data_set='FOLDER', data_path=root, input_size=32, in_chans=3, mean=[0.5] * 3, std=[0.5] * 3,
                     crop_pct=0.875, train_crop='rrc')
    assert datasets.dataset_num_classes(args) == 3
    train, n = datasets.build_dataset(True, args)
    val, _ = datasets.build_dataset(False, args)
    assert n == 3 and len(train) == 6 and len(val) == 6
    assert train[0][0].shape == (3, 32, 32) and val[5][1] == 2
    grey = datasets.build_folder_dataset(os.path.join(root, 'val'), data_args(input_size=16, crop_pct=1.0),
                                         corruption=lambda a: np.zeros_like(a))
    x, y = grey[0]
    assert x.shape == (1, 16, 16) and torch.allclose(x, torch.full_like(x, -0.286 / 0.353))
    # ImageNet needs its 1000 classes
    with pytest.raises(DatasetError, match='1000'):
        datasets.build_dataset(False, Namespace(**{**vars(args), 'data_set': 'IMNET'}))
    # both splits must have the same classes
    os.makedirs(os.path.join(root, 'val', 'fox'))
    Image.new('RGB', (8, 8)).save(os.path.join(root, 'val', 'fox', 'a.png'))
    with pytest.raises(DatasetError, match='differ'):
        datasets.build_dataset(True, args)


def test_folder_errors_name_paths(tmp_path):
    with pytest.raises(DatasetError, match='does not exist'):
        datasets.build_folder_dataset(str(tmp_path / 'missing'), data_args())
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='class'):
        datasets.build_folder_dataset(str(tmp_path / 'empty'), data_args())
    with pytest.raises(DatasetError, match='--data-path'):
        datasets.build_dataset(True, data_args(data_set='IMNET'))
    root = make_folder(tmp_path / 'ds', per_class=1)
    bad = os.path.join(root, 'val', 'dog', 'broken.jpg')
    with open(bad, 'wb') as f:
        f.write(b'\xff\xd8 not really a jpeg')
    ds = datasets.build_folder_dataset(os.path.join(root, 'val'), data_args())
    idx = [i for i, (p, _) in enumerate(ds.samples) if p == bad][0]
    with pytest.raises(UnreadableImageError, match='broken.jpg'):
        ds[idx]
    assert [p for p, _ in unreadable_images(root)] == [bad]


# ------------------------------------------------------------------------------------------------
# Recipes: one source (datasets/recipes.py) for main.py, the configs, the benchmarks and the demos.

def test_every_dataset_has_a_recipe_setting_the_same_flags():
    from datasets.recipes import RECIPE_KEYS, RECIPES
    assert set(RECIPES) == set(datasets.DATASETS)
    assert all(tuple(r) == RECIPE_KEYS for r in RECIPES.values())
    copy = datasets.recipe('IMNET')
    copy['mean'].append(0.0)  # a copy: changing it leaves the recipe alone
    assert len(RECIPES['IMNET']['mean']) == 3 and RECIPES['FOLDER'] is RECIPES['IMNET']
    with pytest.raises(KeyError, match='no recipe'):
        datasets.recipe('CIFAR')


def test_parsed_defaults_are_the_recipe():
    import options
    from datasets.recipes import RECIPE_KEYS
    for data_set in datasets.DATASETS:
        args = vars(options.parse_args(['--data-set', data_set]))
        expected = datasets.recipe(data_set)
        assert {k: args[k] for k in RECIPE_KEYS if k != 'amp'} == {k: v for k, v in expected.items() if k != 'amp'}
        assert args['amp'] is None  # settled by options.resolve_amp once the device is known
    args = options.parse_args(['--data-set', 'IMNET'])
    assert options.resolve_amp(args, torch.device('cpu')) is None and args.amp == 'none'
    args = options.parse_args(['--data-set', 'IMNET'])
    assert options.resolve_amp(args, torch.device('cuda')) is torch.float16 and args.amp == 'fp16'


def test_shipped_configs_say_only_what_differs_from_the_recipe():
    """A config key that repeats its recipe's value is dead weight that hides the recipe; ``model`` may
    name the recipe's own model (the file is about it), ``amp: fp16`` also asks for fp16 off CUDA."""
    import yaml
    from pathlib import Path
    configs = sorted((Path(datasets.__file__).parents[1] / 'configs').glob('*.yaml'))
    assert configs
    for path in configs:
        cfg = {k.replace('-', '_'): v for k, v in yaml.safe_load(path.read_text()).items()}
        recipe = datasets.recipe(cfg.get('data_set', 'FMNIST'))
        repeated = [k for k, v in cfg.items() if k in recipe and k not in ('model', 'amp') and recipe[k] == v]
        assert not repeated, f'{path.name} repeats the recipe: {repeated}'


# ------------------------------------------------------------------------------------------------
# The dataset table: one row per --data-set decides the task, the class count, the builder and the paths.

def test_every_choice_is_one_row_of_the_table():
    from datasets import DATASET_SPECS
    assert datasets.DATASETS == tuple(DATASET_SPECS)
    expected = {'FMNIST': ('classification', 10), 'IMNET': ('classification', 1000), 'FOLDER': ('classification', None),
                'COCO2014': ('multilabel', 80), 'VOC2007': ('multilabel', 20), 'FMNIST_ML': ('multilabel', 10)}
    assert {k: (s.task, s.num_classes) for k, s in DATASET_SPECS.items()} == expected
    for name, spec in DATASET_SPECS.items():
        assert datasets.dataset_task(name) == spec.task and datasets.default_data_path(name) == spec.default_path
        if spec.num_classes is not None:  # known without looking at the data
            assert datasets.dataset_num_classes(data_args(data_set=name, data_path='/nowhere')) == spec.num_classes
    assert datasets.dataset_task('CIFAR') == 'classification' and datasets.default_data_path('CIFAR') is None
    for call in (datasets.dataset_num_classes, lambda a: datasets.build_dataset(False, a)):
        with pytest.raises(DatasetError, match="unknown --data-set 'CIFAR'; choose one of FMNIST, IMNET, FOLDER"):
            call(data_args(data_set='CIFAR'))
    with pytest.raises(DatasetError, match='needs --data-path: VOCdevkit/VOC2007'):
        datasets.build_dataset(False, data_args(data_set='VOC2007'))


def test_a_new_dataset_is_one_row(tmp_path, monkeypatch):
    """A row with its own builder is all a dataset needs: task, class count, transform and limit follow."""
    from datasets import DATASET_SPECS, DatasetSpec
    root = make_folder(tmp_path / 'ds')
    build = lambda path, is_train, args, transform, limit: datasets.SafeImageFolder(  # noqa: E731
        os.path.join(path, 'val'), transform=transform)
    monkeypatch.setitem(DATASET_SPECS, 'PETS', DatasetSpec('classification', 3, build, default_path=root))
    args = data_args(data_set='PETS', input_size=16, val_limit=4)
    ds, n = datasets.build_dataset(False, args)
    assert n == 3 == datasets.dataset_num_classes(args) and len(ds) == 4 and ds[0][0].shape == (1, 16, 16)
    assert datasets.dataset_task('PETS') == 'classification'
