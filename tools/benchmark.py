"""Training-step benchmark: images/s, step time, peak memory, FLOPs and share of the hardware peak.

The step is the training code itself: the model comes from ``pretrain.main.build_method``
(config = default YAML + recipe + overrides), the optimizer has ``pretrain.main.run``'s
groups and AdamW settings, and every step is ``Trainer.train_step`` (autocast forward,
backward, clip, optimizer step, no host sync). Images are a fixed random uint8 batch held in
(pinned) host memory, copied and normalised (fine-tune: also erased) by the training step
function as the DataLoader's batches are, so the data pipeline is
out of the measurement (see ``tools.benchmark_data`` for that).

FLOPs convention (printed with every result): fvcore counts one multiply-add as one
flop; we report 2 FLOPs per multiply-add. Counted ops: linear / matmul / conv /
scaled-dot-product attention (QK^T and AV) and fvcore's norm counts; elementwise ops
(GELU, softmax, adds) are not counted. Training FLOPs per image = 3 x the forward
FLOPs of the gradient-carrying part (forward + backward ~ 2x forward) + 1 x the
forward FLOPs of no-grad passes (DropPos's attentive-reconstruction pass).

Peak: on CUDA the datasheet dense tensor-core peak of the device (bf16, or TF32 for
fp32 runs); on CPU a measured large square matmul (best of several) of the run's
precision on the same machine.

    python -m tools.benchmark --method droppos --size small --img-size 224 --batch 16 \
        --steps 20 --warmup 5 --json outputs/bench/droppos_s.json
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from pretrain.models import method_names
from tools.bench_cli import run_benchmark_cli
from tools.gpu_peaks import gpu_peak_kind, gpu_peak_tflops  # noqa: F401 (re-exported)

METHODS = (*method_names(), "finetune")  # every registered pretraining method, and fine-tuning



# --------------------------------------------------------------------------- build
def build_config(args: argparse.Namespace):
    """Resolved pretraining config (default + recipe + overrides) for a pretraining method."""
    from pretrain.engine.config import load_config

    overrides = [f"method={args.method}"]
    if args.size:
        overrides.append(f"model.size={args.size}")
    if args.img_size:
        overrides.append(f"model.img_size={args.img_size}")
    if args.patch_size:
        overrides.append(f"model.patch_size={args.patch_size}")
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    overrides += [f"train.compile={str(bool(args.compile)).lower()}", f"train.precision={args.precision}"]
    overrides += list(args.opts)
    return load_config(args.config or None, overrides)


def pretrain_optimizer(model: nn.Module, cfg, device: torch.device, fused: bool) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer of ``pretrain.main.run`` (its ``build_optimizer``, single process)."""
    from pretrain.main import build_optimizer

    optimizer, _, lr = build_optimizer(cfg, model, world=1, fused=fused)
    return optimizer, lr


def pretrain_input_shape(cfg, method: nn.Module) -> tuple[int, ...]:
    """Per-sample input shape the data pipeline delivers: [3, S, S] or multi-crop [n, 3, S, S]."""
    s = int(cfg.model.img_size)
    return (3, s, s) if method.num_crops <= 1 else (method.num_crops, 3, s, s)


