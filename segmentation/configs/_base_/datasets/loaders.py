# What every dataset of these configs shares: mmseg's standard loaders (2 images per GPU for training on an
# infinite shuffled stream, 1 for evaluation in order) and mIoU. A dataset config inherits this and sets
# only its `dataset=dict(...)` and pipelines.
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
