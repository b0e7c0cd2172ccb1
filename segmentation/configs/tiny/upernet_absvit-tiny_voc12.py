# What the tests train on CPU: the PASCAL VOC paper run at toy size (the tiny UperNet-AbSViT of
# _base_/models/, 16 iterations), 2 images a batch (BN in the pool-scale-1 branch needs two) and
# 64x64 crops of images resized to (128, 64). Point it at data with --data-root D.
_base_ = ['../_base_/models/upernet_absvit-tiny.py', '../_base_/datasets/pascal_voc12.py',
          '../_base_/cpu_runtime.py', '../_base_/schedules/adamw_poly_16it.py']
crop_size = (64, 64)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
# the dataset's standard pipelines (_base_/datasets/), the images resized to a smaller scale and cropped to crop_size
train_pipeline = [dict(t, scale=(128, 64)) if 'scale' in t else dict(t, crop_size=crop_size) if 'crop_size' in t else t
                  for t in _base_.train_pipeline]
test_pipeline = [dict(t, scale=(128, 64)) if 'scale' in t else t for t in _base_.test_pipeline]
train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