def build_finetune(args: argparse.Namespace, device: torch.device):
    """The classification fine-tune step as ``classification.finetune.run`` builds it.

    ViT with average pooling + fc_norm (``build_classifier``), layer-decay AdamW groups,
    timm Mixup/CutMix on the device batch and soft-target cross-entropy (the recipe's
    ``make_step_fn``); random init (weights do not change the cost).
    """
    from classification.data import batch_finish, build_train_transform
    from classification.finetune import build_loss, build_model, build_optimizer, load_finetune_config, make_step_fn

    overrides = [f"model.{k}={v}" for k, v in (("size", args.size), ("img_size", args.img_size),
                                                ("patch_size", args.patch_size)) if v]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    overrides += [f"train.compile={str(bool(args.compile)).lower()}", f"train.precision={args.precision}"]
    cfg = load_finetune_config(args.config or None, overrides + list(args.opts))
    num_classes = int(cfg.model.num_classes or 1000)
    model = build_model(cfg, num_classes, rel_pos=bool(args.rel_pos)).to(device)
    batch = int(cfg.train.batch_size)
    optimizer, _, lr = build_optimizer(cfg, model, world=1, fused=fused_adamw(args, cfg, device))
    mixup_fn, criterion = build_loss(cfg, num_classes)
    img = int(cfg.model.img_size)
    info = dict(size=cfg.model.size, img_size=img, patch_size=int(cfg.model.patch_size), batch=batch, lr=lr,
                clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode, precision_cfg=cfg.train.precision,
                compile_cfg=bool(cfg.train.compile), num_classes=num_classes)
    finish = batch_finish(build_train_transform(cfg, normalize=False), device)  # normalise (+ erase) on the device
    return model, optimizer, make_step_fn(device, mixup_fn, criterion, finish), (3, img, img), info


def fused_adamw(args: argparse.Namespace, cfg, device: torch.device) -> bool:
    """Fused AdamW as the entry points choose it (``optim.fused``, CUDA and CPU), unless --fused-adamw says."""
    if args.fused_adamw == "auto":
        return bool(cfg.optim.fused)
    return args.fused_adamw == "on"


# --------------------------------------------------------------------------- FLOPs
def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: QK^T and AV multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    lead = math.prod(q[:-2])
    return lead * q[-2] * k[-2] * q[-1] + lead * q[-2] * k[-2] * v[-1]


class _Piece(nn.Module):
    """Wraps a callable over ``model`` so fvcore can trace one part of a step."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *inputs)


def count_macs(model: nn.Module, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> tuple[int, set[str]]:
    """fvcore multiply-adds of ``fn(model, *inputs)`` and the op types it skipped."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(_Piece(model, fn), inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(analysis.total()), set(analysis.unsupported_ops())


@torch.no_grad()
def training_flops(method: str, model: nn.Module, sample_shape: tuple[int, ...], device: torch.device, n: int = 2) -> dict[str, Any]:
    """FLOPs per image of one training step (2 FLOPs per multiply-add), split by grad / no-grad."""
    x = torch.randn(n, *sample_shape, device=device)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    was_training = model.training
    model.train(True)
    try:
        if method == "finetune":
            total, skipped = count_macs(model, lambda m, im: m(im), (x,))
        else:
            flat = x.flatten(0, 1) if x.dim() == 5 else x
            total, skipped = count_macs(model, lambda m, im: m(im).loss, (flat,))
        nograd = 0
        if method == "droppos" and model.attentive:
            tokens = model.encoder.embed_patches(x)
            ids = model.sample_masks(n, device=device).ids_keep
            nograd, more = count_macs(model, lambda m, t, i: m.attentive_weights(t, i), (tokens, ids))
            skipped |= more
    finally:
        model.train(was_training)
    del labels
    fwd_grad = (total - nograd) * 2 / n
    fwd_nograd = nograd * 2 / n
    return {
        "forward_grad_flops": fwd_grad,
        "forward_nograd_flops": fwd_nograd,
        "train_flops_per_image": 3 * fwd_grad + fwd_nograd,
        "uncounted_ops": sorted(skipped),
        "convention": "2 FLOPs per multiply-add (fvcore count x 2); train = 3 x forward(grad part) + 1 x forward(no-grad part)",
    }


# --------------------------------------------------------------------------- peaks
def measured_matmul_tflops(dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (2048, 3072), repeats: int = 5) -> dict[str, Any]:
    """Best achieved TFLOP/s of large square matmuls on this CPU (``repeats`` timed runs per size)."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up (packing buffers, thread pool)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            dt = time.perf_counter() - t0
            tf = 2 * n ** 3 / dt / 1e12
            if tf > best:
                best, best_n = tf, n
    return {"tflops": best, "matrix": best_n, "dtype": str(dtype).replace("torch.", ""), "repeats": repeats}


# --------------------------------------------------------------------------- memory
def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- the run
class _BatchLoader:
    """Stands in for the DataLoader: the Trainer only reads its batch size here."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size


