# The release's optimisation over 160k iterations: AdamW 6e-5, no weight decay on pos_embed, cls_token and
# norms; poly decay (power 1, to 0) over the whole run with a 1500-iteration linear warm-up from 1e-6
# multiplying it (the two schedulers run together from iteration 0, as mmcv 0.x's warm-up did on top of
# poly). Validation and checkpoints every tenth of the run. Shorter runs inherit this and set the length.
max_iters = 160000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
# mmengine's schedulers reach their end value at iteration end - 1, hence 1501 and max_iters + 1:
# lr_i = 6e-5 * (1 - i / max_iters) * (1e-6 + (1 - 1e-6) * min(i / 1500, 1)), the release's curve
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters // 10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters // 10, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
