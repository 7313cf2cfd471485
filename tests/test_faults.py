"""Fault injection: runs survive kills and crashes, bad input gets clear errors, nothing saved is lost.

Every test injects one real fault into a tiny pretraining run (ViT-Tiny at 32 px with
8 px patches, 48 images, batch 8: 6 steps an epoch, 2 epochs, a checkpoint every 2
steps). Runs use one CPU thread (the machine is shared), subprocesses get
OMP_NUM_THREADS=1. docs/faults.md lists the faults and what the suite checks.
Set FAULT_SEED to replay the random kill steps.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.synthetic import make_builtin_dataset
from pretrain.engine.run_checkpoints import CheckpointManager, load_resume_file
from pretrain.engine.config import load_config
from pretrain.engine.logger import RunLogger
from pretrain.main import main, run
from pretrain.models import DropPos

REPO = Path(__file__).resolve().parents[1]
RECIPE = "droppos_vit_tiny_builtin.yaml"
STEPS = 12  # 48 images / batch 8 = 6 steps an epoch, 2 epochs
SEED = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(10**6)))
COMMON = (
    "model.img_size=32", "train.batch_size=8", "train.epochs=2", "data.limit=48", "train.log_every=1",
    "train.save_every_steps=2", "train.tensorboard=false", "train.progress=false", "train.deterministic=true",
    "droppos.decoder_dim=64", "droppos.decoder_depth=1", "droppos.decoder_heads=2", "optim.blr=1e-3",
    "data.builtin=false",
)
# drop path draws from the global torch RNG: resuming must restore it exactly
SINGLE = ("model.drop_path=0.1",)
# for 1 x 2b == 2 x b: no drop path (per-rank RNG streams) and plain mean loss (the attentive
# weights' sum differs per image, so a mean of per-rank weighted means is not the global one)
DDP = ("model.drop_path=0.0", "droppos.attentive=false")


def opts(data: Path, out: Path, *extra: str, workers: int = 0) -> list[str]:
    return [f"data.path={data / 'imagenet'}", f"train.output_dir={out}", f"data.num_workers={workers}", *COMMON, *extra]


def cfg_for(data: Path, out: Path, *extra: str, workers: int = 0):
    return load_config(RECIPE, opts(data, out, *extra, workers=workers))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def records(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            good.append(json.loads(line))
        except ValueError:  # a line being written right now
            pass
    return good


def train_losses(out: Path) -> tuple[list[int], list[float]]:
    train = [r for r in records(out) if r["phase"] == "train"]
    return [r["step"] for r in train], [r["loss"] for r in train]


def epoch_stats(out: Path) -> list[dict]:
    return [{k: r[k] for k in ("step", "epoch", "loss", "pos_acc", "sigma", "lr")} for r in records(out) if r["phase"] == "epoch"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def step_of(path: Path) -> int:
    return int(re.fullmatch(r"checkpoint-(\d+)\.pth", Path(path).name).group(1))


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(step_of(p) for p in out.glob("checkpoint-*.pth"))


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Block until the run logged train step >= ``step``; returns the step seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [r["step"] for r in records(out) if r["phase"] == "train"]
        if steps and steps[-1] >= step:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before step {step}")
        time.sleep(0.02)
    raise AssertionError(f"run did not reach step {step} in {timeout} s")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """In-process runs use one thread, like the subprocesses (and same numbers as them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(small_builtin) -> Path:
    return small_builtin


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run (drop path on): the losses every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    run(cfg_for(data, out, *SINGLE))
    steps, _ = train_losses(out)
    assert steps == list(range(1, STEPS + 1))
    return out


@pytest.fixture(scope="module")
def reference_ddp(data, tmp_path_factory) -> Path:
    """One process, batch 8: what a 2-process run with batch 4 each must match."""
    out = tmp_path_factory.mktemp("faults") / "reference_ddp"
    run(cfg_for(data, out, *DDP))
    return out


def assert_same_run(out: Path, ref: Path, exact: bool = True) -> None:
    """Each step logged once, and the losses and epoch averages of the reference run."""
    steps, losses = train_losses(out)
    ref_steps, ref_losses = train_losses(ref)
    assert steps == ref_steps, f"steps logged {steps} (each must appear once)"
    if exact:
        assert losses == ref_losses
        assert epoch_stats(out) == epoch_stats(ref)
    else:
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
        for a, b in zip(epoch_stats(out), epoch_stats(ref), strict=True):
            assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
            torch.testing.assert_close(torch.tensor([a["loss"], a["pos_acc"]]), torch.tensor([b["loss"], b["pos_acc"]]), rtol=1e-5, atol=1e-6)
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    ref_metrics = json.loads((ref / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == STEPS and len(metrics["history"]) == len(ref_metrics["history"]) == 2


# ----------------------------------------------------------------------------- kill and resume
def test_sigkill_at_random_step_then_resume_reproduces_losses(data, reference, tmp_path):
    """SIGKILL a run (2 data workers) at a random step; the resumed run (2 workers) logs each step once
    with the reference's losses and epoch averages (reference: 0 workers, never interrupted)."""
    kill_at = random.Random(SEED).randint(3, STEPS - 2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain.main", "--config", RECIPE, *opts(data, out, *SINGLE, workers=2)]
    with open(tmp_path / "killed.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            seen = wait_for_step(out, kill_at, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = checkpoint_steps(out)
    assert saved, f"no checkpoint before the kill at step {seen} (FAULT_SEED={SEED})"
    assert max(saved) <= seen
    run(cfg_for(data, out, *SINGLE, workers=2))
    assert_same_run(out, reference)
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    assert step_of(metrics["resumed_from"]) == max(saved), f"FAULT_SEED={SEED}"


def test_log_truncation_drops_records_after_checkpoint(tmp_path):
    """Records written after the checkpoint (and a line cut short by the kill) are dropped on resume."""
    logger = RunLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 6, "phase": "tr')  # killed mid-write
    reopened = RunLogger(tmp_path, tensorboard=False)
    assert reopened.records == 6
    assert reopened.truncate(3) == 3  # by step (no count saved)
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]
    reopened.log(3, {"loss": 9.0}, prefix="epoch")  # an epoch record at the checkpoint's own step ...
    reopened.log(4, {"loss": 4.0})
    assert reopened.truncate(3, records=3) == 2  # ... written after the checkpoint: the count drops it
    assert [(r["step"], r["phase"]) for r in records(tmp_path)] == [(1, "train"), (2, "train"), (3, "train")]


# ----------------------------------------------------------------------------- checkpoint writes
CRASH_IN_SECOND_SAVE = r"""
import hashlib, os, sys, torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the step-4 checkpoint: record step 2's file, write half, die
        prev = os.path.join(os.path.dirname(f.name), "checkpoint-00000002.pth")
        with open(prev, "rb") as g, open(os.environ["SHA_OUT"], "w") as h:
            h.write(hashlib.sha256(g.read()).hexdigest())
        f.write(b"PK\x03\x04 half a checkpoint"); f.flush(); os.fsync(f.fileno())
        os._exit(17)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from pretrain.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_crash_inside_checkpoint_write_keeps_previous(data, reference, tmp_path):
    """The process dies half-way through writing checkpoint 4: checkpoint 2 is untouched and the
    resume starts from it, removing the half-written temporary file."""
    out = tmp_path / "run"
    env = subprocess_env(SHA_OUT=str(tmp_path / "sha.txt"))
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_SECOND_SAVE, "--config", RECIPE, *opts(data, out, *SINGLE)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert checkpoint_steps(out) == [2]
    stale = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint-00000004.pth.tmp")]
    assert stale, "the crash should have hit the temporary file"
    assert sha(out / "checkpoint-00000002.pth") == (tmp_path / "sha.txt").read_text()
    assert load_resume_file(out / "checkpoint-00000002.pth")["train_state"]["global_step"] == 2
    metrics = run(cfg_for(data, out, *SINGLE))
    assert metrics["resumed_from"].endswith("checkpoint-00000002.pth")
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert_same_run(out, reference)


def test_corrupt_checkpoints_named_and_skipped(data, reference, tmp_path, capsys):
    """A truncated newest checkpoint (and an empty one) are named; an explicit resume from it fails
    with exit 1; auto-resume falls back to the last good one and moves the bad ones aside."""
    out = tmp_path / "run"
    run(cfg_for(data, out, *SINGLE, "train.max_steps=4"))
    assert checkpoint_steps(out) == [2, 4]
    bad = out / "checkpoint-00000004.pth"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    (out / "checkpoint-00000005.pth").write_bytes(b"")
    capsys.readouterr()

    assert main(["--config", RECIPE, *opts(data, out, *SINGLE, f"train.resume={bad}")]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint file is corrupt or truncated: {bad}" in err

    assert main(["--config", RECIPE, *opts(data, out, *SINGLE)]) == 0
    printed = capsys.readouterr().out
    assert f"skipping unusable checkpoint {out / 'checkpoint-00000005.pth'}" in printed
    assert f"skipping unusable checkpoint {bad}" in printed
    assert f"resumed from {out / 'checkpoint-00000002.pth'}" in printed
    assert (out / "checkpoint-00000004.pth.corrupt").is_file() and (out / "checkpoint-00000005.pth.corrupt").is_file()
    assert_same_run(out, reference)  # steps 3 and 4 were logged twice before the truncation fix
    assert checkpoint_steps(out) == [10, 12]


def test_manager_never_prunes_the_checkpoint_it_just_wrote(tmp_path):
    """keep=1 with a corrupt newer file, or a restart from an earlier step: the new checkpoint survives."""
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save({"model": {}, "train_state": {"global_step": 2}}, 2)
    (tmp_path / "checkpoint-00000004.pth").write_bytes(b"garbage")
    state, path = manager.load_latest(quarantine=True)
    assert path.name == "checkpoint-00000002.pth" and state["train_state"]["global_step"] == 2
    manager.save({"model": {}, "train_state": {"global_step": 3}}, 3)
    assert [p.name for p in manager.list()] == ["checkpoint-00000003.pth"]
    # a newer file from an abandoned timeline (e.g. an explicit resume from step 3)
    manager.save({"model": {}, "train_state": {"global_step": 9}}, 9)
    assert manager.discard_newer(3) and (tmp_path / "checkpoint-00000009.pth.discarded").is_file()
    manager.save({"model": {}, "train_state": {"global_step": 4}}, 4)
    assert [p.name for p in manager.list()] == ["checkpoint-00000004.pth"]


# ----------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("value,log_every", [("nan", 1), ("inf", 100)])
def test_non_finite_loss_stops_and_keeps_checkpoints(data, tmp_path, monkeypatch, capsys, value, log_every):
    """The loss turns NaN/Inf at step 6: exit 1 naming the step and the loss parts, and no checkpoint
    written or touched (caught at the log point with log_every=1, at the save with log_every=100)."""
    out = tmp_path / "run"
    run(cfg_for(data, out, *SINGLE, "train.max_steps=4"))
    saved = lambda: {p.name: sha(p) for p in out.iterdir() if p.name.startswith("checkpoint") or p.suffix in (".pth", ".json")}
    before = saved()
    assert sorted(before) == ["backbone.pth", "backbone.pth.card.json", "checkpoint-00000002.pth", "checkpoint-00000004.pth", "pretrain_metrics.json"]
    real_forward, calls = DropPos.forward, []

    def poisoned(self, *args, **kwargs):
        result = real_forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # second step after resuming from step 4
            result.loss = result.loss * float(value)
            result.metrics["loss"] = result.loss.detach()
        return result

    monkeypatch.setattr(DropPos, "forward", poisoned)
    capsys.readouterr()
    code = main(["--config", RECIPE, *opts(data, out, *SINGLE, f"train.log_every={log_every}")])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite loss at step 6" in err and f"loss={value}" in err and "pos_acc=" in err
    assert f"last good checkpoint is {out / 'checkpoint-00000004.pth'}" in err
    assert saved() == before  # byte-identical, nothing new


# ----------------------------------------------------------------------------- bad data
@pytest.fixture()
def broken_images(tmp_path) -> tuple[Path, list[Path]]:
    """40 images (10 classes x 4); sample 0 truncated, sample 20 not an image at all."""
    root = tmp_path / "data"
    make_builtin_dataset(root, seed=1, formats=("imagefolder",), imagefolder_train_per_class=4, imagefolder_val_per_class=1)
    files = sorted((root / "imagenet" / "train").glob("*/*.JPEG"))
    files = sorted(files, key=lambda p: (p.parent.name, p.name))
    bad = [files[0], files[20]]
    bad[0].write_bytes(bad[0].read_bytes()[:1500])
    bad[1].write_bytes(b"this is not a JPEG")
    return root, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_named(broken_images, tmp_path, capsys, workers):
    root, bad = broken_images
    out = tmp_path / "run"
    code = main(["--config", RECIPE, *opts(root, out, "data.limit=0", "train.epochs=1", workers=workers)])
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"error: cannot read image file (%s|%s)" % tuple(re.escape(str(p)) for p in bad), err), err
    assert "data.skip_bad=true" in err
    assert not checkpoint_steps(out)


def test_skip_bad_skips_and_reports_count(broken_images, tmp_path, capsys):
    root, bad = broken_images
    out = tmp_path / "run"
    metrics = run(cfg_for(root, out, "data.limit=0", "data.skip_bad=true", workers=2))
    assert metrics["steps"] == 10  # 40 images / 8, two epochs: every batch was filled
    # each bad file is drawn once an epoch (drop_last keeps all 40) and replaced by the next image;
    # the names come back from the 2 workers
    names = sorted(str(p) for p in bad)
    assert metrics["data"] == {"images": 40, "skip_bad": True, "bad_image_skips": 4, "bad_files": 2,
                               "bad_file_names": names}
    assert json.loads((out / "pretrain_metrics.json").read_text())["data"]["bad_image_skips"] == 4
    printed = capsys.readouterr().out
    assert "[pretrain] skipped 4 samples (each unreadable file once per epoch) from 2 unreadable files" in printed
    assert all(name in printed for name in names)
    assert all(torch.isfinite(torch.tensor(train_losses(out)[1])))


@pytest.mark.parametrize("layout,match", [
    ("missing", "dataset folder not found"),
    ("no_split", "split folder not found"),
    ("no_classes", "no class folders found"),
    ("no_images", "no images (.jpg"),
    ("empty_class", "class folders without images"),
])
def test_missing_or_empty_dataset_fails_before_output(tmp_path, capsys, layout, match):
    root = tmp_path / "data"
    if layout != "missing":
        (root / "imagenet").mkdir(parents=True)
    if layout in ("no_classes", "no_images", "empty_class"):
        (root / "imagenet" / "train").mkdir()
    if layout in ("no_images", "empty_class"):
        (root / "imagenet" / "train" / "cat").mkdir()
    if layout == "empty_class":
        (root / "imagenet" / "train" / "dog").mkdir()
        Image.new("RGB", (40, 40)).save(root / "imagenet" / "train" / "dog" / "dog_0.JPEG")
    out = tmp_path / "run"
    assert main(["--config", RECIPE, *opts(root, out)]) == 1
    err = capsys.readouterr().err
    assert match in err and str(root / "imagenet") in err
    assert not out.exists()


# ----------------------------------------------------------------------------- COCO / ADE20K validators
@pytest.fixture(scope="module")
def coco_ade(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coco_ade")
    return make_builtin_dataset(root, seed=0, formats=("coco", "ade20k"), coco_train=4, coco_val=2, ade_train=3, ade_val=2,
                                coco_size=(64, 96), ade_size=(64, 96))


def broken_coco(coco: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    edit(data)
    path = tmp_path / "instances_broken.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_validator_accepts_good_file(coco_ade):
    from pretrain.data.validate import validate_coco_json

    coco = coco_ade["coco"]
    summary = validate_coco_json(coco / "annotations" / "instances_train2017.json", coco / "train2017")
    assert summary["images"] == 4 and summary["categories"] == 10 and summary["annotations"] >= 4


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["annotations"][0]["bbox"].__setitem__(2, -5.0), r"annotation id=1 .*bbox .* negative width"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 999), r"annotation id=1 .*image_id 999 is not in 'images'"),
    (lambda d: d["annotations"][1].__setitem__("category_id", 91), r"annotation id=2 .*category_id 91 is not in 'categories'"),
    (lambda d: d["annotations"][0]["bbox"].__setitem__(0, 5000.0), r"outside its \d+ x \d+ image"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), r"bbox must be 4 finite numbers"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"duplicate image id"),
    (lambda d: d["annotations"][0].__setitem__("segmentation", [[1.0, 2.0, 3.0]]), r"polygon 0 must be an even list"),
    (lambda d: d.pop("categories"), r"missing or non-list 'categories'"),
])
def test_coco_validator_names_broken_annotation(coco_ade, tmp_path, edit, match):
    from pretrain.data.validate import DatasetError, validate_coco_json

    path = broken_coco(coco_ade["coco"], tmp_path, edit)
    with pytest.raises(DatasetError, match=match) as info:
        validate_coco_json(path)
    assert str(path) in str(info.value)


def test_coco_validator_missing_image_file(coco_ade, tmp_path):
    from pretrain.data.validate import DatasetError, validate_coco_json

    coco = coco_ade["coco"]
    images = tmp_path / "train2017"
    shutil.copytree(coco / "train2017", images)
    victim = sorted(images.iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"image file not found: {re.escape(str(victim))}"):
        validate_coco_json(coco / "annotations" / "instances_train2017.json", images)


def test_ade20k_validator(coco_ade, tmp_path):
    from pretrain.data.validate import DatasetError, validate_ade20k

    src = coco_ade["ade20k"]
    summary = validate_ade20k(src, num_classes=12)
    assert summary["training"] == 3 and summary["validation"] == 2 and max(summary["label_values"]) <= 12
    root = tmp_path / "ade"
    shutil.copytree(src, root)
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    arr = np.array(Image.open(labels[0]))
    arr[0, 0] = 200
    Image.fromarray(arr).save(labels[0])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(labels[0]))}: label values \[200\] outside 0..12"):
        validate_ade20k(root, num_classes=12)
    with pytest.raises(DatasetError, match=r"outside 0..5"):  # the class count is part of the check
        validate_ade20k(src, num_classes=5)
    Image.fromarray(arr[:-8]).save(labels[0])
    Image.fromarray(np.stack([arr] * 3, -1)).save(labels[1])
    labels[2].unlink()
    with pytest.raises(DatasetError) as info:
        validate_ade20k(root, num_classes=12, splits=("training",))
    text = str(info.value)
    assert "differs from its image" in text and "mode RGB" in text and f"no label map {labels[2]}" in text
    with pytest.raises(FileNotFoundError, match="ADE20K folder not found"):
        validate_ade20k(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize("override,match", [
    ("droppos.mask_ration=0.5", r"unknown config key 'droppos.mask_ration'.*did you mean 'droppos.mask_ratio'"),
    ("train.batch_size=eight", r"'train.batch_size' must be int"),
    ("droppos.mask_ratio=1.5", r"'droppos.mask_ratio' must lie strictly between 0 and 1"),
    ("droppos.pos_drop_ratio=0", r"'droppos.pos_drop_ratio' must lie strictly between 0 and 1"),
    ("droppos.tau=0", r"'droppos.tau' must be >= 0.0229885"),
    ("model.patch_size=7", r"model.img_size \(32\) must be a positive multiple of model.patch_size \(7\)"),
    ("droppos.mask_ratio=0.95", r"'droppos.mask_ratio'=0.95 keeps 0 of the 16 patches"),
    ("train.batch_size=64", r"48 images give 0 batches of train.batch_size=64"),
])
def test_bad_config_rejected_before_any_work(data, tmp_path, capsys, override, match):
    out = tmp_path / "run"
    assert main(["--config", RECIPE, *opts(data, out), override]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_cli_exit_code_2_for_bad_config(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pretrain.main", "--config", RECIPE, *opts(data, out), "droppos.mask_ratio=1.5"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config error: config key 'droppos.mask_ratio' must lie strictly between 0 and 1, got 1.5" in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- disk full / read-only
@pytest.mark.parametrize("fault", ["enospc_in_write", "erofs_in_rename"])
def test_failed_checkpoint_write_is_clear_and_leaves_no_partial_file(data, tmp_path, monkeypatch, capsys, fault):
    out = tmp_path / "run"
    run(cfg_for(data, out, *SINGLE, "train.max_steps=2"))
    before = sha(out / "checkpoint-00000002.pth")
    if fault == "enospc_in_write":
        def full_disk(obj, f, *args, **kwargs):
            f.write(b"\0" * 4096)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", full_disk)
        reason = "No space left on device"
    else:
        real_replace = os.replace

        def read_only(src, dst, *args, **kwargs):
            if Path(dst).name.startswith("checkpoint-"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", read_only)
        reason = "Read-only file system"
    capsys.readouterr()
    assert main(["--config", RECIPE, *opts(data, out, *SINGLE)]) == 1
    err = capsys.readouterr().err
    assert f"error: could not write checkpoint {out / 'checkpoint-00000004.pth'}: {reason}" in err
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-00000002.pth"]
    assert sha(out / "checkpoint-00000002.pth") == before


def test_output_dir_that_cannot_be_created(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["--config", RECIPE, *opts(data, blocker / "run")]) == 1
    assert re.search(r"error: .*Not a directory.*a_file", capsys.readouterr().err)
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------- distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_killed(data, tmp_path_factory):
    """torchrun, 2 gloo processes with batch 4; rank 1 is SIGKILLed after a random step."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "run"
    kill_at = random.Random(SEED + 1).randint(3, STEPS - 3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pretrain.main", "--config", RECIPE, *opts(data, out, *DDP, "train.batch_size=4")]
    output = tmp / "torchrun.txt"
    with open(output, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(PRETRAIN_DIST_TIMEOUT="60"), stdout=log, stderr=subprocess.STDOUT)
        try:
            seen = wait_for_step(out, kill_at, proc)
            victims = [pid for pid in child_pids(proc.pid) if rank_of(pid) == 1]
            assert len(victims) == 1, f"rank 1 not found among {child_pids(proc.pid)}"
            os.kill(victims[0], signal.SIGKILL)
            t_kill = time.time()
            proc.wait(timeout=120)
            ended_after = time.time() - t_kill
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    steps_before_resume, losses_before_resume = train_losses(out)
    return dict(out=out, returncode=proc.returncode, output=output.read_text(), ended_after=ended_after,
                seen=seen, steps=steps_before_resume, losses=losses_before_resume, saved=checkpoint_steps(out))


def test_ddp_two_processes_match_one_process(ddp_killed, reference_ddp):
    """2 x batch 4 (gloo) logs the losses of 1 x batch 8: per-sample masks and the sampler's interleaving
    give the same global batches."""
    steps, losses = ddp_killed["steps"], ddp_killed["losses"]
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1)), ddp_killed["output"][-3000:]
    ref_steps, ref_losses = train_losses(reference_ddp)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses[: len(losses)]), rtol=1e-5, atol=1e-6)


def test_killed_rank_ends_the_job(ddp_killed):
    """SIGKILL of rank 1 ends the whole job quickly with a non-zero exit naming the signal."""
    assert ddp_killed["returncode"] != 0
    assert ddp_killed["ended_after"] < 60, f"job took {ddp_killed['ended_after']:.0f} s to end"
    assert re.search(r"SIGKILL|Signal 9|exitcode\s*:\s*-9", ddp_killed["output"]), ddp_killed["output"][-3000:]


def test_resume_ddp_checkpoint_on_one_process(ddp_killed, reference_ddp, data):
    """The 2-process checkpoint resumes on 1 process (batch 8) and continues the same run."""
    out = ddp_killed["out"]
    assert ddp_killed["saved"], f"no checkpoint before the kill (FAULT_SEED={SEED})"
    run(cfg_for(data, out, *DDP))
    assert_same_run(out, reference_ddp, exact=False)


def test_dist_timeout_bounds_a_missing_peer(tmp_path):
    """A rank whose peer never shows up fails after PRETRAIN_DIST_TIMEOUT seconds, not 30 minutes."""
    code = "from pretrain.engine.distributed import init_distributed; init_distributed()"
    env = subprocess_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(free_port()), PRETRAIN_DIST_TIMEOUT="3")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0
    assert "rank 0 of 2 could not join the process group at 127.0.0.1" in proc.stderr and "within 3 s" in proc.stderr
    assert time.time() - t0 < 60


def test_dist_timeout_setting(monkeypatch):
    from pretrain.engine.distributed import dist_timeout

    monkeypatch.delenv("PRETRAIN_DIST_TIMEOUT", raising=False)
    assert dist_timeout().total_seconds() == 1800
    monkeypatch.setenv("PRETRAIN_DIST_TIMEOUT", "45")
    assert dist_timeout().total_seconds() == 45
    monkeypatch.setenv("PRETRAIN_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PRETRAIN_DIST_TIMEOUT must be a number of seconds"):
        dist_timeout()
