# Paper Table 4: UperNet + AbSViT-B, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
_base_ = ['../_base_/models/upernet_absvit-b16.py', '../_base_/datasets/ade20k.py',
          '../_base_/default_runtime.py', '../_base_/schedules/adamw_poly_160k.py']
data_preprocessor = dict(size=_base_.crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=150),
             auxiliary_head=dict(num_classes=150))
