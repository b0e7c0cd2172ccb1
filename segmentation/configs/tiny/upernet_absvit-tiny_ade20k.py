# What the tests train on CPU: the ade20k paper config with a 4-block, 64-wide AbSViT, a small UperNet
# and 64x64 crops, 2 images a batch (BN in the pool-scale-1 branch needs two), a few
# iterations. Point it at data with --data-root D.
_base_ = ['../absvit/upernet_absvit-b16_8xb2-160k_ade20k-512x512.py']
crop_size = (64, 64)
max_iters = 16
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0),
    # no dropout: then a resumed run draws the same random numbers as an uninterrupted one
    # and the loss averaged over labelled pixels only, so that crops with more padding do not look better
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=32, dropout_ratio=0.0,
                     loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(in_channels=64, channels=16, dropout_ratio=0.0, loss_decode=dict(avg_non_ignore=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=5e-3))  # a small model from scratch learns fast
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4, max_keep_ckpts=5))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
