"""Mask R-CNN, ViTDet ViT-B/16, COCO 100 epochs (Detectron2 ViTDet
``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py``, with the suite's backbone).

Train:  python -m detection.train_net --num-gpus 8 \
            --config-file detection/configs/mask_rcnn_vitdet_b_100ep.py \
            train.init_checkpoint=/path/to/pretrain_checkpoint.pth
Data: Detectron2's ``coco_2017_{train,val}`` under ``$DETECTRON2_DATASETS/coco``.
"""
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detection.layer_decay import vitdet_param_groups

from .common.coco_loader_lsj import dataloader
from .common.mask_rcnn_vitdet import model

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True  # CUDA only; train_net turns it off on CPU
train.ddp.fp16_compression = True
# Any pretraining checkpoint: this suite's, reference DropPos / MAE / AdPE, timm ViT weights.
train.init_checkpoint = ""

# Schedule: 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],  # 88.9% and 96.3% of training
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,  # 250 iterations, linear from 0.001 x lr
    warmup_factor=0.001,
)

# Optimizer: AdamW with layer-wise lr decay 0.7 over the 12 blocks. Detectron2 v0.6's
# common/optim.py has only SGD and its parameter builder no lr_factor_func, hence our own.
optimizer = L(torch.optim.AdamW)(
    params=L(vitdet_param_groups)(
        # params.model is set to the model object by train_net before instantiation.
        base_lr="${..lr}",
        lr_decay_rate=0.7,
        num_layers=12,
        weight_decay_norm=0.0,
        overrides={"pos_embed": {"weight_decay": 0.0}},
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
