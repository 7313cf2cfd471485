"""Cost of the online monitors of pretraining (``pretrain.engine.monitors``), measured and projected.

``--part demo`` (measured): a demo pretraining run as the demo runs it (``analysis.reproduce.profiles``:
the recipe, ``DEMO_MONITORS`` and the epochs), in a temporary folder; per measured epoch the epoch's and the
monitor's wall time; the budget is the monitors' total at most 5 % of the epochs' total.

``--part projection`` (projected, for a GPU this machine does not have): one monitor round at
ViT-B/16, 224 px, with a ``--images`` held-out slice and a ``--bank-images`` bank, against one
DropPos pretraining epoch of ``--train-images`` images. Measured here: the forward FLOPs of the
monitor's two passes (fvcore, 2 FLOPs per multiply-add) and DropPos's training FLOPs per image
(``tools.benchmark.training_flops``); the per-core decode + transform rate of the eval and the
pretraining pipelines on ImageNet-sized JPEGs (``tools.benchmark_data.make_large_jpegs``); for
reference, rank 0's parts at full size on this CPU (the position head on 16 tokens per bank image,
RankMe). Assumed: the GPU's dense bf16 peak (``--peak-tflops``, H100 SXM 989) at
``--mfu`` (0.4, the README's goal for training) for both training and monitor passes, and
``--workers`` loader workers per GPU; a pass takes the longer of its compute and its decoding; rank 0's
share (k-NN, RankMe, the position head, on the device) its FLOPs plus 1 ms per head step.

    python -m tools.benchmark_monitors --part demo --json outputs/bench/monitors_demo.json
    python -m tools.benchmark_monitors --part projection --json outputs/bench/monitors_vitb.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tools.bench_cli import run_benchmark_cli

BUDGET = 0.05  # the monitors' share of the pretraining wall time at the demo scale
STEP_FLOOR_S = 1e-3  # projection: at least this per position-head step on a GPU (small kernels, launch-bound)


# --------------------------------------------------------------------------- demo (measured)
def demo(args: argparse.Namespace) -> dict[str, Any]:
    """A demo pretraining run with its monitors: the epochs' and the monitors' wall times."""
    from analysis.reproduce.profiles import PROFILES
    from pretrain.engine.config import load_config
    from pretrain.main import run

    recipe, demo_overrides = PROFILES["demo"]["pretrain"][args.method]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*demo_overrides, f"train.output_dir={tmp}/run", "train.progress=false", "train.tensorboard=false",
                     *args.opts, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
        cfg = load_config(recipe, overrides)
        t0 = time.perf_counter()
        metrics = run(cfg)
        wall = time.perf_counter() - t0
    rows = [{"epoch": h["epoch"], "epoch_seconds": h["seconds"], "monitor_seconds": (h.get("monitor") or {}).get("seconds")}
            for h in metrics["history"]]
    train = sum(r["epoch_seconds"] for r in rows)
    mon = sum(r["monitor_seconds"] or 0.0 for r in rows)
    share = mon / max(train, 1e-9)
    last = metrics["history"][-1].get("monitor") or {}
    return {"part": "demo", "recipe": recipe, "overrides": overrides, "epochs": len(rows),
            "every_epochs": int(cfg.train.monitor.every_epochs), "monitors": list(cfg.train.monitor.monitors),
            "images": last.get("images"), "bank_images": last.get("bank_images"), "rows": rows,
            "train_seconds": train, "monitor_seconds": mon, "share": share, "budget": BUDGET,
            "within_budget": share <= BUDGET, "run_wall_seconds": wall,
            "last_monitor": {k: last.get(k) for k in ("knn_top1", "position_top1", "rankme")},
            "threads": torch.get_num_threads(), "measured": True}


# --------------------------------------------------------------------------- projection
def _monitor_flops(size: str, img: int, patch: int) -> dict[str, float]:
    """Forward FLOPs per image of the monitor's passes (cls features; all tokens with dropped positions)
    and DropPos's training FLOPs per image, at this ViT."""
    from classification.model import encoder_features
    from classification.position_probe import dropped_positions, encode_dropped
    from pretrain.engine.config import load_config
    from pretrain.models import build_method
    from tools.benchmark import count_macs, training_flops

    cfg = load_config("droppos_vit_base_200ep.yaml", [f"model.size={size}", f"model.img_size={img}",
                                                      f"model.patch_size={patch}"])
    method = build_method(cfg).eval()
    x = torch.randn(1, 3, img, img)
    n = method.encoder.num_patches
    dropped = dropped_positions(1, n, float(cfg.droppos.pos_drop_ratio), torch.Generator().manual_seed(0))
    token = method.mask_pos_token.detach()
    plain, _ = count_macs(method.encoder, lambda e, im: encoder_features(e, im), (x,))
    drop, _ = count_macs(method.encoder, lambda e, im, d: encode_dropped(e, token, im, d), (x, dropped))
    train = training_flops("droppos", method, (3, img, img), torch.device("cpu"))
    return {"plain_pass_flops": 2.0 * plain, "dropped_pass_flops": 2.0 * drop,
            "train_flops_per_image": train["train_flops_per_image"], "num_patches": n, "width": method.encoder.embed_dim}


