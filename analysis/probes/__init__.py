"""Probes of frozen encoders: any checkpoint as a frozen suite ViT (``backbone``), the position probe, the §4.3 pretrained-vs-fine-tuned probe."""
