"""DropPos ablation sweeps: axes over the pretraining config, their stage list, their tables."""