def _decode_rates(count: int, img: int) -> dict[str, float]:
    """Images/s on one core of the eval transform and the pretraining transform on ImageNet-sized JPEGs."""
    from pretrain.data.imagefolder import ImageFolderDataset
    from pretrain.data.synthetic import make_builtin_dataset
    from pretrain.data.transforms import build_eval_transform, build_pretrain_transform
    from tools.benchmark_data import make_large_jpegs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_builtin_dataset(Path(tmp) / "src", formats=("imagefolder",), imagefolder_train_per_class=count // 10 + 1,
                                 imagefolder_val_per_class=1)
            root = make_large_jpegs(Path(tmp) / "src" / "imagenet", Path(tmp) / "large", count)
            rates = {}
            for name, tf in (("eval", build_eval_transform(img)), ("pretrain", build_pretrain_transform(img, normalize=False))):
                ds = ImageFolderDataset(root, "train", transform=tf)
                ds[0]  # warm-up
                t0 = time.perf_counter()
                for i in range(len(ds)):
                    ds[i]
                rates[name] = len(ds) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return rates


def _cpu_parts(bank: int, held: int, width: int, patches: int, tokens: int, steps: int) -> dict[str, float]:
    """Wall seconds of the round's CPU parts at full size: position head (fixed steps) and RankMe."""
    from classification.position_probe import evaluate_position_head, train_position_head
    from pretrain.engine.rankme import rankme

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(bank * tokens, width, generator=g), torch.randint(0, patches, (bank * tokens,), generator=g)
    t0 = time.perf_counter()
    head = train_position_head(x, y, patches, steps=steps, lr=3e-3, weight_decay=1e-4, batch_size=1024, seed=0)
    evaluate_position_head(head, x[: held * tokens], y[: held * tokens], (int(patches ** 0.5),) * 2)
    t1 = time.perf_counter()
    rankme(torch.randn(held, width, generator=g))
    return {"position_head_seconds": t1 - t0, "rankme_seconds": time.perf_counter() - t1}


def projection(args: argparse.Namespace) -> dict[str, Any]:
    flops = _monitor_flops(args.size, args.img_size, args.patch_size)
    rates = _decode_rates(args.jpegs, args.img_size)
    tokens = min(16, int(round(0.75 * flops["num_patches"])))
    cpu = _cpu_parts(args.bank_images, args.images, flops["width"], flops["num_patches"], tokens, args.probe_steps)
    rate = args.peak_tflops * 1e12 * args.mfu  # FLOP/s assumed for training and monitor passes alike
    out: dict[str, Any] = {"part": "projection", "measured": False, "arch": f"vit_{args.size}_patch{args.patch_size}_{args.img_size}",
                           "images": args.images, "bank_images": args.bank_images, "train_images": args.train_images,
                           **flops, "decode_images_per_s_per_core": rates, **cpu,
                           "assumed": {"peak_tflops": args.peak_tflops, "mfu": args.mfu, "workers_per_gpu": args.workers},
                           "worlds": {}}
    monitor_images = args.images + args.bank_images
    d, n = flops["width"], flops["num_patches"]
    # rank 0, on the device: k-NN similarities, RankMe's Gram matrix, the head's steps (3 x forward) and evaluation
    rank0_flops = (2 * args.images * args.bank_images * d + 2 * args.images * d * d
                   + args.probe_steps * 3 * 2 * 1024 * d * n + 2 * args.images * tokens * d * n)
    rank0 = rank0_flops / rate + args.probe_steps * STEP_FLOOR_S
    out.update(rank0_flops=rank0_flops, rank0_s=rank0, step_floor_s=STEP_FLOOR_S)
    for world in (1, 8):
        mon_compute = monitor_images * (flops["plain_pass_flops"] + flops["dropped_pass_flops"]) / rate / world
        mon_decode = monitor_images / (args.workers * rates["eval"]) / world
        train_compute = args.train_images * flops["train_flops_per_image"] / rate / world
        train_decode = args.train_images / (args.workers * rates["pretrain"]) / world
        monitor = max(mon_compute, mon_decode) + rank0
        epoch = max(train_compute, train_decode)
        out["worlds"][world] = {"monitor_compute_s": mon_compute, "monitor_decode_s": mon_decode, "monitor_s": monitor,
                                "epoch_compute_s": train_compute, "epoch_decode_s": train_decode, "epoch_s": epoch,
                                "share": monitor / epoch}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"argv": args.argv}
    if args.part in ("demo", "all"):
        result["demo"] = demo(args)
    if args.part in ("projection", "all"):
        result["projection"] = projection(args)
    return result


