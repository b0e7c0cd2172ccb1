# Paper Table 4: UperNet + ViT-B, PASCAL VOC 2012, 512x512 crops, 20k iterations, 8 GPUs x 2 images: the AbSViT-B run
# with the top-down pass off (its bottom-up twin: the same blocks, no feedback).
_base_ = ['../absvit/upernet_absvit-b16_8xb2-20k_voc12-512x512.py']
model = dict(backbone=dict(top_down=False))
