"""Classification transfer: fine-tuning and linear probing of any pretrained ViT of the suite.

- ``classification.finetune``: DropPos / MAE ImageNet-1K fine-tuning recipe
  (``run(cfg)``, ``load_finetune_config``, ``python -m classification.finetune``);
- ``classification.linear_probe``: MAE linear-probing protocol, with a cached-feature
  fast path (``run(cfg)``, ``load_probe_config``, ``python -m classification.linear_probe``);
- ``classification.load``: any checkpoint format -> classifier, with a load report;
- ``classification.layer_decay``: layer-wise lr decay groups (timm's).

Recipes live in ``classification/configs`` (``finetune_default.yaml`` and
``linear_probe_default.yaml`` hold every key). Each run writes
``<output_dir>/classification_metrics.json``.
"""
