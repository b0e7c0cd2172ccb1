# UperNet on AbSViT-B/16 (the release's segmentation model): the backbone gives the top-down pass's
# blocks 2, 5, 8, 11 (prior = learned prompt, alpha 1; no variational loss), no neck. A run sets the
# classes and the crop (data_preprocessor's size); top_down=False gives the bottom-up twin, ViT-B.
custom_imports = dict(imports=['segmentation'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='AbSViTBackbone', top_down=True,
        # ViT-B/16 at 512, the release's drop path and the blocks whose maps UperNet reads
        img_size=512, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
        drop_path_rate=0.1, out_indices=(2, 5, 8, 11),
        # the classification checkpoint to start from: --backbone-checkpoint PATH of train.py, or
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    neck=None,
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # whole-image inference; for a sliding window: test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341))
    test_cfg=dict(mode='whole'))
