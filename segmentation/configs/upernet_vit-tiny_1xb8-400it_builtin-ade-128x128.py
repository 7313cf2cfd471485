# CPU smoke recipe: a 4-block tiny ViT (192 wide) + small UperNet on the built-in
# ADE20K-format data (pretrain/data/synthetic.py: 12 classes sky, ground + 10 shapes,
# 200 train / 50 val images of 160-224 px) at about native scale (short side 192), 128 px
# crops, 400 iterations, batch 8, a 32-channel UperNet, trained from scratch on CPU.
# The -p8 variant matches the tiny pretraining recipes (patch 8, 12 blocks) for `--checkpoint`.
_base_ = [
    '_base_/models/upernet_droppos_vit.py',
    '_base_/datasets/ade20k.py',
    '_base_/default_runtime.py',
    '_base_/schedules/schedule_160k.py',
]
crop_size = (128, 128)
num_classes = 12
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny', depth=4, img_size=128, out_indices=(0, 1, 2, 3), drop_path_rate=0.1, pretrained=None),
    neck=dict(embed_dim=192, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[192, 192, 192, 192], channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=16, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(85, 85)))

# built-in data: labels 1..12 on disk (0 = unlabelled outline band) -> 0..11 and 255
data_root = 'data/builtin/ade20k/ADEChallengeData2016'
metainfo = dict(
    classes=('sky', 'ground', 'circle', 'square', 'triangle', 'star', 'hexagon', 'cross',
             'diamond', 'ellipse', 'arrow', 'pentagon'),
    palette=[[110, 160, 230], [120, 100, 60], [205, 40, 35], [35, 70, 205], [235, 200, 35],
             [245, 130, 20], [130, 45, 170], [215, 45, 150], [35, 190, 200], [245, 150, 185],
             [45, 45, 55], [150, 215, 40]])
# ADE20K's pipelines (_base_/datasets/ade20k.py) at this data's scale and crop
train_pipeline = _base_.train_pipeline
assert [t.type for t in train_pipeline[2:4]] == ['RandomResize', 'RandomCrop']
train_pipeline[2].update(scale=(768, 192), ratio_range=(0.75, 1.5))
train_pipeline[3].crop_size = crop_size
test_pipeline = _base_.test_pipeline
assert test_pipeline[1].type == 'Resize'
test_pipeline[1].scale = (768, 192)
builtin_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
               seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    dataset=dict(builtin_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    dataset=dict(builtin_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 400
# a fixed seed (weights, crops, data order): the CPU figures in segmentation/README.md repeat
randomness = dict(seed=0)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(num_layers=4, decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=40, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
