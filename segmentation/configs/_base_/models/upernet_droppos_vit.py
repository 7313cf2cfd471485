# UperNet on the suite's ViT-B/16 (MMSeg's MAE-UperNet recipe, BEiT-style backbone).
# The backbone is segmentation.backbone.DropPosViT (timm parameter names); neck and
# heads are MMSeg's own. Numbers follow mae-base_upernet_8xb2-amp-160k_ade20k-512x512.
custom_imports = dict(
    imports=['segmentation.backbone', 'segmentation.layer_decay', 'segmentation.metrics_hook'],
    allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)  # MMEngine reverts it to BN without DDP
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics in 0-255 RGB
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='DropPosViT',
        arch='base',  # 768 wide, 12 blocks, 12 heads
        img_size=512,
        patch_size=16,
        out_indices=(3, 5, 7, 11),
        drop_path_rate=0.1,
        init_values=1.0,  # layer scale
        use_rel_pos=True,  # zero-initialised relative position table per block
        final_norm=False,
        pretrained=None),  # any suite / reference DropPos / MAE / AdPE checkpoint
    # stride-16 maps -> strides 4, 8, 16, 32 (deconv x2 twice, deconv, identity, max-pool)
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,  # the stride-16 level
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # 512 windows with stride 341 (= 2/3 overlap rounded down), logits averaged
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
