"""Training recipes, one per ``--data-set``: the single source of the per-dataset settings.

``main.py`` fills every recipe flag left unset (by the command line or a ``--config`` file) from
``RECIPES[args.data_set]``; ``benchmarks/data_loading.py`` and ``demo/controllability.py`` read the same
recipes, and the files in ``configs/`` only say what differs from them. Keys are flag names (``dest``).
"""
from typing import Any, Dict

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'IMAGENET_RECIPE', 'FMNIST_RECIPE', 'MULTILABEL_RECIPE', 'FMNIST_ML_RECIPE',
           'RECIPES', 'RECIPE_KEYS', 'recipe']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The paper's ImageNet recipe (Appendix C / the release's main.py, i.e. DeiT's); FOLDER uses it too.
IMAGENET_RECIPE: Dict[str, Any] = dict(
    model='absvit_small_patch16_224', batch_size=128, epochs=300,
    opt='adamw', lr=5e-4, weight_decay=0.05, sched='cosine', sched_on_updates=False,
    warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
    drop_path=0.1, smoothing=0.1, mixup=0.8, cutmix=1.0,
    aa='rand-m9-mstd0.5-inc1', color_jitter=0.4, reprob=0.25, train_crop='rrc', crop_padding=4, hflip=0.5,
    repeated_aug=True, model_ema=True, model_ema_decay=0.99996, amp='fp16',
    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), crop_pct=0.875,
    num_workers=10, loss='ce', lr_base_size=512, cutout=0.0, early_stop=0,
)
#: The default job: a 4-block, 64-wide AbSViT on Fashion-MNIST, on a 2-core CPU in under 10 minutes. Tuned for
#: that budget (3 epochs: 7-9.5 min, depending on the torch build): no augmentation (the model underfits),
#: label smoothing 0.1, a short warm-up. 4 epochs reach 87% but take 10 minutes or more.
FMNIST_RECIPE: Dict[str, Any] = dict(
    model='absvit_micro_patch4_28_gap', batch_size=64, epochs=3,
    opt='adamw', lr=1.6e-2, weight_decay=0.05, sched='cosine', sched_on_updates=True,  # lr 2e-3 at batch 64
    warmup_epochs=0.25, warmup_lr=1e-6, min_lr=1e-5,
    drop_path=0.0, smoothing=0.1, mixup=0.0, cutmix=0.0,
    aa='none', color_jitter=0.0, reprob=0.0, train_crop='pad', crop_padding=0, hflip=0.0,
    repeated_aug=False, model_ema=False, model_ema_decay=0.999, amp='none',
    mean=None, std=None, crop_pct=None,  # from the model's pretrained_cfg (Fashion-MNIST statistics)
    num_workers=0, loss='ce', lr_base_size=512, cutout=0.0, early_stop=0,
)
#: Multi-label recognition as the IDA release runs it on MS-COCO 2014 / VOC 2007 (its README command): IDA-heavy on
#: ResNet-101 at 448 px, 4 GPUs x 32 images, MultiLabelSoftMarginLoss summed over the batch, Adam with L2 1e-4 on
#: weights only (not biases/norms), a OneCycle schedule to lr 1e-4 (not scaled with the batch) with 20% warm-up,
#: 80 epochs with early stop after 8 without improvement, EMA 0.9997 (the better of EMA/plain is kept), fp16 AMP,
#: cutout of half the side + RandAugment, no mixup, no flip. Add ``pretrained: true`` for the ImageNet backbone.
MULTILABEL_RECIPE: Dict[str, Any] = dict(
    model='ida_heavy_resnet101', batch_size=32, epochs=80,
    opt='adam', lr=1e-4, weight_decay=1e-4, sched='onecycle', sched_on_updates=True,
    warmup_epochs=0, warmup_lr=1e-6, min_lr=0.0,
    drop_path=0.0, smoothing=0.0, mixup=0.0, cutmix=0.0,
    aa='rand-m10-n2', color_jitter=0.0, reprob=0.0, train_crop='pad', crop_padding=0, hflip=0.0,
    repeated_aug=False, model_ema=True, model_ema_decay=0.9997, amp='fp16',
    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), crop_pct=1.0,
    num_workers=8, loss='multilabel_soft_margin', lr_base_size=0, cutout=0.5, early_stop=8,
)
#: The offline multi-label task (canvases of 2-4 Fashion-MNIST items, 64 px): the same objective and optimiser,
#: a small IDA-light on timm's 0.37M-parameter test ResNet, a few CPU epochs, no augmentation or EMA.
FMNIST_ML_RECIPE: Dict[str, Any] = dict(
    MULTILABEL_RECIPE, model='ida_light_test_resnet', batch_size=32, epochs=4, lr=2e-3, aa='none', cutout=0.0,
    model_ema=False, amp='none', mean=None, std=None, num_workers=0, early_stop=0,
)
RECIPES: Dict[str, Dict[str, Any]] = {'IMNET': IMAGENET_RECIPE, 'FOLDER': IMAGENET_RECIPE, 'FMNIST': FMNIST_RECIPE,
                                      'COCO2014': MULTILABEL_RECIPE, 'VOC2007': MULTILABEL_RECIPE,
                                      'FMNIST_ML': FMNIST_ML_RECIPE}
#: The flags a recipe sets (every recipe sets all of them).
RECIPE_KEYS = tuple(FMNIST_RECIPE)


def recipe(data_set: str) -> Dict[str, Any]:
    """A copy of the recipe of ``data_set`` (one of ``RECIPES``)."""
    if data_set not in RECIPES:
        raise KeyError(f'no recipe for --data-set {data_set!r}; recipes: {", ".join(RECIPES)}')
    return {k: list(v) if isinstance(v, list) else v for k, v in RECIPES[data_set].items()}
