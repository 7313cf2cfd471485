# UperNet + ViT-L/16 on ADE20K: the ViT-B recipe with the large encoder (1024 wide, 24 blocks),
# outputs from the end of each quarter (7, 11, 15, 23) and layer decay over 24 blocks.
# MAE ViT-L reaches 53.6 mIoU with this protocol (MAE paper).
_base_ = './upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='large',
        out_indices=(7, 11, 15, 23),
        pretrained='checkpoints/droppos_vit-l16_800ep.pth'),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24))
