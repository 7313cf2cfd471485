"""Mask R-CNN, ViTDet ViT-Tiny, on the built-in synthetic COCO data: trains and evaluates on a
CPU in minutes. The ViT-B recipe scaled down: the suite's tiny pretraining backbone (ViT-Tiny,
8 px patches, pretrained at 64 px), 128 px LSJ, 4 images per iteration, 300 iterations.

    python -m detection.train_net --config-file detection/configs/mask_rcnn_vitdet_tiny_builtin.py \
        train.init_checkpoint=outputs/demo/droppos_vit_tiny/checkpoint-last.pth

The data (``data/builtin/coco``) is generated on first use (``pretrain.data.synthetic``).
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detection.datasets import builtin_coco
from pretrain.models import vit

from .mask_rcnn_vitdet_b_100ep import dataloader, model, optimizer, train

image_size = 128
data_root = "data/builtin"

# ViT-Tiny with 8 px patches (16 x 16 grid at 128 px), 8 x 8 windows, global 2, 5, 8, 11.
model.backbone.net.update(
    img_size=image_size, pretrain_img_size=64, patch_size=8, window_size=8, **vit.VIT_SIZES["tiny"]
)
model.backbone.scale_factors = (2.0, 1.0, 0.5, 0.25)  # stride 8 -> 4, 8, 16, 32 (+ p6 at 64)
model.backbone.square_pad = image_size
# Heads of the same structure (2-conv RPN, 4conv1fc box head, 4-conv mask head, LN) but
# narrower: at 256 channels their convolutions cost a CPU ~10 s per iteration.
width, fc_width = 64, 256
model.backbone.out_channels = width
model.proposal_generator.head.in_channels = width
model.roi_heads.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
model.roi_heads.box_head.conv_dims = [width] * 4
model.roi_heads.box_head.fc_dims = [fc_width]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=fc_width)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=width, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [width] * 5  # 4 convs + the upsampling deconv
# Objects are 20-60 px at this scale: anchors one octave smaller than COCO's.
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.post_nms_topk = (500, 100)
model.roi_heads.batch_size_per_image = 128
model.roi_heads.num_classes = 10  # the built-in classes
model.roi_heads.box_predictor.test_topk_per_image = 20

# The common LSJ (flip, ResizeScale, FixedSizeCrop; test ResizeShortestEdge) at 128 px, with a
# milder scale range than COCO's 0.1-2.0 for a 300-iteration run.
dataloader.train.dataset.names = L(builtin_coco)(root=data_root, split="train")
assert [a._target_ for a in dataloader.train.mapper.augmentations[1:]] == [T.ResizeScale, T.FixedSizeCrop]
dataloader.train.mapper.augmentations[1].update(
    min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size
)
dataloader.train.mapper.augmentations[2].crop_size = (image_size, image_size)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = L(builtin_coco)(root=data_root, split="val")
dataloader.test.mapper.augmentations[0].update(short_edge_length=image_size, max_size=image_size)
dataloader.test.num_workers = 1
dataloader.evaluator.dataset_name = L(builtin_coco)(root=data_root, split="val")

train.max_iter = 300
train.amp.enabled = False
train.device = "cpu"
train.eval_period = 300
train.log_period = 20
train.checkpointer.period = 300
train.output_dir = "outputs/detection/mask_rcnn_vitdet_tiny_builtin"

optimizer.lr = 2e-4
optimizer.params.num_layers = 12
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[267, 289],  # ViTDet's 88.9% and 96.3% of training
        num_updates=train.max_iter,
    ),
    warmup_length=25 / train.max_iter,
    warmup_factor=0.001,
)
