"""Markdown from the check's JSON: the full report and the README's GPU table.

    python -m tools.gpu_check --table docs/gpu_check_result.json               # print the README block
    python -m tools.gpu_check --table docs/gpu_check_result.json --readme README.md   # rewrite it there

Every cell is read from the JSON (``summary``); with no JSON the README block keeps
its rows and goals but leaves every measured cell empty and says that no GPU run has
happened yet. The block sits between two marker comments so it can be rewritten without
touching the rest of the README.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from .plan import ADPE_OPTS
from .summary import COMPILE_GOAL, GOAL_METHODS, MIB_PER_IMAGE_GOAL, SHARE_GOAL, row_names

BEGIN = "<!-- gpu-check:begin -->"
END = "<!-- gpu-check:end -->"
RESULT_FILE = "docs/gpu_check_result.json"
FP16_NOTE = ("fp16: `tools.benchmark` gives its Trainer no GradScaler (its result has no `grad_scaler`), so this "
             "row is fp16 autocast without loss scaling; training (`pretrain.main`) does scale.")
SIZE_NAMES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
LABELS = {"droppos": "DropPos", "mae": "MAE", "adpe": "AdPE", "finetune": "fine-tune"}


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def fmt(value: Any, spec: str = ".1f", scale: float = 1.0, unit: str = "") -> str:
    return "" if value is None else f"{value * scale:{spec}}{unit}"


def row_label(method: str, precision: str, compiled: bool, r: dict[str, Any]) -> tuple[str, str]:
    """'DropPos ViT-B/16, 224 px, batch 256' from the row's figures (the GPU sizes before any run)."""
    adpe = method == "adpe"
    size = SIZE_NAMES.get(r.get("size", "base"), r.get("size"))
    crops, img = r.get("crops", 4 if adpe else 1), r.get("img_size", 112 if adpe else 224)
    what = (f"{LABELS[method]} ViT-{size}/{r.get('patch_size', 16)}, "
            + (f"{crops} crops of {img} px" if crops > 1 else f"{img} px") + f", batch {r.get('batch', 256)}")
    if adpe:
        what += " (" + ", ".join(o.split("=", 1)[1] for o in ADPE_OPTS) + ")"
    return what, precision + (", compile" if compiled else "")


BENCH_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("images/s", lambda r: fmt(r.get("images_per_s"))),
    ("step (median)", lambda r: fmt(r.get("step_ms"), ".1f", unit=" ms")),
    ("peak memory", lambda r: fmt(r.get("peak_memory_mib"), ".2f", 1 / 1024, " GiB")),
    ("MiB / image", lambda r: fmt(r.get("mib_per_image"), ".0f")),
    ("train GFLOPs / image", lambda r: fmt(r.get("train_gflops_per_image"), ".2f")),
    ("TFLOP/s", lambda r: fmt(r.get("achieved_tflops"), ".3g")),
    ("share of peak", lambda r: fmt(r.get("share_of_peak"), ".1f", 100, " %")),
]


def bench_table(rows: list[dict[str, Any]]) -> str:
    """One line per benchmark row of the plan, empty cells where nothing was measured."""
    by_name = {r["name"]: r for r in rows}
    lines = []
    for name in row_names():
        _, method, precision, *rest = name.split("-")
        r = by_name.get(name, {})
        what, how = row_label(method, precision, bool(rest), r)
        status = r.get("status")
        cells = [col(r) for _, col in BENCH_COLUMNS]
        if status and status != "ok":
            cells[0] = status
        lines.append([what, how, *cells])
    return markdown(["run", "precision", *[h for h, _ in BENCH_COLUMNS]], lines)