def build_trainer(args: argparse.Namespace, device: torch.device):
    """Model, Trainer and a host batch, built as the training entry point builds them."""
    from pretrain.engine.logger import RunLogger
    from pretrain.engine.schedule import set_learning_rate
    from pretrain.engine.hooks import MethodHook
    from pretrain.engine.trainer import LoopConfig, Trainer, resolve_precision

    if args.method == "finetune":
        model, optimizer, step_fn, shape, info = build_finetune(args, device)
        precision = resolve_precision(info.pop("precision_cfg"), device)
        clip, clip_mode, compile_model = info["clip_grad"], info.pop("clip_mode"), info.pop("compile_cfg")
        hooks = []
    else:
        from pretrain.engine.run import seed_everything
        from pretrain.main import make_step_fn
        from pretrain.models import build_method

        cfg = build_config(args)
        seed_everything(int(cfg.train.seed))
        model = build_method(cfg).to(device)
        optimizer, lr = pretrain_optimizer(model, cfg, device, fused_adamw(args, cfg, device))
        generator = torch.Generator(device=device)
        generator.manual_seed(int(cfg.train.seed) * 1000)
        step_fn = make_step_fn(device, model, generator)
        hooks = [MethodHook(model)]  # the method's schedule (sigma) and post-step projection, as in training
        shape = pretrain_input_shape(cfg, model)
        precision = resolve_precision(cfg.train.precision, device)
        clip, clip_mode, compile_model = cfg.optim.clip_grad, cfg.optim.clip_mode, bool(cfg.train.compile)
        info = dict(size=cfg.model.size, img_size=int(cfg.model.img_size), patch_size=int(cfg.model.patch_size),
                    batch=int(cfg.train.batch_size), lr=lr, clip_grad=clip)
    batch = info["batch"]
    run_model = torch.compile(model) if compile_model else model
    loop = LoopConfig(epochs=1, lr=info["lr"], min_lr=0.0, warmup_epochs=0.0, clip_grad=clip, clip_mode=clip_mode,
                      log_every=10 ** 9, progress=False)
    logger = RunLogger(tempfile.gettempdir(), enabled=False, tensorboard=False)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # as training does
    trainer = Trainer(run_model, optimizer, _BatchLoader(batch), range(batch), step_fn, loop, device, precision,
                      None, logger, scaler=scaler, hooks=hooks)
    set_learning_rate(optimizer, 0.0, info["lr"], 0.0, 1.0)  # peak lr in every group (training: per step)
    for hook in hooks:
        hook.before_step(trainer, 0.0)
    g = torch.Generator().manual_seed(0)
    # uint8 images, as the training DataLoaders deliver them: the step normalises them on the device
    imgs = torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 1000, (batch,), generator=g)
    if device.type == "cuda":
        imgs, labels = imgs.pin_memory(), labels.pin_memory()
    info.update(precision=precision, input_shape=list(shape), compile=bool(compile_model), grad_scaler=scaler is not None,
                adamw="fused" if optimizer.defaults.get("fused") else "foreach")
    return model, trainer, (imgs, labels), shape, info


def time_steps(trainer, batch, steps: int, device: torch.device) -> list[float]:
    """Seconds per step; on CUDA from events read once at the end (no sync between steps)."""
    trainer.model.train(True)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            trainer.train_step(batch)
            events[i + 1].record()
        torch.cuda.synchronize(device)
        return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t0)
    return times


