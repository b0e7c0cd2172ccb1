# Paper Table 4: UperNet + AbSViT-B, Cityscapes, 512x1024 crops, 40k iterations, 8 GPUs x 2 images.
_base_ = ['../_base_/models/upernet_absvit-b16.py', '../_base_/datasets/cityscapes.py',
          '../_base_/default_runtime.py', '../_base_/schedules/adamw_poly_40k.py']
data_preprocessor = dict(size=_base_.crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=19),
             auxiliary_head=dict(num_classes=19))
