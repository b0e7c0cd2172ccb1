# UperNet-AbSViT at toy size, what the tests train on CPU: a 4-block, 64-wide AbSViT (patch 8, every block
# reported) under a small UperNet. No dropout: then a resumed run draws the same random numbers as an
# uninterrupted one; and the loss is averaged over labelled pixels only, so that crops with more padding
# do not look better.
_base_ = ['./upernet_absvit-b16.py']
model = dict(
    backbone=dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=32, dropout_ratio=0.0,
                     loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(in_channels=64, channels=16, dropout_ratio=0.0, loss_decode=dict(avg_non_ignore=True)))
