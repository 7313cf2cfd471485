"""The check's figures, derived from its parts' results: benchmark rows, compile gains, goals.

Every figure the Markdown report and the README's GPU table show is computed here from
the parts' own JSON (``tools.benchmark`` results, the training and detection parts'
records), so a table cell can always be traced to a measured number. A compiled row is
timed without the FLOP count (it would trace the model again); its FLOPs per image and
its peak come from its eager twin, which runs the same model on the same device.
"""
from __future__ import annotations

from typing import Any

from .plan import BENCH_ROWS, COMPILED, bench_name

SHARE_GOAL = 0.40  # DropPos and MAE ViT-B/16, batch 256, bf16: >= 40 % of the bf16 dense peak
COMPILE_GOAL = 1.0  # torch.compile must pay: compiled images/s above eager
MIB_PER_IMAGE_GOAL = 320.0  # batch 256 within an 80 GB H100 (80 * 1024 / 256 MiB per image)
GOAL_METHODS = ("droppos", "mae")
ATTENTION_MARKERS = ("flash", "efficient_attention", "cudnn_attention", "scaled_dot_product")


def row_names() -> list[str]:
    """Every benchmark row in table order: each eager row, then its compiled twin."""
    names = []
    for method, precision in BENCH_ROWS:
        names.append(bench_name(method, precision, False))
        if precision == "bf16" and method in COMPILED:
            names.append(bench_name(method, precision, True))
    return names


def attention_ops(result: dict[str, Any]) -> list[str]:
    """Attention kernels among the profiled top ops (which SDPA backend ran)."""
    ops = (result.get("profile") or {}).get("top_ops", [])
    return sorted({o["op"] for o in ops if any(m in o["op"] for m in ATTENTION_MARKERS)})


def bench_row(outcome: dict[str, Any], twin: dict[str, Any] | None, prewarm: dict[str, Any] | None) -> dict[str, Any]:
    """One benchmark row's figures (``None`` where the part gave none)."""
    r = outcome.get("result") or {}
    row: dict[str, Any] = {"name": outcome["name"], "method": outcome.get("method"),
                           "precision": outcome.get("precision"), "compile": bool(outcome.get("compile")),
                           "status": outcome["status"]}
    if outcome["status"] != "ok" or not r:
        return row
    flops_from = r if "train_flops_per_image" in r else ((twin or {}).get("result") or {})
    flops = flops_from.get("train_flops_per_image")
    peak = flops_from.get("peak_tflops")
    achieved = flops * r["images_per_s"] / 1e12 if flops else None
    row.update(
        device_name=r["machine"]["device_name"], size=r["size"], patch_size=r["patch_size"], img_size=r["img_size"],
        batch=r["batch"], crops=r["input_shape"][0] if len(r["input_shape"]) == 4 else 1, adamw=r.get("adamw"),
        grad_scaler=r.get("grad_scaler"), images_per_s=r["images_per_s"], step_ms=r["step_s_median"] * 1e3,
        first_step_s=r["first_step_s"], peak_memory_mib=r["peak_memory_mib"],
        mib_per_image=r["peak_memory_mib"] / r["batch"], memory_kind=r["memory_kind"],
        train_gflops_per_image=flops / 1e9 if flops else None, achieved_tflops=achieved, peak_tflops=peak,
        peak_kind=flops_from.get("peak_kind"), share_of_peak=achieved / peak if achieved and peak else None,
        flops_from=outcome["name"] if flops_from is r else (twin or {}).get("name"),
        attention_ops=attention_ops(r), command=r.get("command"),
    )
    if prewarm and prewarm.get("status") == "ok" and prewarm.get("result"):
        row["prewarm_first_step_s"] = prewarm["result"]["first_step_s"]  # the compile, caches as found
    return row


def bench_rows(outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in row_names():
        if name not in outcomes:
            continue
        out = outcomes[name]
        twin = outcomes.get(bench_name(out.get("method", ""), out.get("precision", ""), False))
        rows.append(bench_row(out, twin if out.get("compile") else None, outcomes.get(out.get("prewarm", ""))))
    return rows


def compile_gains(rows: list[dict[str, Any]]) -> dict[str, float]:
    """images/s compiled / eager, per method (bf16)."""
    eager = {r["method"]: r for r in rows if not r["compile"] and r["precision"] == "bf16" and "images_per_s" in r}
    return {r["method"]: r["images_per_s"] / eager[r["method"]]["images_per_s"]
            for r in rows if r["compile"] and "images_per_s" in r and r["method"] in eager}


def goals(rows: list[dict[str, Any]], gains: dict[str, float], judged: bool) -> list[dict[str, Any]]:
    """The GPU goals with their measured values; ``met`` is None where unmeasured or not judged (dry run)."""
    def verdict(value: float | None, ok: bool) -> bool | None:
        return None if value is None or not judged else ok

    out = []
    for method in GOAL_METHODS:
        mine = [r for r in rows if r["method"] == method and r["precision"] == "bf16"]
        shares = [r["share_of_peak"] for r in mine if r.get("share_of_peak") is not None]
        best = max(shares) if shares else None
        out.append({"kind": "share", "goal": f"{method} bf16 share of the bf16 dense peak (best of eager / compiled)",
                    "target": f">= {SHARE_GOAL:.0%}", "value": best,
                    "met": verdict(best, best is not None and best >= SHARE_GOAL)})
        gain = gains.get(method)
        out.append({"kind": "gain", "goal": f"{method} torch.compile gain (images/s compiled / eager)",
                    "target": f"> {COMPILE_GOAL:.2f}x", "value": gain,
                    "met": verdict(gain, gain is not None and gain > COMPILE_GOAL)})
        mem = [r["mib_per_image"] for r in mine if not r["compile"] and r.get("mib_per_image") is not None]
        out.append({"kind": "memory", "goal": f"{method} bf16 peak memory per image (eager)",
                    "target": f"<= {MIB_PER_IMAGE_GOAL:.0f} MiB", "value": mem[0] if mem else None,
                    "met": verdict(mem[0] if mem else None, bool(mem) and mem[0] <= MIB_PER_IMAGE_GOAL)})
    return out


def summarize(outcomes: dict[str, dict[str, Any]], judged: bool) -> dict[str, Any]:
    """Everything the tables show: bench rows, compile gains, goals, training and detection records."""
    rows = bench_rows(outcomes)
    gains = compile_gains(rows)
    training = [{"name": o["name"], "kind": o["kind"], "status": o["status"], **(o.get("result") or {})}
                for o in outcomes.values() if o["kind"] in ("pretrain", "finetune")]
    det = outcomes.get("detection")
    return {"bench": rows, "compile_gain": gains, "goals": goals(rows, gains, judged), "training": training,
            "detection": {"status": det["status"], **(det.get("result") or {})} if det else None}


def failures(outcomes: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the parts that did not succeed, with how they ended."""
    return [f"{o['name']} ({o['status']}{': ' + o['reason'] if o.get('reason') else ''})"
            for o in outcomes.values() if o["status"] != "ok"]
