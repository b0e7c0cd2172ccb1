# UperNet on ViT-B/16, the bottom-up twin of AbSViT-B (the paper's baseline): same blocks, no top-down pass.
_base_ = ['./upernet_absvit-b16.py']
model = dict(backbone=dict(top_down=False))
