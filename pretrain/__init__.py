"""droppos.pretrain: one ViT and the DropPos, MAE and AdPE pretraining methods around it."""
