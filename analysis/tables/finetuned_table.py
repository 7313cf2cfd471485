"""The table of the DropPos paper's §4.3 analysis: position awareness of a pretrained encoder and its fine-tuned copies."""

from __future__ import annotations


def rows_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: backbone, format, top-1 / within-1 (%) per drop ratio, top-1 change vs pretrained."""
    ratios = metrics["drop_ratios"]
    base = {r["drop_ratio"]: r for r in metrics["rows"][0]["results"]} if metrics["rows"] else {}
    header = ["backbone", "format"] + [f"drop {x:g}: top-1 / within-1" for x in ratios]
    header += [f"drop {x:g}: top-1 vs pretrained" for x in ratios] + ["notes"]
    table = []
    for row in metrics["rows"]:
        by = {r["drop_ratio"]: r for r in row["results"]}
        cells = [row["label"], row["format"]]
        cells += [f"{100 * by[x]['top1']:.1f} / {100 * by[x]['within1']:.1f}" for x in ratios]
        cells += [f"{100 * (by[x]['top1'] - base[x]['top1']):+.1f}" for x in ratios]
        table.append(cells + ["; ".join(row["notes"]) or "—"])
    return header, table
