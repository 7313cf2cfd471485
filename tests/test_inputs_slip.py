"""Odd but real inputs that used to slip through: another run's folder, symlink loops, data the
validator passed but training refused, silently wrong pixel or weight values, malformed COCO."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_classification import tiny_backbone, tiny_opts, train_losses  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LP = "linear_probe_vit_tiny_builtin.yaml"
PROBE = ("probe.cache_features=true", "data.limit=40", "train.save_every_steps=2")


def probe(small_builtin, out: Path, *extra: str) -> dict:
    from classification.linear_probe import load_probe_config, run

    return run(load_probe_config(LP, tiny_opts(small_builtin, out, *PROBE, *extra)))


# ------------------------------------------------------------------ another run's output folder
def two_backbones(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    tiny_backbone(a, seed=0)
    tiny_backbone(b, seed=1)
    return a, b


def test_transfer_refuses_to_resume_another_checkpoints_run(small_builtin, tmp_path, capsys):
    """The README's commands share one default output folder: a second backbone must not resume the first's run."""
    from classification.linear_probe import main as probe_main
    from pretrain.engine.config import ConfigError

    a, b = two_backbones(tmp_path)
    out = tmp_path / "probe"
    probe(small_builtin, out, f"checkpoint={a}", "train.max_steps=2")
    assert (out / "checkpoint-00000002.pth").is_file()
    before = (out / "config.yaml").read_text()

    with pytest.raises(ConfigError) as err:  # another checkpoint: both named, nothing touched
        probe(small_builtin, out, f"checkpoint={b}")
    assert f"checkpoint: {a} -> {b}" in str(err.value) and "train.resume=none" in str(err.value)
    assert (out / "config.yaml").read_text() == before and (out / "checkpoint-00000002.pth").is_file()

    with pytest.raises(ConfigError, match=r"optim.blr: 40.0 -> 0.2"):  # another recipe
        probe(small_builtin, out, f"checkpoint={a}", "optim.blr=0.2")
    shutil.copytree(small_builtin / "imagenet", tmp_path / "other")
    with pytest.raises(ConfigError, match=r"data.path: .*imagenet -> .*other"):  # other data
        probe(small_builtin, out, f"checkpoint={a}", f"data.path={tmp_path / 'other'}")

    a.write_bytes(b.read_bytes())  # the same path now holds another backbone
    with pytest.raises(ConfigError, match=r"checkpoint file content \(sha256\)"):
        probe(small_builtin, out, f"checkpoint={a}")
    capsys.readouterr()
    argv = ["--config", LP, *tiny_opts(small_builtin, out, *PROBE, f"checkpoint={b}")]
    assert probe_main(argv) == 2  # the command line: one line, exit 2
    err_text = capsys.readouterr().err.strip()
    assert err_text.startswith("config error: train.output_dir=") and "\n" not in err_text

    (out / "checkpoint-00000003.pth").write_bytes(b"not a checkpoint")  # the newest, unreadable: the next is compared
    with pytest.raises(ConfigError, match="holds checkpoints of a different run"):
        probe(small_builtin, out, f"checkpoint={b}")
    (out / "checkpoint-00000003.pth").unlink()
    fresh = probe(small_builtin, out, f"checkpoint={b}", "train.resume=none")  # told to start afresh
    assert fresh["resumed_from"] is None and fresh["checkpoint"] == str(b) and fresh["steps"] == 10
    assert (out / "checkpoint-00000002.pth.discarded").is_file()
    ref = probe(small_builtin, tmp_path / "ref", f"checkpoint={b}")
    torch.testing.assert_close(torch.tensor(train_losses(out)), torch.tensor(train_losses(tmp_path / "ref")))
    assert fresh["top1"] == pytest.approx(ref["top1"])


def test_same_run_still_resumes_with_its_resumable_changes(small_builtin, tmp_path):
    """Where it saves, how often, the worker count and skip_bad may change; a relative data path equals its absolute one."""
    import os

    a = tmp_path / "a.pth"
    tiny_backbone(a)
    out = tmp_path / "probe"
    probe(small_builtin, out, f"checkpoint={a}", "train.max_steps=4")
    identity = torch.load(out / "checkpoint-00000004.pth", weights_only=True)["run_identity"]  # who wrote it
    assert identity["config"]["checkpoint"] == str(a) and identity["total_batch"] == 8
    assert identity["checkpoint_sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    cwd = os.getcwd()
    os.chdir(small_builtin)
    try:
        m = probe(small_builtin, out, f"checkpoint={a}", "data.path=imagenet", "data.skip_bad=true",
                  "train.keep_checkpoints=3", "train.batch_size=4", "train.accum_iter=2")
    finally:
        os.chdir(cwd)
    assert m["resumed_from"].endswith("checkpoint-00000004.pth")


def test_explicit_resume_of_another_run_continues_and_says_so(small_builtin, tmp_path, capsys):
    a, b = two_backbones(tmp_path)
    first = tmp_path / "first"
    probe(small_builtin, first, f"checkpoint={a}", "train.max_steps=2")
    capsys.readouterr()
    m = probe(small_builtin, tmp_path / "second", f"checkpoint={b}", f"train.resume={first / 'checkpoint-00000002.pth'}")
    assert m["resumed_from"].endswith("checkpoint-00000002.pth")
    out = capsys.readouterr().out
    assert "note: train.resume=" in out and f"continues a run with other settings (checkpoint: {a} -> {b};" in out


# ------------------------------------------------------------------ folders: symlink loops, empty parts
def _image_folder(root: Path, classes: dict[str, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_symlink_loops_count_each_file_once(tmp_path, capsys):
    from pretrain.data.imagefolder import ImageFolderDataset
    from pretrain.data.validate import main as validate_main, validate_imagefolder

    root = tmp_path / "data"
    _image_folder(root / "train", {"a": 3, "b": 2})
    (root / "train" / "a" / "again").symlink_to(root / "train" / "a", target_is_directory=True)  # a loop
    (root / "train" / "b" / "up").symlink_to(root / "train", target_is_directory=True)  # a loop through the parent
    with pytest.warns(UserWarning, match=r"symbolic link loops not followed again.*a/again -> .*train/a"):
        ds = ImageFolderDataset(root, "train")
    assert len(ds) == 5 and len({p for p, _ in ds.samples}) == 5  # 3 + 2 files, once each (was 21x)
    summary = validate_imagefolder(root)
    assert summary["train"]["images"] == 5 and len(summary["train"]["symlink_loops"]) == 2
    assert validate_main(["imagefolder", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train: 5 images in 2 classes" in out and out.count("note: symbolic link loop") == 2


@pytest.mark.parametrize("case", ["empty_root", "empty_split", "class_without_images", "classes_all_empty"])
def test_validator_refuses_what_training_refuses(tmp_path, case, capsys):
    """The validator passed folders the loaders refuse; now both apply one rule set."""
    from pretrain.data.imagefolder import ImageFolderDataset
    from pretrain.data.validate import DatasetError, main as validate_main, validate_imagefolder

    root = tmp_path / "data"
    root.mkdir()
    split = "train"
    if case == "empty_split":
        _image_folder(root / "train", {"a": 2})
        (root / "val").mkdir()
        split = "val"
    elif case == "class_without_images":
        _image_folder(root / "train", {"a": 2})
        (root / "train" / "b").mkdir()
    elif case == "classes_all_empty":
        (root / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as refused:  # training / evaluation refuse ...
        ImageFolderDataset(root, split if case != "empty_root" else None)
    with pytest.raises(DatasetError):  # ... and so does the validator
        validate_imagefolder(root)
    assert validate_main(["imagefolder", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and ("no images" in out or "without images" in out), out
    if case == "class_without_images":
        assert str(refused.value) in out  # the same message, naming the folder


# ------------------------------------------------------------------ a 4000 x 1 image in detection / segmentation
@pytest.fixture(scope="module")
def thin_coco_ade(tmp_path_factory) -> Path:
    """Built-in COCO and ADE20K folders whose first training image is 4000 x 1 (json and label map to match)."""
    import numpy as np
    from PIL import Image

    from pretrain.data.synthetic import make_builtin_dataset

    root = tmp_path_factory.mktemp("thin")
    make_builtin_dataset(root, seed=0, formats=("coco", "ade20k"), coco_train=2, coco_val=1, ade_train=2, ade_val=1,
                         coco_size=(64, 80), ade_size=(64, 96))
    thin = np.full((1, 4000, 3), 128, np.uint8)
    js = root / "coco/annotations/instances_train2017.json"
    data = json.loads(js.read_text())
    img = data["images"][0]
    Image.fromarray(thin).save(root / "coco/train2017" / img["file_name"])
    img["width"], img["height"] = 4000, 1
    for ann in data["annotations"]:
        if ann["image_id"] == img["id"]:
            ann.update(bbox=[0, 0, 50, 1], area=50.0, segmentation=[[0, 0, 50, 0, 50, 1, 0, 1]])
    js.write_text(json.dumps(data))
    ade = root / "ade20k/ADEChallengeData2016"
    first = sorted((ade / "images/training").iterdir())[0]
    Image.fromarray(thin).save(first)
    Image.fromarray(np.ones((1, 4000), np.uint8)).save(ade / "annotations/training" / f"{first.stem}.png")
    return root


def test_validators_refuse_an_image_no_training_resize_survives(thin_coco_ade, capsys):
    from pretrain.data.validate import DatasetError, main as validate_main, validate_ade20k, validate_coco_json

    js = thin_coco_ade / "coco/annotations/instances_train2017.json"
    name = json.loads(js.read_text())["images"][0]["file_name"]
    with pytest.raises(DatasetError, match=rf"{name}: cannot train on it: it is 4000 x 1 pixels, an aspect ratio of 4000:1"):
        validate_coco_json(js)  # from the json's width / height alone
    assert validate_main(["coco", str(js), "--image-root", str(thin_coco_ade / "coco/train2017")]) == 1
    ade = thin_coco_ade / "ade20k/ADEChallengeData2016"
    with pytest.raises(DatasetError, match=r"ADE_train_\d+\.jpg: cannot train on it: it is 4000 x 1 pixels"):
        validate_ade20k(ade, num_classes=12)
    assert validate_main(["coco", str(thin_coco_ade / "coco/annotations/instances_val2017.json")]) == 0


def test_detection_loader_names_the_thin_image(thin_coco_ade):
    """Registration without validation (or a json that lies about the size): the loader applies the same rule."""
    pytest.importorskip("detectron2")
    from detection.compat import name_unreadable_images
    from detectron2.data import detection_utils

    from pretrain.data.image_shape import UnusableImageError

    name_unreadable_images()
    images = sorted((thin_coco_ade / "coco/train2017").iterdir())
    with pytest.raises(UnusableImageError, match=rf"cannot train on image file {images[0]}: it is 4000 x 1 pixels"):
        detection_utils.read_image(str(images[0]), format="BGR")
    assert min(detection_utils.read_image(str(images[1]), format="BGR").shape[:2]) > 1  # a normal image passes


def test_segmentation_training_names_the_thin_image(thin_coco_ade, tmp_path, capsys):
    """MMSeg training with the folder check off: one error line naming the file (was a cv2.error traceback)."""
    pytest.importorskip("mmseg")
    from segmentation import train as seg_train
    from segmentation.runner_setup import run_entry

    ade = thin_coco_ade / "ade20k/ADEChallengeData2016"
    config = str(Path(__file__).resolve().parents[1] / "segmentation/configs/upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py")
    args = seg_train.get_args_parser().parse_args([config, "--work-dir", str(tmp_path / "seg"), "--check-data", "off"])
    args.cfg_options = {"train_dataloader.dataset.data_root": str(ade), "val_dataloader.dataset.data_root": str(ade),
                        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
                        "train_dataloader.persistent_workers": False, "val_dataloader.num_workers": 0,
                        "val_dataloader.persistent_workers": False, "model.backbone.depth": 2,
                        "model.backbone.out_indices": (0, 0, 1, 1), "optim_wrapper.paramwise_cfg.num_layers": 2,
                        "train_cfg.max_iters": 2, "train_cfg.val_interval": 2}
    capsys.readouterr()
    assert run_entry(seg_train.main, args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    first = sorted((ade / "images/training").iterdir())[0]
    assert err[-1].startswith(f"error: cannot train on image file {first}: it is 4000 x 1 pixels")


# ------------------------------------------------------------------ silently wrong values
def test_16bit_greyscale_png_decodes_to_its_grey_levels(tmp_path):
    """PIL's convert('RGB') clips 16-bit pixels at 255: the picture came out pure white."""
    import numpy as np
    from PIL import Image

    from pretrain.data.decode import load_image, to_8bit

    wide = (np.arange(48 * 40).reshape(48, 40) * 34).astype(np.uint16)  # 0 .. 65246
    path = tmp_path / "grey16.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode == "I;16"
    expected = torch.from_numpy(((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    tensor = load_image(path, "tensor")
    assert tensor.shape == (3, 48, 40) and torch.equal(tensor[0], expected) and torch.equal(tensor[2], expected)
    assert torch.equal(torch.from_numpy(np.array(load_image(path, "pil"))[..., 1]), expected)
    assert torch.equal(load_image(path, "encoded").decode(), tensor)
    assert tensor.float().mean() == pytest.approx(127.1, abs=1.0)  # mid grey on average, not white
    as_int = to_8bit(Image.fromarray(wide.astype(np.int32)))  # mode I (how some TIFFs open)
    assert as_int.mode == "L" and torch.equal(torch.from_numpy(np.array(as_int)), expected)
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    assert to_8bit(rgb) is rgb

    pytest.importorskip("detectron2")
    from detection.compat import name_unreadable_images
    from detectron2.data import detection_utils

    name_unreadable_images()
    bgr = detection_utils.read_image(str(path), format="BGR")
    assert bgr.dtype == np.uint8 and torch.equal(torch.from_numpy(bgr[..., 0].copy()), expected)


@pytest.mark.parametrize("flaw", ["int32", "nan"])
def test_weights_that_are_not_float_or_not_finite_are_refused(tmp_path, capsys, flaw):
    """An int32 safetensors export 'loaded strictly' and k-NN ran on it; NaN weights give NaN features."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from classification.load import read_pretrained
    from pretrain.models.vit import create_vit
    from pretrain.weights import CheckpointError, load_encoder
    from pretrain.weights.export import export_weights
    from tools.convert_checkpoint import main as convert

    torch.manual_seed(0)
    src = tmp_path / "backbone.pth"
    torch.save({"model": create_vit("tiny", img_size=32, patch_size=8).state_dict(), "format": "droppos-backbone"}, src)
    good = tmp_path / "good.safetensors"
    export_weights(src, good, "safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(good))
    if flaw == "int32":
        tensors = {k: (v * 100).to(torch.int32) for k, v in tensors.items()}
        expected = r"encoder weights must be floating point; \d+ tensors are not: .*\(int32\)"
    else:
        tensors["blocks.1.mlp.fc1.weight"][3, 4] = float("nan")
        expected = r"encoder weights hold NaN or Inf values in 1 tensors: blocks.1.mlp.fc1.weight"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)  # the card comes along: only the values are wrong
    with pytest.raises(CheckpointError, match=rf"{bad}: {expected}"):
        load_encoder(bad)
    with pytest.raises(CheckpointError, match=expected):
        read_pretrained(str(bad))  # what fine-tuning, the probes and k-NN read
    capsys.readouterr()
    assert convert([str(bad), str(tmp_path / "out.pth"), "--to", "timm"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and not (tmp_path / "out.pth").exists()
    assert load_encoder(good)["patch_embed.proj.weight"].dtype == torch.float32


# ------------------------------------------------------------------ malformed COCO fields: one line each
_COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12.0,
                          "segmentation": [[1, 2, 4, 2, 4, 6]]}],
         "categories": [{"id": 1, "name": "x"}]}


def _coco_variant(case: str, path: Path) -> str:
    """Write one malformed COCO file; return the problem its message must name."""
    import bz2
    import copy
    import gzip

    data = copy.deepcopy(_COCO)
    ann = data["annotations"][0]
    if case == "gzip":
        path.write_bytes(gzip.compress(json.dumps(data).encode()))
        return "compressed with gzip"
    if case == "bzip2":
        path.write_bytes(bz2.compress(json.dumps(data).encode()))
        return "compressed with bzip2"
    if case == "latin1":
        path.write_bytes(json.dumps(data).replace('"x"', '"caf\\u00e9"').encode("utf-8").decode("unicode_escape")
                         .encode("latin-1"))
        return "not UTF-8 text (byte 0xe9"
    if case == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
        return "nested too deeply"
    changes = {"image_id_list": ("image_id", [1], "image_id must be an integer, got [1]"),
               "category_id_dict": ("category_id", {"a": 1}, "category_id must be an integer, got {'a': 1}"),
               "rle_size_number": ("segmentation", {"counts": "abc", "size": 5}, "RLE 'size' must be [height, width]"),
               "rle_counts_number": ("segmentation", {"counts": 5, "size": [48, 64]}, "RLE 'counts' must be")}
    key, value, message = changes[case]
    ann[key] = value
    path.write_text(json.dumps(data))
    return message


@pytest.mark.parametrize("case", ["gzip", "bzip2", "latin1", "nested", "image_id_list", "category_id_dict",
                                  "rle_size_number", "rle_counts_number"])
def test_malformed_coco_fields_are_one_problem_line(tmp_path, capsys, case):
    from pretrain.data.validate import DatasetError, main as validate_main, validate_coco_json

    path = tmp_path / "instances.json"
    message = _coco_variant(case, path)
    with pytest.raises(DatasetError) as err:
        validate_coco_json(path)
    assert err.value.problems and message in err.value.problems[0], err.value.problems
    assert validate_main(["coco", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAILED: {path}: 1 problem(s)" and message in out[1]


# ------------------------------------------------------------------ Ctrl-C during a sweep
INTERRUPTED_RUN = r"""
import os, sys
from pathlib import Path
from analysis.reproduce.interrupt import run_interruptible
from analysis.reproduce.runner import run_stages
from analysis.reproduce.stages import Stage

out, jobs = Path(sys.argv[1]), int(sys.argv[2])
sleeper = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(300)"
stages = [Stage(method=f"p{i}", name="pretrain", command=[sys.executable, "-c", sleeper],
                metrics=out / f"p{i}" / "pretrain" / "pretrain_metrics.json") for i in range(2)]
sys.exit(run_interruptible(lambda: run_stages(stages, out, jobs=jobs) and 0))
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_the_stages_with_one_line(tmp_path, jobs):
    """SIGINT to the sweep's process alone (as ``kill -INT``): its stage processes stop, exit 130, one line."""
    import re
    import signal
    import subprocess
    import time

    from test_faults import REPO, subprocess_env

    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RUN, str(tmp_path), str(jobs)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [tmp_path / f"p{i}" / "logs" / "pretrain.log" for i in range(jobs)]

    def pids() -> list[int]:
        found = [re.search(r"^pid (\d+)$", p.read_text(), re.M) if p.is_file() else None for p in logs]
        return [int(m.group(1)) for m in found if m]

    deadline = time.time() + 120
    while len(pids()) < jobs and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    children = pids()
    assert len(children) == jobs, (proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("interrupted (Ctrl-C): stopped") and "run the same command again" in lines[-1]
    assert "Traceback" not in err, err
    for pid in children:  # gone (or a zombie waiting for this container's init to reap it)
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        assert "State:\tZ" in state, state
    if jobs == 2:  # the pool's stages are recorded as interrupted, not as failures of their own
        status = json.loads((tmp_path / "p0" / "stage_status.json").read_text())
        assert status["pretrain"]["reason"] == "interrupted (Ctrl-C)"
