"""tools.prepare_data DATASET: tiny archives in each official layout, prepared and read back by the loaders.

Every archive here is built in the official layout (ImageNet's nested train tar, flat val
tar + devkit, the Kaggle tree + CSV, COCO's zips, ADE's zip, ImageNet-R / -A / -C / V2 /
Sketch), prepared through the command line, and the result is read by the suite's
ImageFolder, Detectron2's builtin ``coco_2017_*`` registration and MMSeg's
``ADE20KDataset``, with each image's label checked through its colour (class k is drawn
in colour k). Bad inputs each end in one ``error:`` line with nothing in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data.imagefolder import ImageFolderDataset
from tools.prepare.imagenet_labels import imagenet_wnids, timm_info
from tools.prepare_data import get_args_parser, main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_archives import (  # noqa: E402
    WNIDS,
    colour_label,
    jpeg,
    make_ade,
    make_coco,
    make_devkit,
    make_train_tar,
    make_val,
    tar_bytes,
)


def run_cli(*argv: str) -> dict:
    return main(get_args_parser().parse_args(list(argv) + ["--no-progress"]))


def fails(capsys, *argv: str) -> str:
    """Run a command that must fail: exit 1 and exactly one ``error:`` line on stderr."""
    with pytest.raises(SystemExit) as exc:
        run_cli(*argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """{relative path: md5} of every file under ``root`` (the manifest left out)."""
    return {p.relative_to(root).as_posix(): digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "prepared.json"}


def check_labels(root: Path, split: str | None, wnids: list[str]) -> ImageFolderDataset:
    ds = ImageFolderDataset(root, split)
    assert ds.classes == sorted(ds.classes)
    for (path, target), k in zip(ds.samples, range(len(ds))):
        img, t = ds[k]
        assert t == target and wnids.index(ds.classes[t]) == colour_label(img), path
    return ds


@pytest.fixture
def official(tmp_path):
    """The three official ImageNet archives, tiny."""
    src = tmp_path / "src"
    src.mkdir()
    names = make_train_tar(src / "ILSVRC2012_img_train.tar")
    val, labels = make_val()
    (src / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    make_devkit(src / "ILSVRC2012_devkit_t12.tar.gz", labels)
    return src, names, labels


# ----------------------------------------------------------------------------- ImageNet-1K


def test_imagenet_official_archives(official, tmp_path, capsys):
    src, names, labels = official
    before = {p.name: digest(p) for p in src.iterdir()}
    root = tmp_path / "imagenet"
    run_cli("imagenet", "--from", *map(str, sorted(src.iterdir())), "--to", str(root), "--no-verify",
            "--allow-partial", "--workers", "1", "--lowshot", "50")
    out = capsys.readouterr().out
    assert "imagenet train wrote" in out and "(12 images, 3 classes)" in out and "(6 images, 3 classes)" in out
    train = check_labels(root, "train", WNIDS)
    assert train.classes == WNIDS and len(train) == 12
    assert sorted(Path(p).name for p, _ in train.samples) == sorted(n for v in names.values() for n in v)
    val = check_labels(root, "val", WNIDS)
    by_name = {Path(p).name: val.classes[t] for p, t in val.samples}
    assert by_name == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": WNIDS[c] for i, c in enumerate(labels)}
    manifest = json.loads((root / "prepared.json").read_text())
    assert manifest["units"]["train"] == {"images": 12, "classes": 3, "source": str((src / "ILSVRC2012_img_train.tar").resolve())}
    assert manifest["classes"] == WNIDS and manifest["partial"] is True
    assert manifest["class_names"][WNIDS[1]] == "class 1, name 1"
    assert not (root / ".prepare_data" / "imagenet").exists()
    assert {p.name: digest(p) for p in src.iterdir()} == before  # sources untouched
    lines = (root / "lowshot" / "50percent.txt").read_text().split()
    assert len(lines) == 6 and {line.split("/")[0] for line in lines} == set(WNIDS)
    assert all((root / "train" / line).is_file() for line in lines)
    # the suite's classification loader reads the prepared val split
    from omegaconf import OmegaConf

    from classification.data import eval_dataset

    cfg = OmegaConf.create({"data": {"path": str(root), "val_split": "val", "crop_pct": 0.875, "skip_bad": False,
                                     "limit": 0}, "model": {"img_size": 16}})
    ds = eval_dataset(cfg)
    assert len(ds) == 6 and ds[0][0].shape[-2:] == (16, 16)
    # a second run keeps the complete target
    run_cli("imagenet", "--from", *map(str, sorted(src.iterdir())), "--to", str(root), "--no-verify",
            "--allow-partial", "--workers", "1")
    assert "imagenet train kept" in capsys.readouterr().out


def test_lowshot_lists(tmp_path, official, capsys):
    src, names, _ = official
    root = tmp_path / "in"
    run_cli("imagenet", "--from", str(src / "ILSVRC2012_img_train.tar"), "--to", str(root), "--no-verify",
            "--allow-partial", "--workers", "1")
    run_cli("imagenet-lowshot", "--from", str(root), "--to", str(tmp_path / "a"), "--percent", "25", "--seed", "3")
    run_cli("imagenet-lowshot", "--from", str(root), "--to", str(tmp_path / "b"), "--percent", "25", "--seed", "3")
    a = (tmp_path / "a" / "lowshot" / "25percent.txt").read_text()
    assert a == (tmp_path / "b" / "lowshot" / "25percent.txt").read_text()  # reproducible
    assert len(a.split()) == 3  # max(1, round(0.25 * 4)) per class
    published = tmp_path / "1percent.txt"  # SimCLR's format: file names, the class is the prefix
    published.write_text("".join(f"{v[0]}\n" for v in names.values()))
    run_cli("imagenet-lowshot", "--from", str(root), "--to", str(root), "--subset-file", str(published))
    assert (root / "lowshot" / "1percent.txt").read_text().split() == [f"{w}/{v[0]}" for w, v in names.items()]
    record = json.loads((root / "lowshot" / "lowshot.json").read_text())["1percent"]
    assert record["kind"] == "published list" and record["images"] == 3 and record["classes"] == 3
    published.write_text("n01440764_999.JPEG\n")
    assert "1percent.txt line 1: n01440764_999.JPEG is not in the train folder" in fails(
        capsys, "imagenet-lowshot", "--from", str(root), "--to", str(root), "--subset-file", str(published))


@pytest.mark.parametrize("packed", [False, True])
def test_imagenet_kaggle_layout(tmp_path, packed, capsys):
    """The Kaggle download (extracted or zipped): flat val folder labelled by LOC_val_solution.csv."""
    val, labels = make_val(5)
    files = {f"ILSVRC/Data/CLS-LOC/train/{w}/{w}_{i}.JPEG": jpeg(k) for k, w in enumerate(WNIDS) for i in range(2)}
    files.update({f"ILSVRC/Data/CLS-LOC/val/{n}": d for n, d in val.items()})
    csv = "ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{WNIDS[c]} 1 2 30 40 {WNIDS[c]} 5 6 7 8\n" for i, c in enumerate(labels))
    files["LOC_val_solution.csv"] = csv.encode()
    kaggle = tmp_path / ("kaggle.zip" if packed else "kaggle")
    if packed:
        with zipfile.ZipFile(kaggle, "w") as z:
            for n, d in files.items():
                z.writestr(n, d)
    else:
        for n, d in files.items():
            (kaggle / n).parent.mkdir(parents=True, exist_ok=True)
            (kaggle / n).write_bytes(d)
    root = tmp_path / "imagenet"
    run_cli("imagenet", "--from", str(kaggle), "--to", str(root), "--allow-partial", "--workers", "1")
    assert len(check_labels(root, "train", WNIDS)) == 6
    val_ds = check_labels(root, "val", WNIDS)
    assert {Path(p).name: val_ds.classes[t] for p, t in val_ds.samples} == {
        f"ILSVRC2012_val_{i + 1:08d}.JPEG": WNIDS[c] for i, c in enumerate(labels)}
    assert json.loads((root / "prepared.json").read_text())["sources"]["kaggle"]["verified"] is False


# ----------------------------------------------------------------------------- bad input


def _nothing_in_place(root: Path) -> None:
    assert not (root / "train").exists() and not (root / "val").exists() and not (root / "prepared.json").exists()


def test_bad_inputs_one_line_each(tmp_path, official, capsys, monkeypatch):
    src, _, labels = official
    root = tmp_path / "out"
    train, val, devkit = (str(src / n) for n in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                                                  "ILSVRC2012_devkit_t12.tar.gz"))
    common = ["--to", str(root), "--allow-partial", "--workers", "1"]
    # a checksum mismatch (the tiny archives carry the official names)
    assert "checksum mismatch for ILSVRC2012_img_train.tar: md5" in fails(capsys, "imagenet", "--from", train, *common)
    common.append("--no-verify")
    # a truncated archive
    cut = tmp_path / "cut" / "ILSVRC2012_img_train.tar"
    cut.parent.mkdir()
    data = Path(train).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in fails(capsys, "imagenet", "--from", str(cut), *common)
    # the val tar given as train
    line = fails(capsys, "imagenet", "--from", f"train={val}", *common)
    assert "given as the train archive, but it holds flat val images" in line and "ILSVRC2012_img_val.tar" in line
    # a ground truth with the wrong number of lines
    short = tmp_path / "short" / "ILSVRC2012_devkit_t12.tar.gz"
    short.parent.mkdir()
    make_devkit(short, labels[:-1])
    assert "has 5 labels (lines), fewer than the 6 val images" in fails(capsys, "imagenet", "--from", val, str(short),
                                                                        *common)
    long = tmp_path / "long" / "ILSVRC2012_devkit_t12.tar.gz"
    long.parent.mkdir()
    make_devkit(long, labels, extra_lines=1)
    strict = [c for c in common if c != "--allow-partial"]
    assert "has 7 labels (lines), but" in fails(capsys, "imagenet", "--from", val, str(long), *strict)
    # a Kaggle CSV with an unknown wnid
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n")
    assert "LOC_val_solution.csv line 2: unknown wnid 'n99999999'" in fails(
        capsys, "imagenet", "--from", val, "--val-labels", str(csv), *common)
    _nothing_in_place(root)
    # a full disk: refused before writing, and a write failing with ENOSPC midway
    from tools.prepare import staging

    monkeypatch.setattr(staging.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    assert "not enough disk space on" in fails(capsys, "imagenet", "--from", train, *common)
    monkeypatch.undo()
    from tools.prepare.archives import TarArchive

    def full(self, member, dest):
        raise OSError(28, "No space left on device", str(dest))

    monkeypatch.setattr(TarArchive, "copy_to", full)
    line = fails(capsys, "imagenet", "--from", val, devkit, *common)
    assert line.startswith("error: disk full while writing") and "a rerun resumes" in line
    monkeypatch.undo()
    _nothing_in_place(root)
    # a target on a read-only path
    if os.geteuid() == 0:
        readonly = Path("/sys/droppos_prepare_test")  # sysfs: even root cannot create folders there
    else:
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o555)
    line = fails(capsys, "imagenet", "--from", train, "--to", str(readonly / "imagenet"), "--no-verify", "--workers", "1")
    assert "cannot write" in line and "choose a writable --to" in line


def test_existing_target_left_alone(tmp_path, official, capsys):
    src, _, _ = official
    root = tmp_path / "imagenet"
    (root / "train" / "mine").mkdir(parents=True)
    args = ["imagenet", "--from", str(src / "ILSVRC2012_img_train.tar"), "--to", str(root), "--no-verify",
            "--allow-partial", "--workers", "1"]
    assert "was not written by tools.prepare_data" in fails(capsys, *args)
    assert (root / "train" / "mine").is_dir()
    run_cli(*args, "--overwrite")
    assert sorted(p.name for p in (root / "train").iterdir()) == WNIDS
    strict = [a for a in args if a != "--allow-partial"] + ["--overwrite"]
    line = fails(capsys, *strict)
    assert "12 images in 3 classes, the published count is 1,281,167 in 1000" in line and "--allow-partial" in line
    assert sorted(p.name for p in (root / "train").iterdir()) == WNIDS  # the complete tree stays


# ----------------------------------------------------------------------------- kill -9


def test_kill9_resume(tmp_path):
    """kill -9 the run at random points (each after some classes are staged); the rerun finishes the same tree."""
    src = tmp_path / "src"
    src.mkdir()
    wnids = imagenet_wnids()[:16]
    make_train_tar(src / "ILSVRC2012_img_train.tar", wnids, per_class=24, noise=60)
    val, labels = make_val(64, wnids)
    (src / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    csv = src / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{wnids[c]} 1 2 3 4\n" for i, c in enumerate(labels)))
    args = ["imagenet", "--from", *map(str, sorted(src.iterdir())), "--no-verify", "--allow-partial",
            "--workers", "2", "--skip-validate"]
    ref = tmp_path / "ref"
    run_cli(*args, "--to", str(ref))
    argv = [sys.executable, "-m", "tools.prepare_data", *args, "--no-progress"]
    root = tmp_path / "killed"
    rng = random.Random(int(time.time()))
    staged = root / ".prepare_data" / "imagenet"
    kills = []
    for split, n in (("train", len(wnids)), ("val", len(set(labels)))):
        target = rng.randint(1, n - 1)  # kill once this many class folders are staged
        proc = subprocess.Popen(argv + ["--to", str(root)], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            folder = staged / split
            if folder.is_dir() and len(os.listdir(folder)) >= target:
                os.kill(proc.pid, signal.SIGKILL)
                kills.append(split)
                break
            time.sleep(0.001)
        proc.wait()
        manifest = json.loads((root / "prepared.json").read_text()) if (root / "prepared.json").exists() else {}
        assert (root / "train").exists() == ("train" in manifest.get("units", {}))  # in place = recorded, complete
        assert not (root / "val").exists() or "val" in manifest["units"]
    assert kills  # at least one run died mid-way (the others may have finished first)
    subprocess.run(argv + ["--to", str(root)], cwd=REPO, check=True, capture_output=True)
    assert tree(root) == tree(ref)
    assert not (root / ".prepare_data" / "imagenet").exists()
    assert len(list((root / "train").rglob("*.JPEG"))) == 16 * 24


# ----------------------------------------------------------------------------- COCO (Detectron2's builtin names)


COCO_READER = """
import json
import detection  # the suite's Detectron2 shims
from detectron2.data import DatasetCatalog, MetadataCatalog
import detectron2.data.datasets.builtin  # registers coco_2017_* under $DETECTRON2_DATASETS at import
out = {}
for name in ("coco_2017_train", "coco_2017_val"):
    classes = MetadataCatalog.get(name).thing_classes
    out[name] = [[r["file_name"], r["width"], [[classes[a["category_id"]], a["bbox"]] for a in r["annotations"]]]
                 for r in DatasetCatalog.get(name)]
