# What the tests train on CPU with a top-down backbone that is not a ViT: the tiny ADE20K run
# (upernet_absvit-tiny_ade20k.py: 16 iterations, 2 images a batch, 64x64 crops) with a micro AbS-RVT built
# by its zoo name, two stages as RVT-Ti has (2 blocks at 32 channels and stride 16, 1 block at 64 channels
# and stride 32, every block reported). model.backbone.top_down=False gives its bottom-up twin, RVT.
_base_ = ['./upernet_absvit-tiny_ade20k.py']
model = dict(
    backbone=dict(_delete_=True, type='ZooBackbone', model='absrvt_tiny', top_down=True, out_indices=(0, 1, 2),
                  model_kwargs=dict(img_size=64, base_dims=[16, 16], depth=[2, 1], heads=[2, 4], drop_path_rate=0.0),
                  init_cfg=dict(type='Pretrained', checkpoint=None)),
    decode_head=dict(in_channels=[32, 32, 64], in_index=[0, 1, 2]),
    auxiliary_head=dict(in_channels=64, in_index=2))