def goal_lines(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        who = " and ".join(LABELS[m] for m in GOAL_METHODS)
        return [f"- share of the peak: {who} ViT-B/16 at batch 256 in bf16 reach at least {SHARE_GOAL:.0%} of the "
                "GPU's bf16 dense peak, eager or compiled (H100 / H200 SXM: 989 TFLOP/s, so at least 396 TFLOP/s);",
                f"- `torch.compile` gain: compiled over eager images/s above {COMPILE_GOAL:.1f}x for {who} "
                "(else `train.compile=true` is not worth recommending);",
                f"- peak memory per image: `torch.cuda.max_memory_allocated` / batch at most {MIB_PER_IMAGE_GOAL:.0f} "
                f"MiB for {who} in bf16 (batch 256 within an 80 GB H100)."]
    out = []
    for g in summary["goals"]:
        value = g["value"]
        shown = "not measured" if value is None else {
            "share": f"{100 * value:.1f} %", "gain": f"{value:.2f}x", "memory": f"{value:.0f} MiB"}[g["kind"]]
        verdict = {True: "met", False: "**not met**", None: "not judged"}[g["met"]]
        out.append(f"- {g['goal']}: {shown} (goal {g['target']}): {verdict}")
    return out


def readme_block(doc: dict[str, Any] | None) -> str:
    """The README's GPU table and goals, from a GPU check's JSON (None: no GPU run yet)."""
    if doc is None:
        head = ("**GPU figures**: no GPU run yet. The cells stay empty until the GPU check has run on a GPU "
                f"and its JSON is saved as `{RESULT_FILE}`.")
    else:
        m = doc["machine"]
        head = (f"**GPU figures**: {m.get('device_name')}, {doc['date'][:10]}, torch {m.get('torch')}, "
                f"CUDA {m.get('cuda')}; "
                f"`{doc['command']}` ({doc['wall_s']:.0f} s wall). Peak memory is `torch.cuda.max_memory_allocated`; "
                "the share is of the datasheet dense bf16 peak (TF32 / fp32 for the fp32 row).")
    summary = None if doc is None else doc["summary"]
    table = bench_table([] if summary is None else summary["bench"])
    goals = "Goals:\n\n" + "\n".join(goal_lines(summary))
    return "\n\n".join([BEGIN, head, table, goals, END])


def replace_block(text: str, block: str) -> str:
    """``text`` with its marked GPU block replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"no {BEGIN} ... {END} block found")
    return pattern.sub(lambda _: block, text, count=1)


def write_readme(path: Path, block: str) -> None:
    from pretrain.atomic import atomic_write_text

    atomic_write_text(path, replace_block(path.read_text(), block))


def status_table(outcomes: dict[str, dict[str, Any]]) -> str:
    rows = [[o["name"], o["status"], fmt(o.get("seconds")), fmt(o.get("limit_s"), ".0f"), o.get("reason") or ""]
            for o in outcomes.values()]
    return markdown(["part", "status", "seconds", "limit s", "note"], rows)


def training_table(records: list[dict[str, Any]]) -> str:
    rows = [[r["name"], r["status"], str(r.get("arch", "")), str(r.get("steps", "")), fmt(r.get("first_loss"), ".4f"),
             fmt(r.get("last_loss"), ".4f"), str(r.get("resumed_from") or ""), fmt(r.get("peak_memory_mib"), ".0f"),
             ", ".join(k for k, v in (r.get("checks") or {}).items() if not v) or ("all" if r.get("checks") else "")]
            for r in records]
    return markdown(["part", "status", "arch", "steps", "first loss", "last loss", "resumed from", "peak MiB",
                     "failed checks / all passed"], rows)


def detection_lines(d: dict[str, Any] | None) -> str:
    if not d:
        return "not run"
    if d["status"] != "ok" and "s_per_iter" not in d:
        return d["status"]
    return (f"{d['status']}: {d.get('images_per_iter')} images/iter at {d.get('image_size')} px, AMP {d.get('amp')}, "
            f"{fmt(d.get('s_per_iter'), '.3f')} s/iter (data {fmt(d.get('data_s_per_iter'), '.3f')} s), peak "
            f"{fmt(d.get('peak_memory_mib'), '.0f')} MiB, box AP {fmt(d.get('bbox_AP'), '.2f')}, mask AP "
            f"{fmt(d.get('segm_AP'), '.2f')}; checks failed: "
            f"{', '.join(k for k, v in (d.get('checks') or {}).items() if not v) or 'none'}")


def report(doc: dict[str, Any]) -> str:
    """The whole check as Markdown (gpu_check.md)."""
    m, s = doc["machine"], doc["summary"]
    title = "GPU check" + (" (CPU dry run: tiny sizes, figures not held against the goals)" if doc["dry_run"] else "")
    parts = [
        f"# {title}",
        f"{m.get('device_name')}; torch {m.get('torch')}, CUDA {m.get('cuda')}, Python {m.get('python')}; "
        f"{doc['date']}; `{doc['command']}`; {doc['wall_s']:.0f} s wall of a {doc['budget_s']:.0f} s budget.",
        "## Parts", status_table(doc["parts"]),
        "## Training-step benchmark", bench_table(s["bench"]),
        "compile gain: " + (", ".join(f"{k} {v:.2f}x" for k, v in s["compile_gain"].items()) or "not measured"),
        *([FP16_NOTE] if any(r.get("precision") == "fp16" and r.get("status") == "ok" and not r.get("grad_scaler")
                             for r in s["bench"]) else []),
        "## Goals", "\n".join(goal_lines(s)),
        "## Training on the built-in data", training_table(s["training"]),
        "## Detection (ViTDet Mask R-CNN)", detection_lines(s["detection"]),
        "## Segmentation", doc["segmentation"],
    ]
    if doc["failed"]:
        parts += ["## Failed", "\n".join(f"- {f}" for f in doc["failed"])]
    return "\n\n".join(parts) + "\n"