print(json.dumps(out))
"""


def test_coco_detectron2_builtin(tmp_path, capsys):
    src = tmp_path / "zips"
    src.mkdir()
    splits = make_coco(src)
    root = tmp_path / "datasets"
    run_cli("coco", "--from", *map(str, sorted(src.iterdir())), "--to", str(root), "--no-verify", "--allow-partial",
            "--workers", "1")
    out = capsys.readouterr().out
    assert "coco val2017     checked instances_val2017.json: 2 images, 2 annotations, 80 categories" in out
    assert sorted(p.name for p in (root / "coco").iterdir()) == ["annotations", "prepared.json", "train2017", "val2017"]
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", COCO_READER], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for split, items in splits.items():
        records = got[f"coco_2017_{split[:-4]}"]
        assert [r[2][0][0] for r in records] == [name for name, _ in items]  # the right category names
        for (file, width, anns), (_, colour) in zip(records, items):
            assert Path(file).parent == root / "coco" / split and width == 40
            assert colour_label(np.asarray(Image.open(file)).transpose(2, 0, 1)) == colour
    # a wrong zip for its role: one line
    assert "not val2017.zip: member 'train2017/000000000001.jpg'" in fails(
        capsys, "coco", "--from", f"val2017={src / 'train2017.zip'}", "--to", str(tmp_path / "x"), "--no-verify",
        "--allow-partial", "--workers", "1")


# ----------------------------------------------------------------------------- ADE20K (MMSeg)


def test_ade20k_mmseg_dataset(tmp_path, capsys):
    pytest.importorskip("mmseg.datasets", reason="needs mmcv (full) + mmsegmentation")
    src = tmp_path / "ADEChallengeData2016.zip"
    labels = make_ade(src)
    root = tmp_path / "ade"
    run_cli("ade20k", "--from", str(src), "--to", str(root), "--no-verify", "--allow-partial", "--workers", "1")
    assert "ade20k wrote" in capsys.readouterr().out
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    base = root / "ADEChallengeData2016"
    assert (base / "objectInfo150.txt").is_file() and (base / "prepared.json").is_file()
    for split in ("training", "validation"):
        ds = ADE20KDataset(data_root=str(base), data_prefix=dict(img_path=f"images/{split}",
                                                                 seg_map_path=f"annotations/{split}"),
                           pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")])
        assert len(ds) == len(labels[split])
        for i in range(len(ds)):
            sample = ds[i]
            expected = labels[split][i].astype(int) - 1
            expected[expected < 0] = 255  # reduce_zero_label: 0 (unlabelled) -> 255, class k -> k - 1
            assert np.array_equal(sample["gt_seg_map"], expected)
            assert colour_label(sample["img"][..., ::-1].transpose(2, 0, 1)) == i  # BGR from MMCV
    bad = tmp_path / "bad" / "ADEChallengeData2016.zip"
    bad.parent.mkdir()
    make_ade(bad, with_annotations=False)
    assert "no ADEChallengeData2016/annotations/training/ label maps" in fails(
        capsys, "ade20k", "--from", str(bad), "--to", str(tmp_path / "ade2"), "--no-verify", "--allow-partial")
    assert not (tmp_path / "ade2" / "ADEChallengeData2016").exists()


# ----------------------------------------------------------------------------- ImageNet variants


def test_variants_layouts(tmp_path, capsys, monkeypatch):
    """R / A folders, the C tree, V2's class-index folders, Sketch's zip: each as variants.py states it."""
    r_wnids = timm_info("imagenet_r_synsets.txt").split()[:2]
    a_wnids = timm_info("imagenet_a_synsets.txt").split()[:2]
    all_wnids = imagenet_wnids()
    src = tmp_path / "src"
    src.mkdir()
    (src / "imagenet-r.tar").write_bytes(tar_bytes({"imagenet-r/README.txt": b"renditions",
                                                    **{f"imagenet-r/{w}/art_{i}.jpg": jpeg(k) for k, w in enumerate(r_wnids)
                                                       for i in range(2)}}))
    (src / "imagenet-a.tar").write_bytes(tar_bytes({f"imagenet-a/{w}/0.{i}.jpg": jpeg(k) for k, w in enumerate(a_wnids)
                                                    for i in range(3)}))
    (src / "imagenetv2-matched-frequency.tar.gz").write_bytes(tar_bytes(
        {f"imagenetv2-matched-frequency-format-val/{idx}/{h}.jpeg": jpeg(k) for k, idx in enumerate((0, 2, 10))
         for h in ("aa", "bb")}, "w:gz"))
    with zipfile.ZipFile(src / "ImageNet-Sketch.zip", "w") as z:
        for k, w in enumerate(all_wnids[:2]):
            z.writestr(f"sketch/{w}/sketch_{k}.JPEG", jpeg(k))
    (src / "blur.tar").write_bytes(tar_bytes({f"{c}/{s}/{w}/ILSVRC2012_val_{k + 1:08d}.JPEG": jpeg(k)
                                              for c in ("defocus_blur", "zoom_blur") for s in range(1, 6)
                                              for k, w in enumerate(all_wnids[:3])}))
    from tools.prepare import checksums

    monkeypatch.setitem(checksums._OTHERS, "imagenet-r.tar",
                        checksums.Checksum("md5", digest(src / "imagenet-r.tar"), "test"))
    out = tmp_path / "variants"
    common = ["--to", str(out), "--allow-partial", "--workers", "1"]
    run_cli("imagenet-r", "--from", str(src / "imagenet-r.tar"), *common)  # checksum verified
    for name, archive in (("imagenet-a", "imagenet-a.tar"), ("imagenet-v2", "imagenetv2-matched-frequency.tar.gz"),
                          ("imagenet-sketch", "ImageNet-Sketch.zip"), ("imagenet-c", "blur.tar")):
        run_cli(name, "--from", str(src / archive), *common, "--no-verify")
    capsys.readouterr()
    run_cli("imagenet-r", "--from", str(src / "imagenet-r.tar"), *common)  # complete: left alone
    assert "imagenet-r kept" in capsys.readouterr().out
    r = json.loads((out / "r" / "prepared.json").read_text())
    assert r["sources"]["archive"]["verified"] is True and r["classes"] == r_wnids
    r_idx = [int(i) for i in timm_info("imagenet_r_indices.txt").split()[:2]]
    assert r["imagenet_indices"] == r_idx == [all_wnids.index(w) for w in r_wnids]
    assert check_labels(out, "r", r_wnids).classes == r_wnids
    assert not (out / "r" / "README.txt").exists()
    assert check_labels(out, "a", a_wnids).classes == a_wnids
    v2_wnids = [all_wnids[i] for i in (0, 2, 10)]
    assert check_labels(out, "v2", v2_wnids).classes == v2_wnids
    assert json.loads((out / "v2" / "prepared.json").read_text())["imagenet_indices"] == [0, 2, 10]
    assert check_labels(out, "sketch", all_wnids[:2]).classes == all_wnids[:2]
    c = json.loads((out / "c" / "prepared.json").read_text())
    assert c["corruptions"] == ["defocus_blur", "zoom_blur"] and c["partial"] is True
    assert c["counts"]["zoom_blur/5"] == 3
    for severity in range(1, 6):
        ds = check_labels(out / "c" / "defocus_blur", str(severity), all_wnids[:3])
        assert len(ds) == 3
    assert not (out / ".prepare_data" / "imagenet-c").exists()
    # ImageNet-C: the blur archive is missing two of its corruptions without --allow-partial
    line = fails(capsys, "imagenet-c", "--from", str(src / "blur.tar"), "--to", str(tmp_path / "c2"), "--no-verify",
                 "--workers", "1")
    assert "(defocus_blur severity 1): 3 images in 3 classes, the published count is 50,000 in 1000" in line
    # the R archive given for A: named, nothing written
    assert "imagenet-a.tar: member 'imagenet-r/" in fails(
        capsys, "imagenet-a", "--from", str(src / "imagenet-r.tar"), "--to", str(tmp_path / "v3"), "--no-verify")
    assert not (tmp_path / "v3" / "a").exists()


def test_imagenet_real_labels(tmp_path, official, capsys):
    src, _, labels = official
    imagenet = tmp_path / "imagenet"
    run_cli("imagenet", "--from", *map(str, sorted(src.iterdir())), "--to", str(imagenet), "--no-verify",
            "--allow-partial", "--workers", "1")
    out = tmp_path / "variants"
    run_cli("imagenet-real", "--from", str(imagenet / "val"), "--to", str(out))
    real = json.loads((out / "real" / "real_labels.json").read_text())
    timm_real = json.loads(timm_info("imagenet_real_labels.json"))
    assert len(real["labels"]) == 50_000 and real["classes"] == imagenet_wnids()
    assert real["labels"]["ILSVRC2012_val_00000002.JPEG"] == timm_real[1] == [970, 795]
    assert real["labels"]["ILSVRC2012_val_00000001.JPEG"] == []
    assert json.loads((out / "real" / "prepared.json").read_text())["counts"]["labelled"] == sum(1 for r in timm_real if r)


def test_commit_interrupted_after_the_rename_is_repaired(tmp_path, monkeypatch):
    """A crash between moving a unit into place and recording it: the next start records it, nothing is redone."""
    from tools.prepare.staging import Staging

    root = tmp_path / "root"
    first = Staging(root, "demo", root, {"sources": 1}, log=lambda line: None)
    (first.unit_dir("train") / "a.txt").write_text("complete")
    real_write = Staging._write_manifest

    def crash(self, data, where=None):
        raise KeyboardInterrupt  # the process dies right after os.replace(staged, final)

    monkeypatch.setattr(Staging, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        first.commit("train", {"images": 1})
    first.close()
    assert (root / "train" / "a.txt").is_file() and not (root / "prepared.json").exists()
    monkeypatch.setattr(Staging, "_write_manifest", real_write)
    again = Staging(root, "demo", root, {"sources": 1}, log=lambda line: None)
    assert again.is_done("train") and again.manifest()["units"]["train"] == {"images": 1}
    again.finish()
    other = Staging(root, "demo", root, {"sources": 2}, log=lambda line: None)  # other sources: a fresh start
    assert other.is_done("train")  # but what is in place and recorded stays
    other.close()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_validate_max_files_must_be_positive(value, capsys):
    """--validate-max-files 0 / negative / not a number: argparse's one error line names the option."""
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["imagenet", "--from", "x.tar", "--to", "out", "--validate-max-files", value])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "argument --validate-max-files:" in errors[0], errors
    assert get_args_parser().parse_args(["imagenet", "--from", "x.tar", "--to", "out",
                                         "--validate-max-files", "2"]).validate_max_files == 2


