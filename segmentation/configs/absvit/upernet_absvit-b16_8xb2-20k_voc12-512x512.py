# Paper Table 4: UperNet + AbSViT-B, PASCAL VOC 2012, 512x512 crops, 20k iterations, 8 GPUs x 2 images.
_base_ = ['../_base_/models/upernet_absvit-b16.py', '../_base_/datasets/pascal_voc12.py',
          '../_base_/default_runtime.py', '../_base_/schedules/adamw_poly_20k.py']
data_preprocessor = dict(size=_base_.crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
