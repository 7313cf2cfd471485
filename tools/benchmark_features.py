"""Feature-pass benchmark: what the shared, exact feature cache saves the three frozen-feature probes.

Without the cache the linear probe, k-NN and the attentive probe each encode both splits
(three passes per backbone); with it the first one stores the encoder's whole output
sequence and the other two read their view of it (one pass). Both are measured in one
process, one thread, on the same encoder and data (the demo's: ViT-Ti/8 at 64 px on the
built-in 1000 + 200 images, generated on first use), and every cached view is checked to
be bit-identical to its own uncached pass.

    python -m tools.benchmark_features                         (random ViT-Ti/8, data/builtin)
    python -m tools.benchmark_features --checkpoint outputs/demo/mae/pretrain/backbone.pth --threads 1
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

PROBES = (("linear_probe", "pooled"), ("knn", "pooled"), ("attentive_probe", "patch_tokens"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("feature-pass benchmark: three probes with and without the shared cache")
    p.add_argument("--data", default="data/builtin", help="built-in data root (generated if missing)")
    p.add_argument("--checkpoint", default=None, help="weights of the encoder (default: a random ViT-Ti/8)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=100, help="images per forward pass (the demo recipes: 100)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    from classification.data import eval_dataset
    from classification.features import encode_dataset, frozen_encoder
    from classification.knn import load_knn_config
    from classification.runs import read_checkpoint
    from pretrain.data.synthetic import make_builtin_dataset

    torch.set_num_threads(args.threads)
    make_builtin_dataset(Path(args.data), formats=("imagefolder",))
    cfg = load_knn_config("knn_vit_tiny_builtin", [f"data.path={Path(args.data) / 'imagenet'}",
                                                    f"checkpoint={args.checkpoint or 'none'}"])
    splits = {s: eval_dataset(cfg, s) for s in ("train", "val")}
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        encoder, _ = frozen_encoder(cfg, read_checkpoint(cfg), 10, Path(tmp), "bench", cpu)
        kw = dict(batch_size=args.batch, device=cpu, precision="fp32", checkpoint=args.checkpoint, tag="bench")

        def probe_passes(cache: str | None) -> tuple[list[float], list[float], dict]:
            wall, cpu_s, out = [], [], {}
            for probe, view in PROBES:
                t0, c0 = time.perf_counter(), time.process_time()
                out[probe] = {s: encode_dataset(encoder, ds, view=view, cache_dir=cache, **kw) for s, ds in splits.items()}
                wall.append(time.perf_counter() - t0)
                cpu_s.append(time.process_time() - c0)
            return wall, cpu_s, out

        plain, plain_cpu, plain_out = probe_passes(None)
        cached, cached_cpu, cached_out = probe_passes(str(Path(tmp) / "cache"))
    plain_total, cached_total = sum(plain), sum(cached)
    same = all(torch.equal(plain_out[p][s].features, cached_out[p][s].features) for p, _ in PROBES for s in splits)
    images = sum(len(ds) for ds in splits.values())
    names = [p for p, _ in PROBES]
    figures = {"images_per_pass": images, "threads": args.threads, "bit_identical": same,
               "uncached_wall_s": dict(zip(names, plain)), "cached_wall_s": dict(zip(names, cached)),
               "uncached_cpu_s": dict(zip(names, plain_cpu)), "cached_cpu_s": dict(zip(names, cached_cpu)),
               "saved_wall_s": plain_total - cached_total, "saved_cpu_s": sum(plain_cpu) - sum(cached_cpu)}
    print(f"{'probe':<16}{'uncached wall s':>16}{'cached wall s':>14}{'uncached CPU s':>16}{'cached CPU s':>14}")
    for probe, a, b, c, d in zip(names, plain, cached, plain_cpu, cached_cpu):
        print(f"{probe:<16}{a:>16.1f}{b:>14.1f}{c:>16.1f}{d:>14.1f}")
    print(f"{'total':<16}{plain_total:>16.1f}{cached_total:>14.1f}{sum(plain_cpu):>16.1f}{sum(cached_cpu):>14.1f}")
    print(f"saved per backbone: {figures['saved_wall_s']:.1f} s wall, {figures['saved_cpu_s']:.1f} s CPU "
          f"({images} images a pass, {args.threads} thread(s)); cached == uncached bit for bit: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