def test_roles_from_content_and_corrupt_archives_one_line(tmp_path, official, capsys):
    """Archives under other names get their role from their first member; a corrupt one is one line naming it."""
    src, names, labels = official
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for official_name, name in (("ILSVRC2012_img_train.tar", "a.tar"), ("ILSVRC2012_img_val.tar", "b.tar"),
                                ("ILSVRC2012_devkit_t12.tar.gz", "c.tgz")):
        (renamed / name).write_bytes((src / official_name).read_bytes())
    root = tmp_path / "imagenet"
    run_cli("imagenet", "--from", *map(str, sorted(renamed.iterdir())), "--to", str(root), "--no-verify",
            "--allow-partial", "--workers", "1")
    assert len(check_labels(root, "train", WNIDS)) == 12 and len(check_labels(root, "val", WNIDS)) == len(labels)
    bad = tmp_path / "bad"
    bad.mkdir()
    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(4000))
    (bad / "noise.tar").write_bytes(noise)
    (bad / "noise.tgz").write_bytes(b"\x1f\x8b\x08" + noise)
    (bad / "noise.zip").write_bytes(b"PK\x03\x04" + noise)
    for f in sorted(bad.iterdir()):
        for dataset in ("imagenet", "coco"):
            line = fails(capsys, dataset, "--from", str(f), "--to", str(tmp_path / "out"), "--no-verify")
            assert str(f) in line, line


