"""One prepared check of every CUDA path of the suite, sized for a short GPU lease.

``tools/gpu_check.sh`` (wrapping ``python -m tools.gpu_check``) runs, each part as a
subprocess under its own time limit: the training-step benchmark rows at ViT-B/16 (bf16,
fp32, fp16, with and without ``torch.compile``), short pretraining runs of DropPos, MAE
and AdPE with a checkpoint and resume, fine-tuning from the result, and a ViTDet
Mask R-CNN run with AMP; then it writes one JSON and a Markdown report. ``--dry-run``
runs the same parts at tiny sizes on the CPU. Modules: ``plan`` (the parts and sizes),
``runner`` (subprocesses, time limits, lanes), ``train_parts`` / ``detection_part`` (the
parts' own entry points), ``summary`` (derived figures and goals), ``tables``
(Markdown, the README block), ``cli``. See docs/gpu_check.md.
"""
