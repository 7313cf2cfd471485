"""Every stage after pretraining as robust as pretraining (issue 15).

One bad-input policy (one ``error:`` line naming the file and the option that skips it;
with skipping on, each bad file counted once per epoch and named in the log and the
metrics JSON; evaluation splits never substitute images), class counts checked against
the data, validators with a command line, one EXIF rule, the fault matrix of the
transfer stages (SIGKILL, crash in a checkpoint write, partial metrics files) and safe
loading of every checkpoint. docs/faults.md lists what each test injects.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pretrain.data.decode import EncodedImage, decode_image, load_image

from pretrain.data.imagefolder import ImageFolderDataset
from pretrain.data.synthetic import make_builtin_dataset
from pretrain.data.validate import DatasetError, main as validate_main, validate_ade20k, validate_coco_json
from pretrain.engine.run_checkpoints import load_resume_file, rng_state, set_rng_state
from pretrain.weights import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_faults import REPO, RECIPE, SEED, cfg_for, opts, subprocess_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FT = "finetune_vit_tiny_builtin.yaml"
LP = "linear_probe_vit_tiny_builtin.yaml"


def tiny_opts(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={data_root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0",
            "model.size=tiny", "model.img_size=32", "model.patch_size=8", "train.batch_size=8", "train.epochs=2",
            "train.eval_batch_size=20", "train.log_every=1", "train.tensorboard=false", "train.progress=false",
            "train.deterministic=true", "data.builtin=false", *extra]


def tiny_backbone(path: Path, seed: int = 0) -> Path:
    from pretrain.models.vit import create_vit
    from pretrain.weights import atomic_torch_save

    torch.manual_seed(seed)
    atomic_torch_save({"model": create_vit("tiny", img_size=32, patch_size=8).state_dict(),
                       "format": "droppos-backbone"}, path)
    return path


def train_records(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["phase"] == "train"]


class WritesMarker:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- data
@pytest.fixture()
def bad_folder(tmp_path) -> tuple[Path, list[Path], list[Path]]:
    """40 train images (10 classes x 4) with 3 neighbouring bad files, 10 val images with 2 bad ones."""
    root = tmp_path / "data"
    make_builtin_dataset(root, seed=1, formats=("imagefolder",), imagefolder_train_per_class=4,
                         imagefolder_val_per_class=1)
    train = sorted((root / "imagenet" / "train").glob("*/*.JPEG"), key=lambda p: (p.parent.name, p.name))
    val = sorted((root / "imagenet" / "val").glob("*/*.JPEG"), key=lambda p: (p.parent.name, p.name))
    bad_train, bad_val = train[4:7], [val[2], val[7]]
    for i, p in enumerate(bad_train + bad_val):
        p.write_bytes(p.read_bytes()[:600] if i % 2 else b"not an image")
    return root, bad_train, bad_val


@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_counts_each_bad_file_once_per_epoch(bad_folder, tmp_path, capsys, workers):
    """3 neighbouring bad files, 1 epoch: 3 skips (the replacement reads made it 6), each named, also
    from DataLoader workers."""
    from pretrain.main import run

    root, bad, _ = bad_folder
    metrics = run(cfg_for(root, tmp_path / "run", "data.limit=0", "data.skip_bad=true", "train.epochs=1",
                          workers=workers))
    names = sorted(map(str, bad))
    assert metrics["data"]["bad_image_skips"] == 3 and metrics["data"]["bad_files"] == 3
    assert metrics["data"]["bad_file_names"] == names
    printed = capsys.readouterr().out
    assert "skipped 3 samples" in printed and all(n in printed for n in names)


def test_finetune_skips_by_file_and_evaluation_never_substitutes(bad_folder, tmp_path, capsys):
    from classification.finetune import load_finetune_config, run

    root, bad_train, bad_val = bad_folder
    out = tmp_path / "ft"
    m = run(load_finetune_config(FT, tiny_opts(root, out, "data.skip_bad=true", "data.limit=0")))
    data = json.loads((out / "classification_metrics.json").read_text())["data"]
    assert data["train"] == {"bad_image_skips": 6, "bad_files": 3, "bad_file_names": sorted(map(str, bad_train))}
    assert data["val"] == {"images": 10, "bad_files": 2, "bad_file_names": sorted(map(str, bad_val))}
    assert all(h["val_count"] == 8 for h in m["history"] if "val_count" in h)  # 10 - 2: no image used twice
    printed = capsys.readouterr().out
    assert "skipped 6 samples in training" in printed and "evaluation dropped 2 unreadable files" in printed


def test_evaluation_split_drops_bad_images(bad_folder):
    from classification.data import eval_loader
    from pretrain.data.transforms import build_eval_transform

    root, _, bad_val = bad_folder
    ds = ImageFolderDataset(root / "imagenet", "val", build_eval_transform(32), skip_bad=True, substitute=False)
    assert ds[2] is None and ds[3] is not None
    loader = eval_loader(ds, 4, 2, torch.device("cpu"))
    assert sum(len(batch[1]) for batch in loader if batch is not None) == 8
    assert ds.bad_files == sorted(map(str, bad_val))


@pytest.mark.parametrize("entry", ["finetune", "linear_probe"])
def test_transfer_bad_image_is_one_line_and_debug_shows_traceback(bad_folder, tmp_path, capsys, monkeypatch, entry):
    import classification.finetune as ft
    import classification.linear_probe as lp

    root, bad_train, bad_val = bad_folder
    main, recipe = (ft.main, FT) if entry == "finetune" else (lp.main, LP)
    argv = ["--config", recipe, *tiny_opts(root, tmp_path / "run", "data.limit=0")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image file "), err
    assert any(str(p) in lines[0] for p in bad_train + bad_val) and "data.skip_bad=true" in lines[0]
    monkeypatch.setenv("DROPPOS_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error: cannot read image file" in err


def test_position_probe_and_pictures_bad_file(bad_folder, tmp_path, capsys):
    from analysis.pictures.main import main as pictures_main
    from analysis.probes.position_probe import main as probe_main

    root, bad_train, bad_val = bad_folder
    ckpt = tiny_backbone(tmp_path / "backbone.pth")
    small = ["--epochs", "1", "--train-images", "0", "--val-images", "0", "--tokens-per-image", "4",
             "--extract-batch", "8", "--num-workers", "0", "--output", str(tmp_path / "probe")]
    argv = ["--checkpoint", str(ckpt), "--data", str(root), *small]
    assert probe_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read image file" in err[0] and "--skip-bad" in err[0]
    assert probe_main([*argv, "--skip-bad"]) == 0
    metrics = json.loads((tmp_path / "probe" / "position_probe_metrics.json").read_text())
    assert metrics["skipped"]["train"]["bad_file_names"] == sorted(map(str, bad_train))
    assert metrics["skipped"]["val"]["bad_files"] == 2
    capsys.readouterr()

    pics = ["attention", "--checkpoint", str(ckpt), "--data", str(root), "--index", "2", "--out", str(tmp_path / "pics")]
    assert pictures_main(pics) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad_val[0]) in err[0] and "--skip-bad" in err[0]
    assert pictures_main([*pics, "--skip-bad"]) == 0
    assert f"skipped unreadable val image #2" in capsys.readouterr().out


def test_detection_and_segmentation_name_an_unreadable_image(tmp_path, capsys):
    """Detectron2's reader names the file; the entry points end with one line and exit 1."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a JPEG")
    from pretrain.data.decode import BadImageError
    from pretrain.engine.cli import run_guarded

    try:
        import detection  # noqa: F401
        from detectron2.data import detection_utils

        from detection.compat import name_unreadable_images
        from detection.train_net import BAD_IMAGE_HINT

        name_unreadable_images()
        with pytest.raises(BadImageError, match=f"cannot read image file {bad}"):
            detection_utils.read_image(str(bad), format="BGR")
        assert run_guarded(lambda: detection_utils.read_image(str(bad)), skip_hint=BAD_IMAGE_HINT) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: cannot read image file {bad}") and "IMAGE_DIR" in err[0]
    except ImportError:
        pass
    try:
        from segmentation.runner_setup import run_entry

        def mmcv_fails(args):
            raise AssertionError(f"failed to load image: {bad}")

        assert run_entry(mmcv_fails, None) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: cannot read image file {bad}")

        def bad_labels(args):  # what check_ade20k_data raises: every file listed, no traceback
            raise DatasetError("ade", ["ade/a.png: label values [7] outside 0..3"])

        assert run_entry(bad_labels, None) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ade: 1 problem(s):") and "a.png" in err and "Traceback" not in err
    except ImportError:
        pass