def test_imagenet_c_tars_hold_the_mce_benchmark():
    """variants.py's per-tar grouping is classification.mce's 15 corruptions in mCE order; extras and severities too."""
    from classification import mce
    from tools.prepare import variants

    assert tuple(c for group in variants.C_CORRUPTIONS.values() for c in group) == mce.BENCHMARK == variants.C_ORDER
    assert variants.C_EXTRA == mce.EXTRA and variants.SEVERITIES == ("1", "2", "3", "4", "5")


def test_lowshot_reads_train_as_the_loaders_do(tmp_path, capsys):
    """Non-images are not listed; a class folder without images, or no images at all, is one error line."""
    train = tmp_path / "in" / "train"
    for k, w in enumerate(WNIDS):
        (train / w).mkdir(parents=True)
        for i in range(2):
            (train / w / f"{w}_{i}.JPEG").write_bytes(jpeg(k))
    (train / WNIDS[0] / "notes.txt").write_text("not an image")
    run_cli("imagenet-lowshot", "--from", str(tmp_path / "in"), "--to", str(tmp_path / "out"), "--percent", "100")
    lines = (tmp_path / "out" / "lowshot" / "100percent.txt").read_text().split()
    assert lines == [f"{w}/{w}_{i}.JPEG" for w in WNIDS for i in range(2)]
    (train / "n99999999").mkdir()
    line = fails(capsys, "imagenet-lowshot", "--from", str(tmp_path / "in"), "--to", str(tmp_path / "out2"),
                 "--percent", "10")
    assert "class folders without images" in line and "n99999999" in line
    for f in train.rglob("*.JPEG"):
        f.unlink()
    assert "no images" in fails(capsys, "imagenet-lowshot", "--from", str(tmp_path / "in"), "--to",
                                str(tmp_path / "out3"), "--percent", "10")
    assert not (tmp_path / "out2" / "lowshot" / "10percent.txt").exists()
