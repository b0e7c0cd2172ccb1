# Paper Table 4: UperNet + AbSViT-B, ade20k, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
_base_ = [
    '../_base_/models/upernet_absvit-b16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/adamw_poly.py',
]
crop_size = (512, 512)
max_iters = 160000
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    # whole-image inference; for a sliding window: test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341))
    test_cfg=dict(mode='whole'))
# mmengine's schedulers reach their end value at iteration end - 1, hence 1501 and max_iters + 1:
# lr_i = 6e-5 * (1 - i / max_iters) * (1e-6 + (1 - 1e-6) * min(i / 1500, 1)), the release's curve
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters // 10)
default_hooks = dict(checkpoint=dict(interval=max_iters // 10))