# ----------------------------------------------------------------------------- class counts
@pytest.fixture(scope="module")
def tiny_coco_ade(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco_ade")
    make_builtin_dataset(root, seed=0, formats=("coco", "ade20k"), coco_train=4, coco_val=2, ade_train=3, ade_val=2,
                         coco_size=(64, 80), ade_size=(64, 96))
    return root


def test_detection_refuses_a_class_count_that_differs_from_the_data(tiny_coco_ade, tmp_path, capsys):
    pytest.importorskip("detectron2")
    from detection.train_net import invoke_main

    argv = ["--config-file", str(REPO / "detection/configs/mask_rcnn_vitdet_tiny_builtin.py"),
            f"dataloader.train.dataset.names.root={tiny_coco_ade}", "model.roi_heads.num_classes=5",
            f"train.output_dir={tmp_path / 'det'}"]
    assert invoke_main(argv) == 2
    err = capsys.readouterr().err
    assert "model.roi_heads.num_classes=5 but the training data builtin_coco_train has 10 categories" in err
    assert not (tmp_path / "det").exists()


def test_segmentation_refuses_a_class_count_that_differs_from_the_data(tmp_path):
    pytest.importorskip("mmseg")
    from pretrain.engine.config import ConfigError
    from segmentation.runner_setup import check_class_count, load_config

    cfg = load_config(str(REPO / "segmentation/configs/upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py"),
                      {"model.decode_head.num_classes": 11}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.decode_head.num_classes=11 but the train_dataloader .* has 12 classes"):
        check_class_count(cfg, ("train_dataloader",))
    ade = load_config(str(REPO / "segmentation/configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"),
                      {"model.auxiliary_head.num_classes": 100}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.auxiliary_head.num_classes=100 .* has 150 classes"):
        check_class_count(ade, ("train_dataloader",))


# ----------------------------------------------------------------------------- validators
def test_validator_command_line(tiny_coco_ade, tmp_path, capsys, bad_folder):
    coco_json = tiny_coco_ade / "coco" / "annotations" / "instances_train2017.json"
    ade = tiny_coco_ade / "ade20k" / "ADEChallengeData2016"
    proc = subprocess.run([sys.executable, "-m", "pretrain.data.validate", "coco", str(coco_json)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"ok: {coco_json}: 4 images"), proc.stdout + proc.stderr
    assert validate_main(["ade20k", str(ade), "--num-classes", "12"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {ade}: training: 3 pairs")

    data = json.loads(coco_json.read_text())
    data["annotations"][0]["bbox"][2] = -4
    data["annotations"][1]["category_id"] = 999
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    assert validate_main(["coco", str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAILED: {broken}: 2 problem(s)"
    assert f"annotation id={data['annotations'][0]['id']}" in out[1] and "negative width" in out[1]
    assert "category_id 999" in out[2]
    assert validate_main(["ade20k", str(ade), "--num-classes", "5"]) == 1
    assert "label values" in capsys.readouterr().out

    root, bad_train, bad_val = bad_folder
    assert validate_main(["imagefolder", str(root / "imagenet")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAILED: {root / 'imagenet'}: 5 problem(s)"
    assert sorted(line.split(":")[0].strip() for line in out[1:]) == sorted(map(str, bad_train + bad_val))
    assert validate_main(["coco", str(tmp_path / "missing.json")]) == 2


# ----------------------------------------------------------------------------- EXIF
def rotated_jpeg(path: Path, orientation: int = 6, size: tuple[int, int] = (48, 80)) -> np.ndarray:
    """A non-square JPEG stored sideways with an EXIF orientation tag; returns its upright pixels."""
    h, w = size
    base = (np.add.outer(np.arange(h) * 3, np.arange(w) * 2) % 251).astype(np.uint8)
    img = Image.fromarray(np.stack([base, base[::-1], np.roll(base, 7, 1)], -1))
    exif = img.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_by_every_decoder(tmp_path, orientation):
    path = tmp_path / "x.jpg"
    upright = rotated_jpeg(path, orientation)
    for kind in ("tensor", "encoded", "pil"):
        img = load_image(path, kind)
        arr = (np.array(img) if kind == "pil" else (img.decode() if kind == "encoded" else img).permute(1, 2, 0).numpy())
        assert arr.shape == upright.shape and np.abs(arr.astype(int) - upright).max() <= 1, kind
    enc = EncodedImage(bytearray(path.read_bytes()), path)
    assert enc.size == upright.shape[:2] and tuple(enc.decode(2).shape[1:]) == (upright.shape[0] // 2, upright.shape[1] // 2)
    # the pretraining crop (reduced decode + box) sees the upright image as well
    from pretrain.data.transforms import build_eval_transform

    assert build_eval_transform(32, normalize=False)(enc).shape == (3, 32, 32)


def test_detectron2_and_mmcv_agree_on_the_exif_rule(tmp_path):
    """Images: upright in every stage (Detectron2, MMCV colour decode, the suite); label maps: as stored."""
    path = tmp_path / "x.jpg"
    upright = rotated_jpeg(path, 6)
    ours = decode_image(bytearray(path.read_bytes())).permute(1, 2, 0).numpy().astype(int)
    try:
        import detection  # noqa: F401
        from detectron2.data.detection_utils import read_image

        d2 = read_image(str(path), format="RGB")
        assert d2.shape == upright.shape and np.abs(d2.astype(int) - ours).mean() < 2
    except ImportError:
        pass
    try:
        import mmcv

        mm = mmcv.imfrombytes(path.read_bytes(), flag="color", channel_order="rgb")
        assert mm.shape == upright.shape and np.abs(mm.astype(int) - ours).mean() < 2
        label = tmp_path / "x.png"
        lab = Image.fromarray(np.arange(48 * 80, dtype=np.uint8).reshape(48, 80) % 13)
        exif = lab.getexif()
        exif[0x0112] = 6
        lab.save(label, exif=exif.tobytes())
        stored = mmcv.imfrombytes(label.read_bytes(), flag="unchanged", backend="pillow")
        assert stored.shape == (48, 80)  # mmseg's LoadAnnotations reads label maps as stored
    except ImportError:
        pass


def test_validators_compare_sizes_in_the_upright_frame(tmp_path):
    root = tmp_path / "ade" / "images" / "training"
    rotated_jpeg(root / "a.jpg", 6, (48, 80))  # stored 80 wide, upright 48 wide x 80 high
    labels = tmp_path / "ade" / "annotations" / "training"
    labels.mkdir(parents=True)
    Image.fromarray(np.ones((80, 48), np.uint8)).save(labels / "a.png")  # upright size: fine
    assert validate_ade20k(tmp_path / "ade", num_classes=3, splits=("training",))["training"] == 1
    Image.fromarray(np.ones((48, 80), np.uint8)).save(labels / "a.png")  # stored size: refused
    with pytest.raises(DatasetError, match="differs from its image a.jpg .48 x 80 upright"):
        validate_ade20k(tmp_path / "ade", num_classes=3, splits=("training",))
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="80 x 48 differs from a.jpg, 48 x 80 upright"):
        validate_coco_json(tmp_path / "c.json", root)


# ----------------------------------------------------------------------------- safe loading
def test_resume_checkpoints_load_weights_only(tmp_path):
    """RNG states are tensors and numbers now; an older checkpoint (numpy RNG array) still loads."""
    state = {"model": {}, "train_state": {"global_step": 1}, "rng": rng_state()}
    torch.save(state, tmp_path / "new.pth")
    torch.load(tmp_path / "new.pth", weights_only=True)  # raised before: numpy arrays are not weights
    expected = np.random.rand()
    set_rng_state(load_resume_file(tmp_path / "new.pth")["rng"])
    assert np.random.rand() == expected
    old = dict(state, rng={"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()})
    torch.save(old, tmp_path / "old.pth")
    expected = np.random.rand()
    set_rng_state(load_resume_file(tmp_path / "old.pth")["rng"])
    assert np.random.rand() == expected


def test_no_checkpoint_reader_runs_pickled_code(tmp_path, bad_folder, capsys):
    """A checkpoint that carries a pickled callable: resume (explicit and auto), the classification
    reader, Detectron2's and MMEngine's loaders never run it."""
    from pretrain.main import main

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "train_state": {"global_step": 2}, "extra": WritesMarker(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to resume from .*evil.pth.*posix.system"):
        load_resume_file(evil)
    root = bad_folder[0]
    out = tmp_path / "run"
    assert main(["--config", RECIPE, *opts(root, out, f"train.resume={evil}", "data.limit=32")]) == 1
    assert "refusing to resume" in capsys.readouterr().err
    out.mkdir(exist_ok=True)
    (out / "checkpoint-00000002.pth").write_bytes(evil.read_bytes())  # auto-resume: moved aside
    assert main(["--config", RECIPE, *opts(root, out, "data.limit=32", "train.epochs=1", "train.max_steps=1")]) == 0
    assert (out / "checkpoint-00000002.pth.corrupt").is_file()
    from classification.load import read_pretrained

    with pytest.raises(CheckpointError):
        read_pretrained(evil)
    try:
        import detection  # noqa: F401
        from detection.checkpointer import ViTDetCheckpointer

        with pytest.raises(Exception):
            ViTDetCheckpointer(torch.nn.Linear(2, 2))._load_file(str(evil))
        import pickle

        import numpy as np

        zoo = tmp_path / "zoo.pkl"  # a model-zoo pickle: arrays are read, a callable is refused
        zoo.write_bytes(pickle.dumps({"model": {"w": np.arange(3.0)}, "__author__": "test"}))
        assert ViTDetCheckpointer(torch.nn.Linear(2, 2))._load_file(str(zoo))["model"]["w"].tolist() == [0, 1, 2]
        caffe = tmp_path / "caffe2.pkl"
        caffe.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.ones(2)}}))
        assert list(ViTDetCheckpointer(torch.nn.Linear(2, 2))._load_file(str(caffe))["model"]) == ["conv1_w"]
        evil_pkl = tmp_path / "evil.pkl"
        evil_pkl.write_bytes(pickle.dumps({"model": {"w": WritesMarker(marker)}, "__author__": "x"}))
        with pytest.raises(CheckpointError, match="refusing to read .*evil.pkl.*system"):
            ViTDetCheckpointer(torch.nn.Linear(2, 2))._load_file(str(evil_pkl))
    except ImportError:
        pass
    try:
        from segmentation.runner_setup import load_mmengine_checkpoint

        with pytest.raises(CheckpointError):
            load_mmengine_checkpoint(str(evil))
    except ImportError:
        pass
    assert not marker.exists()


# ----------------------------------------------------------------------------- fault matrix
def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) first")
        time.sleep(0.05)
    raise AssertionError("timed out")


def logged_steps(out: Path) -> int:
    try:
        return max((r["step"] for r in train_records(out)), default=0)
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("entry,recipe", [("classification.finetune", FT), ("classification.linear_probe", LP)])
def test_transfer_sigkill_at_random_step_resumes_to_the_same_run(small_builtin, tmp_path, entry, recipe):
    """SIGKILL fine-tuning / linear probing at a random step; the same command resumes and gives an
    uninterrupted run's per-step losses and final metrics."""
    import importlib

    run = importlib.import_module(entry).run
    load = getattr(importlib.import_module(entry), "load_finetune_config" if "finetune" in entry else "load_probe_config")
    ckpt = tiny_backbone(tmp_path / "backbone.pth")
    extra = ("data.limit=48", f"checkpoint={ckpt}", "train.save_every_steps=2")
    ref = run(load(recipe, tiny_opts(small_builtin, tmp_path / "ref", *extra)))
    out = tmp_path / "run"
    kill_at = random.Random(SEED).randint(3, 10)
    proc = subprocess.Popen([sys.executable, "-m", entry, "--config", recipe, *tiny_opts(small_builtin, out, *extra)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: logged_steps(out) >= kill_at, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"FAULT_SEED={SEED}"
    resumed = run(load(recipe, tiny_opts(small_builtin, out, *extra)))
    assert resumed["resumed_from"], f"no checkpoint before step {kill_at} (FAULT_SEED={SEED})"
    a, b = train_records(out), train_records(tmp_path / "ref")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    torch.testing.assert_close(torch.tensor([r["loss"] for r in a]), torch.tensor([r["loss"] for r in b]),
                               rtol=1e-5, atol=1e-6)
    assert resumed["top1"] == pytest.approx(ref["top1"]) and resumed["top5"] == pytest.approx(ref["top5"])


CRASH_IN_SECOND_SAVE = r"""
import os, sys, torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and "checkpoint-" in getattr(f, "name", ""):  # the step-4 checkpoint: half, then die
        f.write(b"PK\x03\x04 half a checkpoint"); f.flush(); os.fsync(f.fileno())
        os._exit(17)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from classification.finetune import main
sys.exit(main(sys.argv[1:]))
"""


def test_crash_in_finetune_checkpoint_write_keeps_the_previous_one(small_builtin, tmp_path):
    from classification.finetune import load_finetune_config, run

    ckpt = tiny_backbone(tmp_path / "backbone.pth")
    extra = ("data.limit=48", f"checkpoint={ckpt}", "train.save_every_steps=2", "train.epochs=1")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_SECOND_SAVE, "--config", FT,
                           *tiny_opts(small_builtin, out, *extra)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    before = (out / "checkpoint-00000002.pth").read_bytes()
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == ["checkpoint-00000002.pth"]
    assert load_resume_file(out / "checkpoint-00000002.pth")["train_state"]["global_step"] == 2
    metrics = run(load_finetune_config(FT, tiny_opts(small_builtin, out, *extra)))
    assert metrics["resumed_from"].endswith("checkpoint-00000002.pth") and metrics["steps"] == 6
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert len(before) > 1000


def test_partial_or_corrupt_metrics_are_not_a_finished_stage(tmp_path):
    from analysis.reproduce.runner import run_stage, unfinished_reason
    from analysis.reproduce.stages import Stage

    path = tmp_path / "m" / "finetune" / "classification_metrics.json"
    write = f"import json, pathlib; pathlib.Path({str(path)!r}).write_text(json.dumps({{'task': 'finetune', " \
            f"'top1': 1.0, 'epochs': 2, 'epochs_done': 2}}))"
    stage = Stage("m", "finetune", [sys.executable, "-c", write], path)
    path.parent.mkdir(parents=True)
    for text, why in (('{"task": "finetune", "top1": 1.', "not valid JSON"), ("[1, 2]", "no 'task'"),
                      ('{"task": "finetune", "epochs": 2, "epochs_done": 1}', "1 of 2 epochs")):
        path.write_text(text)
        assert why in unfinished_reason(stage)
        assert run_stage(stage, tmp_path)["status"] == "done"  # ran again, not taken as done
        assert unfinished_reason(stage) is None
    seg = Stage("m", "segmentation", ["x", "train_cfg.max_iters=30"], tmp_path / "seg.json")
    seg.metrics.write_text('{"task": "ade20k_segmentation", "iterations": 10}')
    assert "10 of 30 iterations" in unfinished_reason(seg)


def reproduce_stub(out: Path, name: str, metrics: dict, nap: float | None = 0.0):
    """A stage whose process writes a cut-short metrics file, naps, then writes the whole file.

    The nap comes from the stage's environment (``STAGE_NAP`` when ``nap`` is None), not its argv: the
    rerun must ask for the same command, or skip-if-done rightly treats it as a stage with other inputs.
    """
    from analysis.reproduce.stages import METRICS, Stage

    path = out / "droppos" / name / METRICS[name]
    sleep = "float(os.environ.get('STAGE_NAP', '0'))" if nap is None else repr(nap)
    code = (f"import json, os, pathlib, time; p = pathlib.Path({str(path)!r}); p.parent.mkdir(parents=True, exist_ok=True); "
            f"p.write_text(json.dumps({metrics!r})[:20]); time.sleep({sleep}); p.write_text(json.dumps({metrics!r}))")
    return Stage("droppos", name, [sys.executable, "-c", code], path)


def fake_stages(args, out: Path, methods, profile=None) -> list:
    pretrain = {"task": "pretrain", "method": "droppos", "arch": "vit_tiny_patch8_64", "epochs": 1, "epochs_done": 1,
                "final": {"loss": 1.0}, "cost": {"gpu_hours": 0, "cpu_minutes": 0.1}}
    return [reproduce_stub(out, "pretrain", pretrain),
            reproduce_stub(out, "finetune", {"task": "finetune", "top1": 71.0, "top5": 99.0}, None)]


REPRODUCE = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import analysis.reproduce.main as reproduce
from test_robustness import fake_stages
reproduce.build_stages = fake_stages
reproduce.prepare_data = lambda root: None
sys.exit(reproduce.main(["--output", sys.argv[1], "--no-pictures", "--methods", "droppos"]))
"""


def test_reproduce_killed_during_a_stage_finishes_with_the_same_report(tmp_path, monkeypatch, capsys):
    """Kill ``analysis.reproduce`` (and its stage process) while a stage has written half its metrics
    file: the same command runs that stage again and writes the uninterrupted run's report."""
    import analysis.reproduce.main as reproduce

    monkeypatch.setattr(reproduce, "build_stages", fake_stages)
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)
    command = ["--no-pictures", "--methods", "droppos", "--output"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert reproduce.main([*command, str(ref)]) == 0
    proc = subprocess.Popen([sys.executable, "-c", REPRODUCE, str(out)], cwd=REPO,
                            env=dict(subprocess_env(), STAGE_NAP="60"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    partial = out / "droppos" / "finetune" / "classification_metrics.json"
    try:
        wait_for(partial.is_file, proc, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # reproduce and its stage process
        proc.wait(timeout=60)
    capsys.readouterr()
    assert reproduce.main([*command, str(out)]) == 0
    assert "droppos/finetune: not finished" in capsys.readouterr().out
    strip = lambda p: "\n".join(line for line in (p / "report.md").read_text().splitlines()
                                if str(p) not in line and "min" not in line)
    assert strip(out) == strip(ref)


def kill_when(cmd: list[str], ready, cwd: Path = REPO) -> None:
    """Start ``cmd``, SIGKILL it (and its workers) once ``ready()``; it must not have finished."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(ready, proc, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_detection_killed_part_way_resumes_and_finishes(tiny_coco_ade, tmp_path):
    """SIGKILL Detectron2 training after its first periodic checkpoint; ``--resume`` continues from it
    (weights-only load of model, optimizer, scheduler, iteration) and finishes with box and mask AP."""
    pytest.importorskip("detectron2")
    from detection.train_net import main  # the shims first
    from detectron2.engine import default_argument_parser

    out = tmp_path / "det"
    root = tiny_coco_ade
    opts = [f"dataloader.train.dataset.names.root={root}", f"dataloader.test.dataset.names.root={root}",
            f"dataloader.evaluator.dataset_name.root={root}", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0", "dataloader.train.total_batch_size=2", "model.backbone.net.depth=2",
            "model.backbone.net.window_block_indexes=[0]", "model.backbone.net.img_size=64",
            "model.backbone.square_pad=64", "optimizer.params.num_layers=2", "train.log_period=1",
            "train.checkpointer.period=2", "train.max_iter=40", f"train.output_dir={out}"]
    config = str(REPO / "detection/configs/mask_rcnn_vitdet_tiny_builtin.py")
    kill_when([sys.executable, "-m", "detection.train_net", "--config-file", config, *opts],
              lambda: (out / "last_checkpoint").is_file())
    assert not (out / "detection_metrics.json").exists()
    saved = (out / "last_checkpoint").read_text().strip()
    record = main(default_argument_parser().parse_args(["--config-file", config, "--resume", *opts[:-2],
                                                        "train.max_iter=4", f"train.output_dir={out}"]))
    assert "Starting training from iteration" in (out / "log.txt").read_text() and saved.startswith("model_")
    assert record["iterations"] == 4 and json.loads((out / "detection_metrics.json").read_text())["iterations"] == 4


def test_segmentation_killed_part_way_resumes_and_finishes(tiny_coco_ade, tmp_path):
    """SIGKILL MMEngine training after its first checkpoint; ``--resume`` continues from it and finishes."""
    pytest.importorskip("mmseg")
    from segmentation import train as seg_train

    work = tmp_path / "seg"
    data = tiny_coco_ade / "ade20k" / "ADEChallengeData2016"
    config = str(REPO / "segmentation/configs/upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py")
    opts = {"train_dataloader.dataset.data_root": str(data), "val_dataloader.dataset.data_root": str(data),
            "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
            "train_dataloader.persistent_workers": False, "val_dataloader.num_workers": 0,
            "val_dataloader.persistent_workers": False, "model.backbone.depth": 2,
            "model.backbone.out_indices": (0, 0, 1, 1), "paramwise_cfg.num_layers": 2,
            "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1}
    cli = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in opts.items()
           if not k.startswith("paramwise")]
    kill_when([sys.executable, "segmentation/train.py", config, "--work-dir", str(work), "--cfg-options", *cli,
               "train_cfg.max_iters=400", "train_cfg.val_interval=400", "optim_wrapper.paramwise_cfg.num_layers=2"],
              lambda: (work / "iter_2.pth").is_file() and (work / "last_checkpoint").is_file())
    assert not (work / "segmentation_metrics.json").exists()
    args = seg_train.get_args_parser().parse_args([config, "--work-dir", str(work), "--resume"])
    args.cfg_options = {k: v for k, v in opts.items() if not k.startswith("paramwise")}
    args.cfg_options.update({"train_cfg.max_iters": 4, "train_cfg.val_interval": 4,
                             "optim_wrapper.paramwise_cfg.num_layers": 2})
    seg_train.main(args)
    assert json.loads((work / "segmentation_metrics.json").read_text())["iterations"] == 4
    assert "resumed epoch: 0, iter: " in sorted(work.glob("*/*.log"))[-1].read_text()
