"""Reference-format checkpoints for the tests: the released key lists, saved the way the reference code saves.

Import it through the tests folder on ``sys.path`` (``--import-mode=importlib`` does not
add it, and the MMSeg wheel installs a top-level ``tests`` package).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "reference_keys.json"
if not REF.is_file():  # CI clones the repository with shared/ beside it
    REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "reference_keys.json"


def reference_state(name: str) -> dict:
    """Random tensors (seed 0) with the keys and shapes of the reference model ``name``; skips without the list."""
    if not REF.is_file():
        pytest.skip("shared/reference/reference_keys.json not available")
    models = json.loads(REF.read_text())["models"]
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(*shape, generator=g) for k, shape in models[name]}


def save_reference_style(state: dict, path: Path) -> None:
    """As the reference code saves: DDP prefix, a pickled argparse Namespace and numpy scalars beside."""
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "args": argparse.Namespace(blr=1.5e-4),
                "epoch": 199, "scaler": {"scale": np.float64(1.0)}}, path)
