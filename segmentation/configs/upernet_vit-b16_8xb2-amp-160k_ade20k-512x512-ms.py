# Multi-scale (0.5-1.75 x 6) + flip test of the ViT-B/16 model; training is unchanged.
# segmentation/test.py wraps the model in `tta_model` when the config defines it.
_base_ = './upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py'
tta_model = dict(type='SegTTAModel')
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
