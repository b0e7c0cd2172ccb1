"""The six paper configs (AbSViT-B and ViT-B with UperNet on ADE20K, Cityscapes, PASCAL VOC): they
build, and their key hyperparameters are the release's; the learning-rate schedule is the release's
mmcv-0.x warm-up-on-poly curve; the data pipelines are mmseg's standard ones."""
import os.path as osp

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation (onedl-mmsegmentation) is not installed')

import mmseg  # noqa: E402
import segmentation  # noqa: E402,F401
from conftest import ROOT  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
register_all_modules()
CONFIGS = ROOT / 'segmentation' / 'configs'
#: dataset -> (classes, iterations, crop, mmseg dataset class), from the release's configs
#: (segmentation/configs/vit_top_down/upernet_vit-top-down-b16_end2end_512x512_{160k_ade20k,40k_cityscapes,
#: 20k_pascalvoc}.py and mmseg 0.x's _base_ datasets and schedules they inherit)
RUNS = {'ade20k': (150, 160000, (512, 512), 'ADE20KDataset'),
        'cityscapes': (19, 40000, (512, 1024), 'CityscapesDataset'),
        'voc12': (21, 20000, (512, 512), 'PascalVOCDataset')}
PAPER = [(arch, ds) for arch in ('absvit', 'vit') for ds in RUNS]


def paper_config(arch, ds):
    iters, crop = RUNS[ds][1], RUNS[ds][2]
    return Config.fromfile(str(CONFIGS / arch / f'upernet_{arch}-b16_8xb2-{iters // 1000}k_{ds}-{crop[0]}x{crop[1]}.py'))


@pytest.mark.parametrize('arch, ds', PAPER)
def test_paper_config_has_the_release_hyperparameters(arch, ds):
    cfg = paper_config(arch, ds)
    classes, iters, crop, dataset = RUNS[ds]
    b, head, aux = cfg.model.backbone, cfg.model.decode_head, cfg.model.auxiliary_head
    assert b.type == 'AbSViTBackbone' and b.top_down == (arch == 'absvit')
    assert (b.img_size, b.patch_size, b.embed_dim, b.depth, b.num_heads, b.mlp_ratio, b.qkv_bias) == \
        (512, 16, 768, 12, 12, 4, True)
    assert b.drop_path_rate == 0.1 and tuple(b.out_indices) == (2, 5, 8, 11) and cfg.model.neck is None
    assert head.type == 'UPerHead' and head.in_channels == [768] * 4 and head.in_index == [0, 1, 2, 3]
    assert tuple(head.pool_scales) == (1, 2, 3, 6) and head.channels == 512 and head.dropout_ratio == 0.1
    assert aux.type == 'FCNHead' and (aux.in_channels, aux.in_index, aux.channels, aux.num_convs) == (768, 3, 256, 1)
    assert aux.concat_input is False and aux.loss_decode.loss_weight == 0.4 and head.loss_decode.loss_weight == 1.0
    assert head.num_classes == aux.num_classes == classes
    assert head.norm_cfg.type == aux.norm_cfg.type == 'SyncBN'
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, tuple(opt.betas), opt.weight_decay) == ('AdamW', 6e-5, (0.9, 0.999), 0.01)
    assert {k: v.decay_mult for k, v in cfg.optim_wrapper.paramwise_cfg.custom_keys.items()} == \
        {'pos_embed': 0., 'cls_token': 0., 'norm': 0.}
    assert cfg.train_cfg.max_iters == iters and cfg.model.test_cfg.mode == 'whole'
    assert tuple(cfg.crop_size) == crop and tuple(cfg.model.data_preprocessor.size) == crop
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16, as the release trained
    assert cfg.train_dataloader.dataset.type == dataset and cfg.val_evaluator.type == 'IoUMetric'
    crop_step = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop'][0]
    assert tuple(crop_step.crop_size) == crop
    loads = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'LoadAnnotations']
    assert loads[0].get('reduce_zero_label', False) == (ds == 'ade20k')
    assert any(b.type == 'TensorboardVisBackend' for b in cfg.vis_backends)


def release_lr(i, base, max_iters, warmup=1500, ratio=1e-6):
    """mmcv 0.x: poly (power 1, min 0) over the run, times the linear warm-up factor."""
    regular = base * (1 - i / max_iters)
    return regular * (1 - (1 - i / warmup) * (1 - ratio)) if i < warmup else regular


@pytest.mark.parametrize('ds', ['voc12', 'cityscapes'])
def test_learning_rate_curve_is_the_releases(ds):
    cfg = paper_config('absvit', ds)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=opt)) for s in cfg.param_scheduler]
    max_iters = cfg.train_cfg.max_iters
    checks = {0, 1, 700, 1499, 1500, 1501, 10000, max_iters - 1}
    for i in range(max_iters):
        if i in checks:
            assert opt.param_groups[0]['lr'] == pytest.approx(release_lr(i, 6e-5, max_iters), rel=1e-6, abs=1e-13), i
        for s in schedulers:
            s.step()


