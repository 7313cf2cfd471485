"""Mask R-CNN, ViTDet ViT-Tiny, on the built-in synthetic COCO data: trains and evaluates on a
CPU in a minute. The ViT-B recipe scaled down: the suite's tiny pretraining backbone (ViT-Tiny,
8 px patches, pretrained at 64 px), 96 px LSJ, 4 images per iteration, 150 iterations, with
heads and sampling sized for two objects per image so that AP leaves zero within the demo's
budget (profile and figures: detection/README.md).

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

image_size = 96
data_root = "data/builtin"

# ViT-Tiny with 8 px patches (12 x 12 grid at 96 px), 6 x 6 windows, global 2, 5, 8, 11. At 96 px
# instead of 128 the backbone costs about half (the objects, 30-100 px in 160-256 px images,
# stay 13-42 px).
model.backbone.net.update(
    img_size=image_size, pretrain_img_size=64, patch_size=8, window_size=6, **vit.VIT_SIZES["tiny"]
)
model.backbone.scale_factors = (2.0, 1.0, 0.5, 0.25)  # stride 8 -> 4, 8, 16, 32 (+ p6 at 64)
model.backbone.square_pad = image_size
# Narrower heads (at 256 channels their convolutions cost a CPU ~10 s per iteration): 64-wide
# pyramid, 2-conv RPN, 4-conv mask head with LN as ViTDet; the box head is the classic 2fc
# (Detectron2's FPN default): the 4 LN convs cost more and start slower in a short run.
width, fc_width = 64, 256
model.backbone.out_channels = width
model.proposal_generator.head.in_channels = width
model.roi_heads.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [fc_width, fc_width]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=fc_width)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=width, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [width] * 5  # 4 convs + the upsampling deconv
# Two anchor sizes per level (half an octave apart, one octave smaller than COCO's) and RPN
# positives from IoU 0.5: with one size and IoU 0.7 an image of two objects had ~3 positive
# anchors and the RPN barely learned in 100 iterations; now ~20.
model.proposal_generator.anchor_generator.sizes = [[s, s * 3 // 2] for s in (12, 24, 48, 96, 192)]
model.proposal_generator.head.num_anchors = 2 * 3  # sizes x aspect ratios (0.5, 1, 2)
model.proposal_generator.anchor_matcher.thresholds = [0.3, 0.5]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (200, 100)
# 8 sampled ROIs per image, up to half foreground: with 128 at a quarter, the ~2 objects of an
# image drowned in background and the classifier stayed at "background" (box AP 0 after 100
# iterations; 16 ROIs: 3.8, 8: 4.5).
model.roi_heads.batch_size_per_image = 8
model.roi_heads.positive_fraction = 0.5
model.roi_heads.num_classes = 10  # the built-in classes
model.roi_heads.box_predictor.test_topk_per_image = 20

# The common LSJ (flip, ResizeScale, FixedSizeCrop; test ResizeShortestEdge) at 96 px, with a
# milder scale range than COCO's 0.1-2.0 for a run of a few hundred iterations.
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

train.max_iter = 150
train.amp.enabled = False
train.device = "cpu"
train.eval_period = 150
train.log_period = 10
train.checkpointer.period = 150
train.output_dir = "outputs/detection/mask_rcnn_vitdet_tiny_builtin"

# lr 1e-3 (2e-4 left AP at 0 after 100 iterations, 2e-3 reached 1.4 against 3.8 at 1e-3) and
# layer decay 0.8 (ViT-L's; 0.7 leaves the first blocks of a few-epoch backbone at 1 % of the lr).
optimizer.lr = 1e-3
optimizer.params.lr_decay_rate = 0.8
optimizer.params.num_layers = 12
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[133, 144],  # ViTDet's 88.9% and 96.3% of training
        num_updates=train.max_iter,
    ),
    warmup_length=25 / train.max_iter,
    warmup_factor=0.1,  # ViTDet's 0.001 spends a short run's warm-up at no lr
)
