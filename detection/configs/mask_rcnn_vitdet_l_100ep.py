"""Mask R-CNN, ViTDet ViT-L/16, COCO 100 epochs: the ViT-B recipe with a 24-block, 1024-wide
encoder, global attention in blocks 5, 11, 17, 23, drop path 0.4 and layer decay 0.8 (Detectron2
ViTDet ``mask_rcnn_vitdet_l_100ep.py``)."""
from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
# 5, 11, 17, 23 for global attention
model.backbone.net.window_block_indexes = (
    list(range(0, 5)) + list(range(6, 11)) + list(range(12, 17)) + list(range(18, 23))
)

optimizer.params.lr_decay_rate = 0.8
optimizer.params.num_layers = 24
