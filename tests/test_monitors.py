"""Online monitors of pretraining (k-NN, position probe, RankMe) and kept checkpoints."""
import json
import shutil

import pytest
import torch

from classification.knn import load_knn_config
from classification.knn import run as knn_run
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.keep_checkpoints import flag_as_override
from pretrain.engine.rankme import rankme
from pretrain.main import main, run
from pretrain.weights import load_checkpoint_file

MONITOR = ("train.monitor.every_epochs=1", "train.monitor.images=40", "train.monitor.bank_images=40",
           "train.monitor.probe_steps=20", "train.monitor.batch_size=20")


def tiny_cfg(data_root, out, *extra):
    return load_config("droppos_vit_tiny_builtin.yaml", [
        f"data.path={data_root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0", "data.limit=48",
        "model.img_size=32", "train.batch_size=8", "train.epochs=2", "train.log_every=1",
        "train.tensorboard=false", "train.progress=false", "train.deterministic=true", *extra,
    ])


def records(out, phase):
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["phase"] == phase]


# ------------------------------------------------------------------ RankMe
def test_rankme_by_hand():
    """Flat spectrum: the full rank; rank 1: 1; singular values (3, 1): exp of the entropy of (3/4, 1/4)."""
    assert rankme(torch.eye(6)) == pytest.approx(6.0, rel=1e-5)
    u, v = torch.randn(50, 1), torch.randn(1, 8)
    assert rankme(u @ v) == pytest.approx(1.0, abs=1e-4)
    p = torch.tensor([0.75, 0.25])
    assert rankme(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    assert rankme(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(1.7548, abs=1e-4)
    z = torch.randn(200, 16)
    assert 12 < rankme(z) <= 16  # random Gaussian rows: close to full rank
    assert rankme(torch.zeros(4, 3)) == 0.0


# ------------------------------------------------------------------ the training is untouched
def test_losses_bit_identical_with_and_without_monitors(small_builtin, tmp_path, one_thread):
    off, on = tmp_path / "off", tmp_path / "on"
    run(tiny_cfg(small_builtin, off))
    run(tiny_cfg(small_builtin, on, *MONITOR))
    a, b = [r["loss"] for r in records(off, "train")], [r["loss"] for r in records(on, "train")]
    assert len(a) == 12 and a == b  # exactly equal, not close
    wa, wb = (load_checkpoint_file(d / "backbone.pth")["model"] for d in (off, on))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    monitors = records(on, "monitor")
    assert [r["epoch"] for r in monitors] == [1, 2] and not records(off, "monitor")
    for r in monitors:  # values and their cost
        assert 0 <= r["knn_top1"] <= 100 and 0 <= r["position_top1"] <= 100 and 1 <= r["rankme"] <= 40
        assert r["seconds"] > 0 and r["share_of_epoch"] > 0 and r["position_drop_ratio"] == 0.75
    history = json.loads((on / "pretrain_metrics.json").read_text())["history"]
    assert [h["monitor"]["knn_top1"] for h in history] == [r["knn_top1"] for r in monitors]
    # the report's curves: from the history, the transfer number as a marker at the last epoch
    from PIL import Image

    from analysis.pictures.canvas import expected_size
    from analysis.pictures.monitor_curves import plot_monitor_curves, read_curves

    assert read_curves(on)["knn_top1"] == [(r["epoch"], r["knn_top1"]) for r in monitors]
    assert read_curves(off)["rankme"] == [] and len(read_curves(off)["loss"]) == 2
    png = plot_monitor_curves([("on", on), ("off", off)], tmp_path / "curves.png", {"on": {"knn": 50.0}})
    assert Image.open(png).size == expected_size("monitors")


def test_knn_monitor_equals_classification_knn(small_builtin, tmp_path, one_thread, capsys):
    """The monitor's k-NN on epoch 1 = classification.knn on the kept epoch-1 checkpoint, same images."""
    out = tmp_path / "pre"
    args = ["--config", "droppos_vit_tiny_builtin.yaml", f"data.path={small_builtin / 'imagenet'}",
            f"train.output_dir={out}", "data.num_workers=0", "data.limit=48", "model.img_size=32",
            "train.batch_size=8", "train.epochs=2", "train.tensorboard=false", "train.progress=false",
            "train.monitor.monitors=[knn]", *MONITOR]
    assert main(args + ["--keep-checkpoints-every", "1"]) == 0
    kept = out / "kept" / "checkpoint-epoch0001.pth"
    assert kept.is_file() and (out / "kept" / "checkpoint-epoch0002.pth").is_file()
    table = (out / "checkpoint_monitors.csv").read_text().splitlines()
    assert table[0].startswith("epoch,checkpoint,loss,pos_acc,knn_top1") and len(table) == 3
    monitor = records(out, "monitor")[0]
    assert "position_top1" not in monitor and "rankme" not in monitor
    knn = knn_run(load_knn_config("knn_vit_tiny_builtin", [
        f"checkpoint={kept}", f"data.path={small_builtin / 'imagenet'}", "data.limit=40", "data.num_workers=0",
        "model.img_size=32", f"train.output_dir={tmp_path / 'knn'}", "data.builtin=false"]))
    assert (knn["train_images"], knn["val_images"]) == (40, 40)
    assert (monitor["knn_top1"], monitor["knn_top5"]) == (knn["top1"], knn["top5"])


# ------------------------------------------------------------------ resume and failures
def test_resumed_run_logs_every_monitor_epoch_once(small_builtin, tmp_path, one_thread, monkeypatch):
    """Stopped mid-epoch 2, then killed after epoch 3's monitor but before its checkpoint: each epoch once."""
    from pretrain.engine.run_checkpoints import CheckpointManager

    out = tmp_path / "run"
    opts = (*MONITOR, "train.monitor.monitors=[rankme]", "train.epochs=3", "train.save_every_steps=3")
    run(tiny_cfg(small_builtin, out, *opts, "train.max_steps=9"))
    assert [r["epoch"] for r in records(out, "monitor")] == [1]
    save = CheckpointManager.save

    def crash_at_end_of_epoch_3(self, state, step):
        if state["train_state"]["epoch"] == 3 and state["train_state"]["iter_in_epoch"] == 0:
            raise OSError("disk full (test)")
        return save(self, state, step)

    monkeypatch.setattr(CheckpointManager, "save", crash_at_end_of_epoch_3)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_cfg(small_builtin, out, *opts))
    assert [r["epoch"] for r in records(out, "monitor")] == [1, 2, 3]  # epoch 3 measured, its checkpoint lost
    monkeypatch.setattr(CheckpointManager, "save", save)
    metrics = run(tiny_cfg(small_builtin, out, *opts))
    assert [r["epoch"] for r in records(out, "monitor")] == [1, 2, 3]
    assert [r["epoch"] for r in records(out, "epoch")] == [1, 2, 3]
    assert [h["monitor"]["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_bad_file_in_the_slice_never_stops_training(small_builtin, tmp_path, one_thread):
    data = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", data / "imagenet")
    bad = sorted((data / "imagenet" / "val").rglob("*.*"))[0]
    bad.write_bytes(b"not an image")
    opts = (*MONITOR, "train.monitor.monitors=[knn,rankme]")
    metrics = run(tiny_cfg(data, tmp_path / "strict", *opts))
    assert metrics["epochs_done"] == 2
    errors = [r["error"] for r in records(tmp_path / "strict", "monitor")]
    assert len(errors) == 2 and all(bad.name in e and "data.skip_bad=true" in e for e in errors)
    run(tiny_cfg(data, tmp_path / "skip", *opts, "data.skip_bad=true"))
    measured = records(tmp_path / "skip", "monitor")
    assert all(r["bad_files"] == 1 and "knn_top1" in r and "error" not in r for r in measured)


@pytest.mark.parametrize("override,message", [
    ("train.monitor.every_epochs=0", "'train.monitor.every_epochs' must be a number of epochs >= 1"),
    ("train.monitor.monitors=[knn,knnn]", "unknown monitor 'knnn'; choose from knn, position, rankme"),
    ("train.monitor.evry_epochs=1", "did you mean 'train.monitor.every_epochs'"),
    ("train.monitor.images=41", "train.monitor.images=41 exceeds the 40 images of split 'val'"),
])
def test_bad_monitor_input_one_line_before_training(small_builtin, tmp_path, capsys, override, message):
    out = tmp_path / "never"
    args = ["--config", "droppos_vit_tiny_builtin.yaml", f"data.path={small_builtin / 'imagenet'}",
            f"train.output_dir={out}", "data.num_workers=0", "model.img_size=32", "train.batch_size=8",
            "train.monitor.every_epochs=1", "train.monitor.bank_images=40", override]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("config error:")
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("value", ["abc", "true", "inf"])
def test_bad_probe_drop_ratio_names_its_key_and_only_matters_with_the_position_monitor(value):
    """Not 'could not convert string to float': the key is named; without the position monitor it is not read."""
    base = ["train.monitor.every_epochs=1", f"train.monitor.probe_drop_ratio={value}"]
    with pytest.raises(ConfigError, match="config key 'train.monitor.probe_drop_ratio' must be a finite number"):
        load_config("droppos_vit_tiny_builtin.yaml", base)
    from pretrain.engine.monitor_config import monitor_settings

    cfg = load_config("droppos_vit_tiny_builtin.yaml", [*base, "train.monitor.monitors=[knn,rankme]"])
    assert monitor_settings(cfg).drop_ratio is None
    cfg = load_config("mae_vit_tiny_builtin.yaml", ["train.monitor.every_epochs=1", "train.monitor.crop_pct=0.5"])
    settings = monitor_settings(cfg)
    assert (settings.drop_ratio, settings.crop_pct, settings.images) == (0.75, 0.5, 10000)  # default.yaml's


def test_a_null_monitor_setting_is_refused_naming_its_key():
    with pytest.raises(ConfigError, match="config key 'train.monitor.batch_size' must be set"):
        load_config("droppos_vit_tiny_builtin.yaml", ["train.monitor.every_epochs=1", "train.monitor.batch_size=null"])


def test_keep_checkpoints_flag():
    assert flag_as_override(["a=1", "--keep-checkpoints-every", "5"]) == ["a=1", "train.keep_checkpoints_every=5"]
    assert flag_as_override(["--keep-checkpoints-every=2"]) == ["train.keep_checkpoints_every=2"]
    with pytest.raises(ValueError, match="needs a number of epochs"):
        flag_as_override(["--keep-checkpoints-every"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config("droppos_vit_tiny_builtin.yaml", ["train.keep_checkpoints_every=-1"])


def test_monitors_off_in_the_recipes_on_in_the_demo():
    """Off in the paper recipes and in the tiny recipes (the tests' base, on smaller data); the demo turns them on."""
    from analysis.reproduce.profiles import PROFILES

    for recipe in ("droppos_vit_base_200ep", "mae_vit_base_1600ep", "adpe_coord_vit_base_400ep", "droppos_vit_tiny_builtin"):
        assert load_config(recipe).train.monitor.every_epochs is None
    demo = PROFILES["demo"]["pretrain"]
    assert set(demo) == {"droppos", "mae", "adpe"}
    for recipe, overrides in demo.values():
        monitor = load_config(recipe, overrides).train.monitor
        assert monitor.every_epochs == 2 and list(monitor.monitors) == ["knn", "position", "rankme"]