def profile_steps(trainer, batch, steps: int, device: torch.device, top: int = 25) -> dict[str, Any]:
    """torch.profiler over ``steps`` training steps: the top ops by self time and their share."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        for _ in range(steps):
            trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in rows) or 1.0
    ops = [{"op": e.key, "self_ms_per_step": getattr(e, attr) / 1e3 / steps, "share": getattr(e, attr) / total,
            "calls_per_step": e.count / steps} for e in rows[:top]]
    return {"steps": steps, "time_attr": attr, "total_ms_per_step": total / 1e3 / steps, "top_ops": ops}


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0]}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info["device_name"] = name
        info["cpu_count"] = os.cpu_count()
    return info


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    import pretrain.main  # noqa: F401  (imports before the baseline RSS)
    rss_baseline = current_rss_mib()
    model, trainer, batch, shape, info = build_trainer(args, device)
    bsz = info["batch"]

    t0 = time.perf_counter()
    warm = time_steps(trainer, batch, max(args.warmup, 1), device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mib()
    peak_sizes = tuple(int(n) for n in args.peak_sizes.split(","))
    mm_dtype = torch.bfloat16 if info["precision"] == "bf16" else torch.float32
    cpu_peaks = []
    if device.type == "cpu" and not args.no_flops:  # peak taken right before and after the timed steps
        cpu_peaks.append(measured_matmul_tflops(mm_dtype, peak_sizes))
    times = time_steps(trainer, batch, args.steps, device)
    trainer.guard.check()  # the one host sync: the loss stayed finite
    if cpu_peaks:
        cpu_peaks.append(measured_matmul_tflops(mm_dtype, peak_sizes))
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 20
        mem_kind = "cuda max_memory_allocated"
    else:
        peak_mem = peak_rss_mib()
        mem_kind = "peak RSS of the process"
    step_s = statistics.median(times)
    result: dict[str, Any] = {
        "method": args.method,
        **{k: v for k, v in info.items() if k != "lr"},
        "device": str(device),
        "steps": args.steps,
        "warmup": args.warmup,
        "first_step_s": warm[0],
        "warmup_s": warmup_s,
        "step_s_median": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "images_per_s": bsz / step_s,
        "peak_memory_mib": peak_mem,
        "memory_kind": mem_kind,
        "rss_after_imports_mib": rss_baseline if device.type == "cpu" else None,
        "rss_before_steps_mib": rss_before if device.type == "cpu" else None,
        "machine": machine_info(device),
        "load_avg_1m_before": load_before,
    }
    if not args.no_flops:
        flops = training_flops(args.method, trainer.unwrapped, shape, device)
        result.update(flops)
        achieved = flops["train_flops_per_image"] * result["images_per_s"]
        result["achieved_tflops"] = achieved / 1e12
        if device.type == "cuda":
            kind = gpu_peak_kind(info["precision"], torch.backends.cuda.matmul.allow_tf32)
            peak = gpu_peak_tflops(result["machine"]["device_name"], kind)
            result["peak_tflops"] = peak
            result["peak_kind"] = f"datasheet dense {kind}" if peak else "unknown device: no datasheet peak"
        else:
            mm = max(cpu_peaks, key=lambda m: m["tflops"])
            result["peak_tflops"] = mm["tflops"]
            result["peak_tflops_before_after"] = [m["tflops"] for m in cpu_peaks]
            result["peak_kind"] = (f"measured {mm['dtype']} {mm['matrix']}^2 matmul, best of {mm['repeats']}, "
                                   f"higher of before/after the steps")
        if result.get("peak_tflops"):
            result["share_of_peak"] = result["achieved_tflops"] / result["peak_tflops"]
    if args.profile:
        result["profile"] = profile_steps(trainer, batch, args.profile, device)
    result["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    result["command"] = "python -m tools.benchmark " + " ".join(args.argv)
    return result


def print_result(r: dict[str, Any]) -> None:
    from tabulate import tabulate

    rows = [
        ("method", f"{r['method']} vit-{r['size']}/{r['patch_size']} @ {r['img_size']} px, batch {r['batch']}"
                   + (f" x {r['input_shape'][0]} crops" if len(r["input_shape"]) == 4 else "")),
        ("device", f"{r['device']} ({r['machine']['device_name']}, {r['machine']['threads']} threads)"),
        ("precision / compile / AdamW", f"{r['precision']} / {r['compile']} / {r['adamw']}"),
        ("images/s", f"{r['images_per_s']:.2f}"),
        ("step time (median of %d)" % r["steps"], f"{r['step_s_median'] * 1e3:.1f} ms (min {r['step_s_min'] * 1e3:.1f}, max {r['step_s_max'] * 1e3:.1f})"),
        ("first step / warm-up", f"{r['first_step_s']:.2f} s / {r['warmup_s']:.2f} s"),
        ("peak memory", f"{r['peak_memory_mib']:.0f} MiB ({r['memory_kind']}"
                        + (f"; {r['rss_after_imports_mib']:.0f} MiB after imports)" if r.get("rss_after_imports_mib") else ")")),
    ]
    if "train_flops_per_image" in r:
        rows += [
            ("train GFLOPs / image", f"{r['train_flops_per_image'] / 1e9:.3f} (fwd grad {r['forward_grad_flops'] / 1e9:.3f}, "
                                     f"fwd no-grad {r['forward_nograd_flops'] / 1e9:.3f})"),
            ("achieved TFLOP/s", f"{r['achieved_tflops']:.4f}"),
            ("peak TFLOP/s", (f"{r['peak_tflops']:.4f} ({r['peak_kind']}"
                              + (": " + " / ".join(f"{v:.4f}" for v in r["peak_tflops_before_after"]) + ")"
                                 if "peak_tflops_before_after" in r else ")")) if r.get("peak_tflops") else r["peak_kind"]),
            ("share of peak", f"{100 * r['share_of_peak']:.1f} %" if "share_of_peak" in r else "n/a"),
        ]
    rows.append(("load average (1 min)", f"{r['load_avg_1m_before']:.2f} before, {r['machine']['load_avg_1m_after']:.2f} after"))
    print(tabulate(rows, tablefmt="github", headers=("benchmark", "value")))
    if "convention" in r:
        print(f"FLOPs: {r['convention']}; not counted: {', '.join(r['uncounted_ops']) or 'none'} (elementwise)")
    if "profile" in r:
        p = r["profile"]
        print(f"\nprofile: {p['total_ms_per_step']:.1f} ms/step of op self time ({p['time_attr']})")
        print(tabulate([(o["op"], f"{o['self_ms_per_step']:.2f}", f"{100 * o['share']:.1f}", f"{o['calls_per_step']:.0f}")
                        for o in p["top_ops"]], headers=("op", "ms/step", "%", "calls/step"), tablefmt="github"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Training-step benchmark (throughput, memory, FLOPs)")
    p.add_argument("--method", choices=METHODS, default="droppos")
    p.add_argument("--config", action="append", default=[], help="recipe YAML (pretraining, or fine-tuning for finetune)")
    p.add_argument("--size", default=None, help="ViT size (default: the recipe's, or base)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the recipe's)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--rel-pos", action="store_true", help="finetune: relative-position blocks (AdPE's rel encoders)")
    p.add_argument("--batch", type=int, default=None, help="per-step batch (default: the recipe's)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile happens here)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (as train.compile=true)")
    p.add_argument("--fused-adamw", default="auto", choices=("auto", "on", "off"),
                   help="auto: as training (optim.fused); on/off: force (off: the foreach AdamW)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-flops", action="store_true", help="skip the fvcore count and the peak measurement")
    p.add_argument("--profile", type=int, default=0, help="also profile N steps with torch.profiler")
    p.add_argument("--peak-sizes", default="2048,3072", help="CPU peak: square matmul sizes to try")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_benchmark_cli(get_args_parser(), benchmark, print_result, argv)


if __name__ == "__main__":
    sys.exit(main())
