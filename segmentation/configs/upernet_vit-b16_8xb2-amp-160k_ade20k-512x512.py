# UperNet + ViT-B/16 on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images, AMP.
# Recipe of MMSeg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512 (MAE ViT-B: 48.13 mIoU),
# on the suite's backbone. Pretrained weights: any suite pretraining checkpoint or the
# reference DropPos / MAE / AdPE release (set here or with `train.py --checkpoint`).
_base_ = [
    '_base_/models/upernet_droppos_vit.py',
    '_base_/datasets/ade20k.py',
    '_base_/default_runtime.py',
    '_base_/schedules/schedule_160k.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),  # pad training batches to the crop
    backbone=dict(pretrained='checkpoints/droppos_vit-b16_800ep.pth'))
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16
