# 160k iterations, AdamW with layer-wise lr decay, AMP; 1500 linear warmup iterations then
# poly (power 1) to 0. lr 1e-4 is for a total batch of 16 (8 GPUs x 2).
optim_wrapper = dict(
    type='AmpOptimWrapper',  # segmentation/train.py swaps in OptimWrapper when CUDA is absent
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViTLayerDecayOptimizerConstructor',
    # add no_decay_rule='mmseg' for MMSeg's own rule (cls_token, pos_embed, relative tables decayed at 0.05)
    paramwise_cfg=dict(num_layers=12, decay_rate=0.65))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
