"""Datasheet dense peaks of GPUs, for the share-of-peak figures of the benchmarks."""
from __future__ import annotations

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendor datasheets, matched by
# device-name substring (first match wins, so specific names come first). H100 is the SXM
# part; V100 has no bf16 tensor cores, so its bf16 column is the fp16 peak.
_DATASHEET = """
name       bf16    tf32   fp32
H100 PCIe  756.0   378.0  51.2
H100 NVL   835.0   417.5  60.0
H100       989.4   494.7  66.9
H200       989.4   494.7  66.9
GH200      989.4   494.7  66.9
A100       312.0   156.0  19.5
A800       312.0   156.0  19.5
L40S       362.05  183.0  91.6
L40        181.0   90.5   90.5
L4         121.0   60.0   30.3
A10G       70.0    35.0   31.2
A10        125.0   62.5   31.2
A6000      154.8   77.4   38.7
4090       165.2   82.6   82.6
3090       71.0    35.6   35.6
V100       125.0   15.7   15.7
"""


def _parse(table: str) -> list[tuple[str, dict[str, float]]]:
    """Rows of the datasheet table: (name, {kind: TFLOP/s}); a name may hold spaces."""
    lines = [ln.split() for ln in table.strip().splitlines()]
    kinds = lines[0][1:]
    return [(" ".join(row[: -len(kinds)]), dict(zip(kinds, map(float, row[-len(kinds):])))) for row in lines[1:]]


GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = _parse(_DATASHEET)


def gpu_peak_kind(precision: str, tf32: bool) -> str:
    """Which datasheet peak applies: bf16 (also fp16) tensor cores, TF32 tensor cores or plain fp32."""
    if precision in ("bf16", "fp16"):
        return "bf16"
    return "tf32" if tf32 else "fp32"


def gpu_peak_tflops(name: str, kind: str) -> float | None:
    """Datasheet dense peak (TFLOP/s) of a GPU by name for ``kind`` ('bf16', 'tf32', 'fp32')."""
    for sub, peaks in GPU_PEAK_TFLOPS:
        if sub.lower() in name.lower():
            return peaks[kind]
    return None
