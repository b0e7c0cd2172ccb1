# Paper Table 4: UperNet + ViT-B, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images: the AbSViT-B run
# with the top-down pass off (its bottom-up twin: the same blocks, no feedback).
_base_ = ['../absvit/upernet_absvit-b16_8xb2-160k_ade20k-512x512.py']
model = dict(backbone=dict(top_down=False))
