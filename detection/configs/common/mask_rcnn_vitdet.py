"""Mask R-CNN with a ViTDet backbone (ViT-B/16 sizes), after Detectron2's ViTDet
``configs/common/models/mask_rcnn_vitdet.py``: the model zoo's Mask R-CNN FPN with its
backbone replaced by the suite's windowed ViT + Simple Feature Pyramid, LN in the ROI
heads, two convs in the RPN head and a 4conv1fc box head."""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from detection.feature_pyramid import LayerNorm2d, SimpleFeaturePyramid
from detection.windowed_vit import ViTDetEncoder
from pretrain.models import vit

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

# The pretraining's input normalisation: ImageNet mean / std on 0-255 RGB.
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"

model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViTDetEncoder)(  # single-scale ViT, stride 16
        img_size=1024,  # 64 x 64 grid: sizes the global blocks' relative tables (127 rows)
        pretrain_img_size=224,  # the checkpoint's 197-row position table, resized per input
        patch_size=16,
        **vit.VIT_SIZES["base"],  # ViT-B: 768 wide, 12 blocks, 12 heads
        mlp_ratio=4.0,
        drop_path_rate=0.1,
        window_size=14,  # 14 x 14 windows (27-row relative tables)
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],  # global attention in 2, 5, 8, 11
        use_rel_pos=True,
    ),
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0, 0.5),  # strides 4, 8, 16, 32 -> p2..p5
    top_block=L(LastLevelMaxPool)(),  # p6 at stride 64
    norm="LN",
    square_pad=1024,
)

# Detectron2's "LN" (v0.6 has none): channel LayerNorm in the ROI heads' convs.
model.roi_heads.box_head.conv_norm = LayerNorm2d
model.roi_heads.mask_head.conv_norm = LayerNorm2d

# 2 convs in the RPN head.
model.proposal_generator.head.conv_dims = [-1, -1]

# 4conv1fc box head.
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
