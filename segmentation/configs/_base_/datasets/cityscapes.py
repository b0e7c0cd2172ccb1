# Cityscapes (leftImg8bit + gtFine *_labelTrainIds.png, 19 classes), mmseg's standard 512x1024
# pipelines; 2 images per GPU.
_base_ = ['./loaders.py']
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
crop_size = (512, 1024)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(
    type=dataset_type, data_root=data_root, pipeline=train_pipeline,
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train')))
val_dataloader = dict(dataset=dict(
    type=dataset_type, data_root=data_root, pipeline=test_pipeline,
    data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')))
test_dataloader = val_dataloader
