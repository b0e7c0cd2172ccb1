"""Multi-label data: COCO 2014 and VOC 2007 from tiny trees in their standard layouts, the Fashion-MNIST canvases,
cutout and the transforms; the multi-label losses and the OneCycle schedule."""
import json
import os
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import losses
from datasets.multilabel import VOC_CLASSES, CocoMultiLabel, Cutout, FashionMNISTCanvases, VocMultiLabel, \
    build_multilabel_transform
from schedulers import OneCycleSchedule

FMNIST = datasets.default_data_path('FMNIST')
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason='apt-get install dataset-fashion-mnist')
# MS-COCO's 80 category ids (1..90 with gaps), in the instances files' order
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _jpg(path, color=(10, 20, 30), size=(20, 12)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', size, color).save(path)


def _coco_tree(root):
    cats = [{'id': i, 'name': f'c{i}'} for i in reversed(COCO_IDS)]  # any order in the file: sorted by id
    images = [{'id': 7, 'file_name': 'a.jpg'}, {'id': 3, 'file_name': 'b.jpg'}, {'id': 9, 'file_name': 'c.jpg'}]
    anns = [{'image_id': 7, 'category_id': 1}, {'image_id': 7, 'category_id': 90}, {'image_id': 7, 'category_id': 1},
            {'image_id': 3, 'category_id': 13}]
    os.makedirs(root / 'annotations')
    for split in ('train2014', 'val2014'):
        (root / 'annotations' / f'instances_{split}.json').write_text(
            json.dumps({'categories': cats, 'images': images, 'annotations': anns}))
        for img in images:
            _jpg(str(root / split / img['file_name']))


def test_coco_targets_from_instances_json(tmp_path):
    _coco_tree(tmp_path)
    ds = CocoMultiLabel(str(tmp_path), train=True)
    assert len(ds) == 3 and ds.targets.shape == (3, 80) and ds.classes[0] == 'c1' and ds.classes[-1] == 'c90'
    assert ds.targets[0].nonzero().flatten().tolist() == [0, 79]   # ids 1 and 90
    assert ds.targets[1].nonzero().flatten().tolist() == [11]      # id 13 is the 12th category (id 12 is unused)
    assert ds.targets[2].sum() == 0                                 # an image without objects is kept, all negative
    img, target = ds[0]
    assert img.size == (20, 12) and target.dtype == torch.float32


def test_coco_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match='instances_val2014.json'):
        CocoMultiLabel(str(tmp_path), train=False)
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_val2014.json').write_text('{"images": []}')
    with pytest.raises(datasets.DatasetError, match='not a COCO instances file'):
        CocoMultiLabel(str(tmp_path), train=False)


def _voc_xml(objects):
    body = ''.join(f'<object><name>{n}</name><difficult>{d}</difficult></object>' for n, d in objects)
    return f'<annotation><filename>x.jpg</filename>{body}</annotation>'


def _voc_tree(root):
    voc = root / 'VOCdevkit' / 'VOC2007'
    (voc / 'ImageSets' / 'Main').mkdir(parents=True)
    (voc / 'Annotations').mkdir()
    files = {'000001': [('dog', 0), ('person', 1)],            # difficult person: a negative
             '000002': [('person', 1), ('person', 0), ('Car', 0)],  # a non-difficult person makes it positive
             '000003': [('cat', 0)]}
    for i, objs in files.items():
        (voc / 'Annotations' / f'{i}.xml').write_text(_voc_xml(objs))
        _jpg(str(voc / 'JPEGImages' / f'{i}.jpg'))
    (voc / 'ImageSets' / 'Main' / 'trainval.txt').write_text('000001\n000002\n')
    (voc / 'ImageSets' / 'Main' / 'test.txt').write_text('000003\n')
    return voc


def test_voc_difficult_objects_are_negatives(tmp_path):
    voc = _voc_tree(tmp_path)
    for root in (tmp_path, voc):  # a folder holding VOCdevkit, or VOCdevkit/VOC2007 itself
        ds = VocMultiLabel(str(root), train=True)
        names = [[VOC_CLASSES[j] for j in t.nonzero().flatten()] for t in ds.targets]
        assert names == [['dog'], ['car', 'person']]
    test = VocMultiLabel(str(tmp_path), train=False)
    assert len(test) == 1 and VOC_CLASSES[int(test.targets[0].argmax())] == 'cat'
    with pytest.raises(datasets.DatasetError, match='VOCdevkit/VOC2007'):
        VocMultiLabel(str(tmp_path / 'nowhere'), train=True)


def _args(**kw):
    base = dict(data_set='FMNIST_ML', data_path=FMNIST, input_size=64, in_chans=3, mean=[0.5], std=[0.5], aa='none',
                cutout=0.0, train_limit=None, val_limit=None)
    return Namespace(**{**base, **kw})


