"""DataLoader workers never hang on state the parent left behind, and a hung worker fails with a message."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_faults import REPO, subprocess_env  # noqa: E402

# The parent warps with OpenCV's thread pool, then the suite's loaders fork two workers
# each (their worker_init_fn sets OpenCV's thread count). Before the fork hook, the
# first worker waited forever inside cv2.setNumThreads(1).
PARENT_THEN_FORK = textwrap.dedent("""
    import cv2, numpy as np, torch
    from PIL import Image
    from classification import opencv_geometry as og
    from classification.data import eval_loader, train_loader

    cv2.setNumThreads(4)  # a pool of several threads, whatever the machine's core count
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (320, 320, 3), dtype=np.uint8))
    for _ in range(3):
        og.rotate(img, 17.0, fillcolor=(1, 2, 3))  # the parent uses (and so starts) the pool

    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            og.rotate(img, 11.0)  # OpenCV works in the worker
            return torch.tensor(cv2.getNumThreads()), 0

    cpu = torch.device("cpu")
    seen = [int(x) for x, _ in eval_loader(Threads(), batch_size=2, workers=2, device=cpu) for x in x]
    loader, sampler = train_loader(Threads(), batch_size=2, seed=0, workers=2, device=cpu)
    seen += [int(x) for x, _ in loader for x in x]
    og.rotate(img, 5.0)  # the parent's pool works again afterwards
    print("worker threads", sorted(set(seen)), "parent threads", cv2.getNumThreads())
""")


def test_workers_start_after_the_parent_used_opencv():
    """The parent-then-fork sequence of a notebook preview followed by training (in a subprocess,
    so that a regression fails here after a timeout instead of hanging the suite)."""
    try:
        proc = subprocess.run([sys.executable, "-c", PARENT_THEN_FORK], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("DataLoader workers hung after the parent process had used OpenCV's thread pool")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every worker ran OpenCV on one thread; the parent got its own thread count back
    assert proc.stdout.strip().endswith("worker threads [1] parent threads 4"), proc.stdout


class _Slow(torch.utils.data.Dataset):
    """Each sample takes ``seconds``: a stand-in for a worker that hangs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        time.sleep(self.seconds)
        return torch.zeros(1), 0


HANG_S = 30.0  # far beyond the 1 s timeout, so a loaded machine cannot make the test flaky


@pytest.mark.parametrize("which", ["eval", "train"])
def test_a_hung_worker_fails_with_one_line(monkeypatch, which):
    from classification.data import eval_loader, train_loader
    from pretrain.engine.cli import explain_failure

    monkeypatch.setenv("DROPPOS_WORKER_TIMEOUT", "1")
    cpu = torch.device("cpu")
    if which == "eval":
        loader = eval_loader(_Slow(HANG_S), batch_size=1, workers=1, device=cpu)
    else:
        loader, _ = train_loader(_Slow(HANG_S), batch_size=1, seed=0, workers=1, device=cpu)
    assert loader.timeout == 1.0
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        next(iter(loader))
    # it gave up before the worker's batch came (without the timeout, next() returns that batch after HANG_S)
    assert time.perf_counter() - t0 < HANG_S
    message = explain_failure(err.value)
    assert message is not None and "\n" not in message
    assert "for 1 s" in message and "DROPPOS_WORKER_TIMEOUT" in message


def test_worker_timeout_setting(monkeypatch):
    from pretrain.data.loader_timeout import DEFAULT_WORKER_TIMEOUT_S, worker_timeout
    from pretrain.engine.config import ConfigError

    monkeypatch.delenv("DROPPOS_WORKER_TIMEOUT", raising=False)
    assert worker_timeout(0) == 0.0  # torch allows no timeout without workers
    assert worker_timeout(4) == DEFAULT_WORKER_TIMEOUT_S == 600.0
    monkeypatch.setenv("DROPPOS_WORKER_TIMEOUT", "0")
    assert worker_timeout(4) == 0.0  # wait forever, torch's default
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("DROPPOS_WORKER_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="DROPPOS_WORKER_TIMEOUT"):
            worker_timeout(4)
