# Paper Table 4: UperNet + ViT-B, Cityscapes, 512x1024 crops, 40k iterations, 8 GPUs x 2 images: the AbSViT-B run
# with the top-down pass off (its bottom-up twin: the same blocks, no feedback).
_base_ = ['../absvit/upernet_absvit-b16_8xb2-40k_cityscapes-512x1024.py']
model = dict(backbone=dict(top_down=False))
