"""Inputs that slipped through the frozen-feature evaluations (issue 26): each is one clear line now.

k-NN over a split of unreadable images only (it wrote top-1 0.0), k-NN at a tiny temperature
(exp overflowed to inf and the votes tied), k-NN's k compared with unreadable files too (a
traceback later), a probe over one class (a meaningless 100 %), a batch larger than the
training split (a traceback).
"""
import shutil
from pathlib import Path

import pytest
import torch

from classification.attentive_probe import main as attentive_main
from classification.knn import knn_votes, main as knn_main, vote_accuracy
from classification.linear_probe import main as probe_main

pytestmark = pytest.mark.usefixtures("one_thread")


def opts(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0", "model.size=tiny",
            "model.img_size=32", "model.patch_size=8", "checkpoint=none", *extra]


def spoil(root: Path, split: str, count: int | None = None) -> list[Path]:
    """Overwrite the first ``count`` images of a split (all when None) with bytes no decoder reads."""
    files = sorted((root / "imagenet" / split).rglob("*.JPEG"))[:count]
    for f in files:
        f.write_bytes(b"not an image")
    return files


@pytest.fixture
def data(small_builtin, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", root / "imagenet")
    return root


def one_line(err: str, *needles: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_knn_with_every_val_image_unreadable_is_an_error_not_top1_0(data, tmp_path, capsys):
    spoil(data, "val")
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml", *opts(data, tmp_path / "run", "data.skip_bad=true")]) == 2
    one_line(capsys.readouterr().err, "every one of the 40 val images", "nothing to evaluate")
    assert not (tmp_path / "run" / "knn_metrics.json").exists()


def test_knn_at_a_tiny_temperature_does_not_overflow():
    """Each query's nearest neighbour is of its own class, its three next ones of another: as T -> 0 the nearest
    decides. Unscaled, exp(s / 0.001) is inf for all four neighbours and the tie goes to the lower class index."""
    g = torch.Generator().manual_seed(0)
    classes, queries = 4, []
    bank, labels = [], []
    for c in range(classes):
        q = torch.randn(16, generator=g)
        queries.append(q)
        bank.append(q + 0.05 * torch.randn(16, generator=g))
        labels.append(c)
        for _ in range(3):
            bank.append(q + 0.2 * torch.randn(16, generator=g))
            labels.append((c + 1) % classes)  # the other class: three votes, each a little farther
    bank, labels, queries = torch.stack(bank), torch.tensor(labels), torch.stack(queries)
    votes = knn_votes(bank, labels, queries, classes, k=4, temperature=0.001)
    assert torch.isfinite(votes).all() and votes.max() == 1.0
    assert vote_accuracy(votes, torch.arange(classes))["top1"] == 100.0
    # at a large temperature the three farther votes win: the rescaling keeps the ranking
    assert vote_accuracy(knn_votes(bank, labels, queries, classes, k=4, temperature=10.0),
                         torch.arange(classes))["top1"] == 0.0


def test_knn_k_is_checked_against_the_readable_train_images(data, tmp_path, capsys):
    spoil(data, "train", 3)
    argv = ["--config", "knn_vit_tiny_builtin.yaml", *opts(data, tmp_path / "run", "data.skip_bad=true", "knn.k=119")]
    assert knn_main(argv) == 2  # 120 train files, 117 readable
    one_line(capsys.readouterr().err, "knn.k=119 exceeds the 117 readable train images", "3 of 120 were unreadable")


@pytest.mark.parametrize("entry", ["attentive_probe", "linear_probe", "knn"])
def test_one_class_is_refused_in_one_line(entry, small_builtin, tmp_path, capsys):
    root = tmp_path / "one"
    for split in ("train", "val"):
        first = sorted((small_builtin / "imagenet" / split).iterdir())[0]
        shutil.copytree(first, root / "imagenet" / split / first.name)
    main = {"attentive_probe": attentive_main, "linear_probe": probe_main, "knn": knn_main}[entry]
    extra = () if entry == "knn" else ("train.batch_size=4", "train.epochs=1")
    assert main(["--config", f"{entry}_vit_tiny_builtin.yaml", *opts(root, tmp_path / "run", *extra, "knn.k=3"
                                                                    if entry == "knn" else "train.seed=0")]) == 2
    one_line(capsys.readouterr().err, "needs at least 2 classes", f"{root / 'imagenet'}/train has 1 class folder")


def test_a_batch_larger_than_the_training_split_is_one_line(small_builtin, tmp_path, capsys):
    assert attentive_main(["--config", "attentive_probe_vit_tiny_builtin.yaml",
                           *opts(small_builtin, tmp_path / "run", "data.limit=20", "train.epochs=1")]) == 2
    one_line(capsys.readouterr().err, "train.batch_size=128", "exceeds the 20 readable train images")


@pytest.mark.parametrize("entry", ["attentive_probe", "linear_probe"])
def test_a_cached_probe_checks_the_batch_before_its_feature_pass(entry, small_builtin, data, tmp_path, capsys,
                                                                 monkeypatch):
    import classification.probe_run as probe_run

    main = {"attentive_probe": attentive_main, "linear_probe": probe_main}[entry]
    real = probe_run.config_features
    monkeypatch.setattr(probe_run, "config_features", lambda *a, **k: pytest.fail("the feature pass ran"))
    assert main(["--config", f"{entry}_vit_tiny_builtin.yaml", *opts(small_builtin, tmp_path / "run", "data.limit=20",
                                                                     "train.batch_size=21", "train.epochs=1")]) == 2
    one_line(capsys.readouterr().err, "train.batch_size=21", "exceeds the 20 readable train images", "(at most")
    # the split is large enough, its readable images are not: refused after the pass, as before
    monkeypatch.setattr(probe_run, "config_features", real)
    spoil(data, "train", 100)
    assert main(["--config", f"{entry}_vit_tiny_builtin.yaml", *opts(data, tmp_path / "run2", "data.skip_bad=true",
                                                                     "train.batch_size=21", "train.epochs=1")]) == 2
    err = capsys.readouterr().err
    one_line(err, "train.batch_size=21", "exceeds the 20 readable train images")
    assert "(at most" not in err


def test_a_cached_probe_with_every_val_image_unreadable_is_an_error(data, tmp_path, capsys):
    spoil(data, "val")
    assert probe_main(["--config", "linear_probe_vit_tiny_builtin.yaml",
                       *opts(data, tmp_path / "run", "data.skip_bad=true", "train.batch_size=16", "train.epochs=1")]) == 2
    one_line(capsys.readouterr().err, "every one of the 40 val images", "nothing to evaluate")
