# Multi-scale (0.5-1.75 x 6) + flip test of the ViT-L/16 model; training is unchanged.
_base_ = './upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py'
tta_model = dict(type='SegTTAModel')
test_dataloader = dict(dataset=dict(pipeline={{_base_.tta_pipeline}}))