def test_paper_models_build_and_exempt_pos_embed_cls_token_and_norms_from_decay():
    cfg = paper_config('absvit', 'ade20k')
    model = MODELS.build(cfg.model)
    n = sum(p.numel() for p in model.backbone.parameters())
    assert n == 100_724_200 - (768 * 1000 + 1000) + 768 * (32 ** 2 - 14 ** 2)  # AbSViT-B, no head, 32x32 grid
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups for p in g['params']}
    named = dict(model.named_parameters())
    for name in ('backbone.vit.pos_embed', 'backbone.vit.cls_token', 'backbone.vit.blocks.3.norm1.weight',
                 'backbone.vit.norm.bias'):
        assert decay[id(named[name])] == 0.0, name
    assert decay[id(named['backbone.vit.blocks.3.attn.qkv.weight'])] == 0.01
    bu = MODELS.build(paper_config('vit', 'cityscapes').model)
    assert not hasattr(bu.backbone.vit, 'decoders') and bu.decode_head.num_classes == 19


MIM = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', '_base_', 'datasets')


@pytest.mark.skipif(not osp.isdir(MIM), reason="mmseg's shipped base configs are absent")
@pytest.mark.parametrize('ours, theirs', [('ade20k', 'ade20k'), ('cityscapes', 'cityscapes'),
                                          ('pascal_voc12', 'pascal_voc12')])
def test_dataset_pipelines_are_mmsegs_standard(ours, theirs):
    mine = Config.fromfile(str(CONFIGS / '_base_' / 'datasets' / f'{ours}.py'))
    std = Config.fromfile(osp.join(MIM, f'{theirs}.py'))
    assert mine.train_pipeline == std.train_pipeline and mine.test_pipeline == std.test_pipeline
    for split in ('train_dataloader', 'val_dataloader'):
        assert mine[split].dataset.data_prefix == std[split].dataset.data_prefix
        assert mine[split].dataset.get('ann_file') == std[split].dataset.get('ann_file')
        assert mine[split].dataset.data_root == std[split].dataset.data_root


def test_tiny_configs_stay_small():
    for ds in RUNS:
        cfg = Config.fromfile(str(CONFIGS / 'tiny' / f'upernet_absvit-tiny_{ds}.py'))
        b = cfg.model.backbone
        assert b.embed_dim <= 192 and b.depth <= 4 and cfg.train_dataloader.batch_size >= 2
        assert cfg.model.decode_head.num_classes == RUNS[ds][0]


@pytest.mark.parametrize('ds', RUNS)
def test_vit_config_is_the_absvit_config_with_the_top_down_pass_off(ds):
    """The paper's ViT-B baseline differs from its AbSViT-B run in the backbone's top-down flag alone."""
    absvit, vit = paper_config('absvit', ds).to_dict(), paper_config('vit', ds).to_dict()
    assert absvit['model']['backbone'].pop('top_down') is True and vit['model']['backbone'].pop('top_down') is False
    assert vit == absvit


@pytest.mark.parametrize('ds', RUNS)
def test_tiny_config_is_its_paper_run_at_toy_size(ds):
    """A tiny config keeps its paper run's data (the standard pipelines but for scale and crop), classes
    and optimiser; only the sizes, the length and the CPU runtime change."""
    tiny = Config.fromfile(str(CONFIGS / 'tiny' / f'upernet_absvit-tiny_{ds}.py'))
    paper = paper_config('absvit', ds)
    sizes = ('scale', 'crop_size')
    for split, pipe in (('train_dataloader', 'train_pipeline'), ('val_dataloader', 'test_pipeline')):
        assert tiny[split].dataset.pipeline == tiny[pipe]
        assert [{k: v for k, v in t.items() if k not in sizes} for t in tiny[pipe]] == \
            [{k: v for k, v in t.items() if k not in sizes} for t in paper[pipe]]
        assert {k: v for k, v in tiny[split].dataset.items() if k != 'pipeline'} == \
            {k: v for k, v in paper[split].dataset.items() if k != 'pipeline'}
    crop = [t for t in tiny.train_pipeline if t.type == 'RandomCrop'][0].crop_size
    assert tuple(crop) == tuple(tiny.crop_size) == tuple(tiny.model.data_preprocessor.size)
    assert tiny.model.decode_head.num_classes == paper.model.decode_head.num_classes
    assert tiny.optim_wrapper.paramwise_cfg == paper.optim_wrapper.paramwise_cfg
    assert tiny.train_cfg.max_iters == tiny.max_iters == 16 and tiny.env_cfg.dist_cfg.backend == 'gloo'