@needs_fmnist
def test_canvases_targets_masks_and_determinism():
    ds = FashionMNISTCanvases(FMNIST, train=False, num_canvases=50)
    for i in range(50):
        s = ds.sample(i)
        assert 2 <= len(s['labels']) <= 4
        assert s['target'].nonzero().flatten().tolist() == sorted(set(s['labels']))
        masks = s['masks']
        assert masks.sum(0).max() <= 1                              # items never overlap
        for m, (t, l, b, r) in zip(masks, s['boxes']):
            assert m.sum() > 0 and m[t:b, l:r].sum() == m.sum()      # each mask lies in its box
        assert (s['image'][masks.any(0)] > 0).all() and (s['image'][~masks.any(0)] == 0).all()
    again = FashionMNISTCanvases(FMNIST, train=False, num_canvases=50)
    assert np.array_equal(ds.sample(7)['image'], again.sample(7)['image'])
    assert not np.array_equal(ds.sample(7)['image'], ds.sample(8)['image'])


@needs_fmnist
def test_build_dataset_multilabel_choice():
    args = _args(val_limit=10)
    assert datasets.dataset_task('FMNIST_ML') == 'multilabel' and datasets.dataset_task('IMNET') == 'classification'
    ds, k = datasets.build_dataset(False, args)
    x, y = ds[0]
    assert k == 10 and len(ds) == 10 and x.shape == (3, 64, 64) and y.shape == (10,)


def test_cutout_one_hole_of_half_the_side():
    np.random.seed(0)
    img = Image.new('RGB', (40, 40), (0, 0, 0))
    for _ in range(20):
        out = np.asarray(Cutout(0.5)(img))
        changed = (out != 0).any(-1)
        ys, xs = np.nonzero(changed)
        if len(ys) == 0:  # the random colour may be black
            continue
        assert ys.max() - ys.min() + 1 <= 21 and xs.max() - xs.min() + 1 <= 21   # half the side (+1: inclusive box)
        assert changed[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()      # one filled rectangle
        assert len({tuple(c) for c in out[changed]}) == 1                         # of one colour
    assert np.asarray(img).max() == 0  # the input is untouched


def test_train_transform_square_resize_cutout_randaugment():
    args = _args(input_size=48, in_chans=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                 aa='rand-m10-n2', cutout=0.5)
    tf = build_multilabel_transform(args, is_train=True)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:4] == ['ConvertMode', 'Resize', 'Cutout', 'RandAugment']
    assert tf(Image.new('RGB', (100, 30))).shape == (3, 48, 48)  # square, no crop
    assert [type(t).__name__ for t in build_multilabel_transform(args, False).transforms][2] == 'ToTensor'


def test_loss_is_multilabel_soft_margin_summed():
    logits, target = torch.randn(6, 5), (torch.rand(6, 5) < 0.4).float()
    crit = losses.build_criterion(Namespace(loss='multilabel_soft_margin', smoothing=0.0), torch.nn.Linear(1, 1), False)
    p = torch.sigmoid(logits)
    by_hand = -(target * p.log() + (1 - target) * (1 - p).log()).mean(1).sum()
    assert torch.allclose(crit(logits, target), by_hand, atol=1e-5)
    assert torch.allclose(crit(logits, target), torch.nn.MultiLabelSoftMarginLoss(reduction='sum')(logits, target))


def test_asymmetric_loss_reduces_to_bce_and_downweights_easy_negatives():
    logits, target = torch.randn(6, 5), (torch.rand(6, 5) < 0.4).float()
    plain = losses.AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction='sum')
    assert torch.allclose(plain(logits, target), bce, atol=1e-4)
    easy_negative = torch.tensor([[-1.0]]), torch.tensor([[0.0]])
    assert losses.AsymmetricLoss()(*easy_negative) < plain(*easy_negative) / 10


def test_onecycle_equals_torch_onecycle_lr():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    ours_opt, ref_opt = torch.optim.Adam([p1], lr=1.0), torch.optim.Adam([p2], lr=1.0)
    ours = OneCycleSchedule(ours_opt, max_lr=1e-4, total_steps=50, pct_start=0.2)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=1e-4, total_steps=50, pct_start=0.2)
    for step in range(50):
        g, r = ours_opt.param_groups[0], ref_opt.param_groups[0]
        assert g['lr'] == pytest.approx(r['lr'], rel=1e-9, abs=1e-15), step
        assert g['betas'][0] == pytest.approx(r['betas'][0], rel=1e-9), step
        ref_opt.step()
        if step < 49:
            ref.step()
        ours.step_update(step + 1)