def report(result: dict[str, Any]) -> None:
    d = result.get("demo")
    if d:
        print(f"demo ({d['recipe']}, measured, {d['threads']} threads): monitors {', '.join(d['monitors'])} every "
              f"{d['every_epochs']} epoch(s), slice {d['images']} held-out + {d['bank_images']} bank images")
        print("| epoch | epoch s | monitor s |\n|---|---|---|")
        for r in d["rows"]:
            m = r["monitor_seconds"]
            print(f"| {r['epoch']} | {r['epoch_seconds']:.1f} | {'' if m is None else f'{m:.2f}'} |")
        print(f"monitors {d['monitor_seconds']:.1f} s of {d['train_seconds']:.1f} s of pretraining epochs: "
              f"{100 * d['share']:.1f} % (budget {100 * d['budget']:.0f} %: {'met' if d['within_budget'] else 'NOT met'}); "
              f"last values {json.dumps(d['last_monitor'])}")
    p = result.get("projection")
    if p:
        a = p["assumed"]
        print(f"projection ({p['arch']}, PROJECTED, no GPU measured): one round = {p['images']} held-out + "
              f"{p['bank_images']} bank images, 2 passes; epoch = {p['train_images']} images of DropPos")
        print(f"  FLOPs / image: monitor plain pass {p['plain_pass_flops'] / 1e9:.2f} G, dropped-position pass "
              f"{p['dropped_pass_flops'] / 1e9:.2f} G; DropPos training {p['train_flops_per_image'] / 1e9:.2f} G (fvcore)")
        r = p["decode_images_per_s_per_core"]
        print(f"  decode + transform per core (measured here): eval {r['eval']:.0f} img/s, pretraining {r['pretrain']:.0f} img/s")
        print(f"  rank 0 on the GPU (k-NN, RankMe, position head): {p['rank0_flops'] / 1e9:.0f} GFLOPs + "
              f"{1e3 * p['step_floor_s']:.0f} ms per head step = {p['rank0_s']:.1f} s (on this CPU, measured: head "
              f"{p['position_head_seconds']:.1f} s, RankMe {p['rankme_seconds']:.1f} s)")
        print(f"  assumed: {a['peak_tflops']:.0f} TFLOP/s peak at {a['mfu']:.0%} for every pass, "
              f"{a['workers_per_gpu']} loader workers per GPU")
        for world, w in p["worlds"].items():
            print(f"  {world} GPU(s): monitor round {w['monitor_s']:.1f} s (compute {w['monitor_compute_s']:.1f} s, "
                  f"decode {w['monitor_decode_s']:.1f} s, + rank 0) per epoch of {w['epoch_s']:.0f} s "
                  f"(compute {w['epoch_compute_s']:.0f} s, decode {w['epoch_decode_s']:.0f} s): {100 * w['share']:.1f} %")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("online-monitor cost benchmark")
    p.add_argument("--part", choices=("demo", "projection", "all"), default="all")
    p.add_argument("--method", choices=("droppos", "mae", "adpe"), default="droppos",
                   help="demo: whose pretraining (the demo profile's recipe and overrides)")
    p.add_argument("--epochs", type=int, default=0, help="demo: override train.epochs (0: the demo's)")
    p.add_argument("--size", default="base")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--images", type=int, default=10000, help="projection: held-out slice")
    p.add_argument("--bank-images", type=int, default=10000, help="projection: bank (training split)")
    p.add_argument("--train-images", type=int, default=1281167, help="projection: images per pretraining epoch")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--jpegs", type=int, default=100, help="projection: ImageNet-sized JPEGs timed per pipeline")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="projection: GPU dense bf16 peak (H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.4, help="projection: share of the peak every pass reaches")
    p.add_argument("--workers", type=int, default=10, help="projection: loader workers per GPU")
    p.add_argument("--json", default=None)
    p.add_argument("opts", nargs="*", help="demo: pretraining overrides key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_benchmark_cli(get_args_parser(), measure, report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
