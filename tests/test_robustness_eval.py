"""Robustness and low-shot rows: the 200-class mask, mCE, ReaL, the low-shot regularisation choice, the
position perturbations, the variant folders as tools.prepare_data lays them out, and the commands' bad input."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classification import lowshot as lowshot_mod
from classification import mce
from classification.builtin_corruptions import UNFINISHED, make_corrupted_copy
from classification.builtin_corruptions import main as builtin_c_main
from classification.imagenet_variants import (
    VariantError,
    corruption_sets,
    imagenet_classes,
    load_real_labels,
    open_variant,
    subset_mask,
    subset_wnids,
    timm_subset_indices,
)
from classification.lowshot_subsets import LowShotError, holdout_mask, resolve
from classification.model import build_classifier
from classification.position_robustness import (
    _logits_masked,
    kept_patches,
    logits_without,
    occlude,
    shuffle_blocks,
)
from classification.robustness import main as robustness_main
from classification.scoring import real_accuracy, topk_hits


# ------------------------------------------------------------------ the 200-class mask
def test_subset_mask_on_a_hand_made_three_class_case():
    classes = ["n1", "n2", "n3", "n4", "n5"]  # the classifier's outputs
    mask = subset_mask(classes, ["n2", "n4", "n5"])  # a 3-class subset, its sorted wnids
    assert mask == [1, 3, 4]
    # output 0 (not in the subset) is the largest: over the subset, n4 (subset index 1) wins
    logits = torch.tensor([[9.0, 1.0, 0.0, 5.0, 2.0], [9.0, 1.0, 0.0, 5.0, 2.0]])
    hits = topk_hits(logits, torch.tensor([1, 0]), mask)
    assert hits[:, 0].tolist() == [True, False]  # target n4 right, target n2 wrong at top-1
    assert hits[:, 1].tolist() == [True, True]  # 3 candidates: top-5 reads all of them
    assert not topk_hits(logits, torch.tensor([3]))[0, 0]  # unmasked, output 0 would win
    with pytest.raises(VariantError, match="not among the classifier"):
        subset_mask(classes, ["n2", "n9"])


def test_subset_mask_reproduces_timms_index_files():
    for name in ("r", "a"):
        assert subset_mask(imagenet_classes(), subset_wnids(name)) == timm_subset_indices(name)
        assert len(subset_wnids(name)) == 200


# ------------------------------------------------------------------ mCE
def test_mce_by_hand_against_alexnets_errors():
    # the familiar severity-averaged AlexNet errors (e.g. 0.886428 Gaussian noise) come out of the table
    assert mce.alexnet_mean_error("gaussian_noise") == pytest.approx(0.886428, abs=1e-6)
    assert mce.alexnet_mean_error("jpeg_compression") == pytest.approx(0.606500, abs=1e-6)
    assert mce.alexnet_mean_error("brightness") == pytest.approx(0.564592, abs=1e-6)
    # made-up errors: half of AlexNet's everywhere, except Gaussian noise 0.5 .. 0.9
    errors = {c: {s: 0.5 * e for s, e in zip(mce.SEVERITIES, errs)} for c, errs in mce.ALEXNET_ERRORS.items()}
    errors["gaussian_noise"] = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8, 5: 0.9}
    out = mce.summarize(errors, clean_error=0.2)
    ce_gauss = 3.5 / (0.69528 + 0.82542 + 0.93554 + 0.98138 + 0.99452)  # 3.5 / 4.43214
    assert out["corruption_errors"]["gaussian_noise"] == pytest.approx(100 * ce_gauss)
    assert out["corruption_errors"]["fog"] == pytest.approx(50.0)
    assert out["mce"] == pytest.approx((14 * 50.0 + 100 * ce_gauss) / 15)
    rel_gauss = (3.5 - 5 * 0.2) / (4.43214 - 5 * 0.43478)
    assert out["relative_corruption_errors"]["gaussian_noise"] == pytest.approx(100 * rel_gauss)
    rel_fog = (0.5 * sum(mce.ALEXNET_ERRORS["fog"]) - 1.0) / (sum(mce.ALEXNET_ERRORS["fog"]) - 5 * 0.43478)
    assert out["relative_corruption_errors"]["fog"] == pytest.approx(100 * rel_fog)
    assert out["relative_mce"] == pytest.approx(sum(out["relative_corruption_errors"].values()) / 15)
    # 14 of the 15: no mCE, only the partial mean; without the clean error no relative mCE
    del errors["fog"]
    part = mce.summarize(errors)
    assert part["mce"] is None and part["relative_mce"] is None and part["coverage"]["benchmark_missing"] == ["fog"]
    assert part["mce_partial"] == pytest.approx((13 * 50.0 + 100 * ce_gauss) / 14)
    with pytest.raises(ValueError, match="severities"):
        mce.corruption_error({1: 0.5}, "fog")


# ------------------------------------------------------------------ ReaL
def test_real_accuracy_on_a_hand_made_multi_label_case(tmp_path):
    labels = {"a.JPEG": [1], "b.JPEG": [2, 3], "c.JPEG": [], "d.JPEG": [0]}
    top5 = torch.tensor([[1, 0, 2], [3, 0, 1], [0, 1, 2], [2, 0, 1]])
    r = real_accuracy(top5, ["val/x/a.JPEG", "b.JPEG", "c.JPEG", "d.JPEG"], labels)
    # a right; b right (3 is one of its two labels); c has no ReaL label: left out; d right only within top-5
    assert r["top1"] == pytest.approx(200 / 3) and r["top5"] == pytest.approx(100.0)
    assert r["images_scored"] == 3 and r["images_without_label"] == 1
    with pytest.raises(ValueError, match="not in the ReaL labels"):
        real_accuracy(top5[:1], ["e.JPEG"], labels)
    # the prepared real_labels.json indexes sorted wnids: mapped onto the classifier's own output order
    (tmp_path / "real_labels.json").write_text(json.dumps(
        {"classes": ["n1", "n2", "n3"], "labels": {"ILSVRC2012_val_00000001.JPEG": [0, 2]}}))
    mapped, source = load_real_labels(tmp_path / "real_labels.json", ["n3", "n1", "n2"])
    assert mapped == {"ILSVRC2012_val_00000001.JPEG": [1, 0]} and source.endswith("real_labels.json")
    shipped, source = load_real_labels(None, imagenet_classes())  # the file timm ships
    assert shipped["ILSVRC2012_val_00000002.JPEG"] == [970, 795] and len(shipped) == 50_000


# ------------------------------------------------------------------ low-shot
def test_logistic_regression_picks_c_on_the_held_out_part_never_val(small_builtin, tmp_path, monkeypatch):
    seen = []
    real = lowshot_mod.select_and_fit

    def spy(features, labels, held_out, Cs, fallback_C, max_iter=1000):
        seen.append((features.copy(), labels.copy(), held_out.copy()))
        return real(features, labels, held_out, Cs, fallback_C, max_iter)

    monkeypatch.setattr(lowshot_mod, "select_and_fit", spy)
    cfg = lowshot_mod.load_lowshot_config("lowshot_vit_tiny_builtin", [
        f"data.path={small_builtin / 'imagenet'}", "data.num_workers=0", "checkpoint=none", "model.img_size=32",
        f"train.output_dir={tmp_path / 'ls'}", "lowshot.subsets=[per_class:1,per_class:5]", "lowshot.C=[0.01,1,100]"])
    torch.set_num_threads(1)
    m = lowshot_mod.run(cfg)
    one, five = m["subsets"]["per_class_1"], m["subsets"]["per_class_5"]
    assert one["images"] == 10 and one["C_selection"].startswith("fixed") and one["C"] == 1.0
    assert five["images"] == 50 and five["C_selection"] == "held-out" and five["holdout_images"] == 10
    best = max(five["holdout_top1"].values())
    assert five["C"] == min(float(c) for c, s in five["holdout_top1"].items() if s == best)
    # only the subset's own images reached the regression: as many as the subset, none from val
    assert [len(f) for f, _, _ in seen] == [10, 50] and m["val_images"] == 40
    feats, labels, held = seen[1]
    assert held.sum() == 10 and all((labels[held] == c).sum() == 1 and (labels[~held] == c).sum() == 4
                                    for c in range(10))
    # the held-out choice by hand: each C fitted on the fit part, scored on the held-out part
    for c, score in five["holdout_top1"].items():
        clf = lowshot_mod._classifier(float(c), 1000).fit(feats[~held], labels[~held])
        assert score == pytest.approx(100 * (clf.predict(feats[held]) == labels[held]).mean())
    listed = Path(five["list"]).read_text().split()
    assert len(listed) == 50 and all(line.count("/") == 1 for line in listed)  # <class>/<file>, as prepare_data
    # a subset with a class that has no image: one clear line
    (tmp_path / "list.txt").write_text("\n".join(listed[:5]) + "\n")
    samples = [(str(p), i // 12) for i, p in enumerate(sorted((small_builtin / "imagenet" / "train").glob("*/*")))]
    classes = sorted(d.name for d in (small_builtin / "imagenet" / "train").iterdir())
    with pytest.raises(LowShotError, match="has no image; every class needs one"):
        resolve(str(tmp_path / "list.txt"), samples, classes, small_builtin / "imagenet", 0)


def test_holdout_mask_keeps_a_fit_image_in_every_class():
    labels = [0, 0, 0, 0, 0, 1, 1, 2]
    mask = holdout_mask(labels, 0.2, seed=0)
    held = {c: int(mask[[i for i, t in enumerate(labels) if t == c]].sum()) for c in (0, 1, 2)}
    assert held == {0: 1, 1: 1, 2: 0}  # round(0.2 * 5) = 1, max(1, ...) = 1 of 2, none of a lone image
    assert holdout_mask(labels, 0.2, seed=0).tolist() == mask.tolist()


# ------------------------------------------------------------------ position perturbations
def test_patch_shuffle_is_a_permutation_of_the_pixels():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    for k in (2, 4, 16):
        out = shuffle_blocks(images, k, seed=0, indices=[5, 6])
        assert torch.equal(out.flatten().sort().values, images.flatten().sort().values)
        assert not torch.equal(out, images)
        # whole blocks move: each output block is some input block
        blocks = lambda x: x.reshape(2, 3, k, 16 // k, k, 16 // k).permute(0, 2, 4, 1, 3, 5).reshape(2, k * k, -1)
        for b in range(2):
            src = {tuple(v.tolist()) for v in blocks(images)[b]}
            assert {tuple(v.tolist()) for v in blocks(out)[b]} == src
        assert torch.equal(shuffle_blocks(images, k, 0, [5, 6]), out)  # the same draw for the same image
    with pytest.raises(ValueError, match="equal blocks"):
        shuffle_blocks(images, 3, 0, [0, 1])
    occluded = occlude(torch.ones(1, 3, 16, 16), 0.25, "centre", 0, [0])
    assert occluded[0, 0].sum() == 256 - 64 and occluded[0, 0, 4:12, 4:12].abs().sum() == 0


def test_dropped_tokens_are_removed_not_zeroed(one_thread):
    torch.manual_seed(0)
    model = build_classifier("tiny", num_classes=5, img_size=32, patch_size=8, head_init_std=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = torch.arange(16).expand(2, 16)
        assert torch.allclose(logits_without(model, x, every), model(x), atol=1e-5)
        keep = kept_patches(16, 0.75, seed=0, indices=[0, 1])
        assert keep.shape == (2, 4)
        kept = logits_without(model, x, keep)
        # hiding the dropped tokens from every attention computes the same as removing them
        assert torch.allclose(_logits_masked(model, x, keep), kept, atol=1e-4)
        zeroed = x.clone()  # zeroing pixels is a different thing: the zero patches still take part
        for b in range(2):
            for p in set(range(16)) - set(keep[b].tolist()):
                zeroed[b, :, (p // 4) * 8:(p // 4) * 8 + 8, (p % 4) * 8:(p % 4) * 8 + 8] = 0
        assert not torch.allclose(model(zeroed), kept, atol=1e-3)


# ------------------------------------------------------------------ variant folders from tools.prepare_data
def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _prepare(*argv: str) -> None:
    from tools.prepare_data import get_args_parser, main

    main(get_args_parser().parse_args([*argv, "--allow-partial", "--no-verify", "--workers", "1",
                                       "--skip-validate", "--no-progress"]))


def test_each_variant_folder_read_as_prepare_data_lays_it_out(tmp_path):
    wnids, r_wnids = imagenet_classes(), subset_wnids("r")
    v = tmp_path / "variants"
    img = _jpeg()
    _tar(tmp_path / "imagenet-r.tar", {f"imagenet-r/{w}/{w}_{i}.jpg": img for w in r_wnids[:3] for i in range(2)})
    _prepare("imagenet-r", "--from", str(tmp_path / "imagenet-r.tar"), "--to", str(v))
    _tar(tmp_path / "imagenetv2-matched-frequency.tar.gz",
         {f"imagenetv2-matched-frequency-format-val/{k}/{i}.jpeg": img for k in (0, 2) for i in range(2)})
    _prepare("imagenet-v2", "--from", str(tmp_path / "imagenetv2-matched-frequency.tar.gz"), "--to", str(v))
    _tar(tmp_path / "noise.tar", {f"gaussian_noise/{s}/{w}/{w}_{s}.JPEG": img for s in range(1, 6) for w in wnids[:2]})
    _prepare("imagenet-c", "--from", str(tmp_path / "noise.tar"), "--to", str(v))

    r = open_variant(v, "r", None, wnids)
    assert r.mask == timm_subset_indices("r") and len(r.dataset) == 6 and r.partial
    assert [t for _, t in (r.dataset[i] for i in range(6))] == [0, 0, 1, 1, 2, 2]  # positions among the 200
    v2 = open_variant(v, "v2", None, wnids)
    assert v2.mask is None and v2.classes == [wnids[0], wnids[2]]
    assert [v2.dataset[i][1] for i in range(4)] == [0, 0, 2, 2]  # targets are the classifier's outputs
    sets = corruption_sets(v, None, wnids)
    assert [(c, s) for c, s, _ in sets] == [("gaussian_noise", s) for s in range(1, 6)]
    assert all(len(vs.dataset) == 2 and vs.dataset[1][1] == 1 for _, _, vs in sets)

    with pytest.raises(VariantError, match=r"ImageNet-A folder not found: .*tools.prepare_data imagenet-a"):
        open_variant(v, "a", None, wnids)
    (v / "r" / "n99999999").mkdir()  # a class that is not one of the 200
    with pytest.raises(VariantError, match="unexpected 1 .first: n99999999"):
        open_variant(v, "r", None, wnids)
    (v / "c" / "gaussian_noise" / "6").mkdir()
    with pytest.raises(VariantError, match="severity folders 1..5"):
        corruption_sets(v, None, wnids)


# ------------------------------------------------------------------ the commands end to end, and bad input
def _finetuned(tmp_path: Path, data: Path, head: bool = True) -> Path:
    torch.manual_seed(0)
    model = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, head_init_std=0.5)
    state = model.state_dict()
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    run = tmp_path / ("finetune" if head else "pretrain")
    run.mkdir()
    torch.save({"model": state}, run / "best.pth")
    (run / "config.yaml").write_text(f"model: {{img_size: 32}}\ndata: {{path: {data}, train_split: train, "
                                     "crop_pct: 0.875}\n")
    return run / "best.pth"


def test_robustness_command_on_the_builtin_copy(small_builtin, tmp_path, capsys, one_thread):
    data = small_builtin / "imagenet"
    ckpt = _finetuned(tmp_path, data)
    variants = tmp_path / "variants"
    make_corrupted_copy(data, variants, img_size=32, corruptions=["gaussian_noise", "contrast"], severities=[1, 5])
    first = (variants / "c" / "contrast" / "5").rglob("*.png").__next__().read_bytes()
    make_corrupted_copy(data, variants, img_size=32, corruptions=["gaussian_noise", "contrast"], severities=[1, 5])
    assert next((variants / "c" / "contrast" / "5").rglob("*.png")).read_bytes() == first  # kept as it was
    args = ["--checkpoint", str(ckpt.parent), "--sets", "c,position", "--variants", str(variants), "--imagenet",
            str(data), "--workers", "0", "--batch-size", "20", "--output", str(tmp_path / "rob")]
    assert robustness_main(args) == 0
    m = json.loads((tmp_path / "rob" / "robustness_metrics.json").read_text())
    assert m["task"] == "robustness" and m["clean"]["images"] == 40 and m["num_classes"] == 10
    c = m["sets"]["c"]
    assert set(c["top1"]) == {"gaussian_noise", "contrast"} and set(c["top1"]["contrast"]) == {"1", "5"}
    assert c["mce"] is None and "mean_error" in c and "protocol" in c and c["images"] == 160
    rows = m["sets"]["position"]["rows"]
    assert rows["clean"]["top1"] == m["clean"]["top1"] and "shuffle_grid" in rows and "drop_0.75" in rows
    assert all("protocol" in v for v in (m["clean"], c)) and set(m["sets"]["position"]["protocol"]) >= {"drop"}
    assert robustness_main(args) == 0  # the same draws: the same numbers
    again = json.loads((tmp_path / "rob" / "robustness_metrics.json").read_text())
    assert again["sets"]["position"]["rows"] == rows and again["sets"]["c"]["top1"] == c["top1"]
    capsys.readouterr()

    backbone = _finetuned(tmp_path, data, head=False)
    assert robustness_main(["--checkpoint", str(backbone), "--sets", "c", "--variants", str(variants)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no classification head" in err[0] and "finetune stage" in err[0]
    assert robustness_main(["--checkpoint", str(ckpt), "--sets", "sketch", "--variants", str(variants)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImageNet-Sketch folder not found" in err[0]
    (variants / "c" / "contrast" / "1" / "n01440764").mkdir()
    assert robustness_main(["--checkpoint", str(ckpt), "--sets", "c", "--variants", str(variants)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected 1 (first: n01440764)" in err[0]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_builtin_corruptions_never_wipes_a_real_imagenet_c(small_builtin, tmp_path, capsys):
    data = small_builtin / "imagenet"
    small = ["--data", str(data), "--img-size", "32", "--corruptions", "contrast", "--severities", "1", "--limit", "3"]
    # a real ImageNet-C as tools.prepare_data leaves it: its prepared.json says imagenet-c, no built_from
    real = tmp_path / "real" / "c"
    image = real / "gaussian_noise" / "1" / "n01440764" / "ILSVRC2012_val_00000293.JPEG"
    image.parent.mkdir(parents=True)
    image.write_bytes(_jpeg())
    (real / "prepared.json").write_text(json.dumps({"dataset": "imagenet-c", "layout": 1,
                                                    "corruptions": ["gaussian_noise"]}))
    assert builtin_c_main([*small, "--to", str(real.parent)]) == 1
    line = _one_line_error(capsys)
    assert str(real) in line and "'imagenet-c'" in line and "refusing to replace it" in line
    assert image.is_file() and json.loads((real / "prepared.json").read_text())["dataset"] == "imagenet-c"
    # files without any prepared.json: not this tool's either
    (real / "prepared.json").unlink()
    assert builtin_c_main([*small, "--to", str(real.parent)]) == 1
    assert str(real) in _one_line_error(capsys) and image.is_file()

    # this tool's own copies are replaced: an unfinished one, then a complete one with other arguments
    own = tmp_path / "own" / "c"
    (own / "contrast" / "9").mkdir(parents=True)
    (own / UNFINISHED).write_text("")
    assert builtin_c_main([*small, "--to", str(own.parent)]) == 0
    prepared = json.loads((own / "prepared.json").read_text())
    assert prepared["dataset"] == "builtin-c" and prepared["built_from"]["severities"] == [1]
    assert not (own / UNFINISHED).exists() and not (own / "contrast" / "9").exists()
    assert len(list((own / "contrast" / "1").rglob("*.png"))) == 3
    assert builtin_c_main([*small[:-4], "--severities", "2", "--limit", "2", "--to", str(own.parent)]) == 0
    assert sorted(p.name for p in (own / "contrast").iterdir()) == ["2"]
    assert len(list(own.rglob("*.png"))) == 2 and not (own / UNFINISHED).exists()
    capsys.readouterr()


@pytest.mark.parametrize("opts, named", [(["--to", "/dev/null"], "Not a directory"),
                                         (["--limit", "-3"], "--limit"), (["--img-size", "0"], "--img-size"),
                                         (["--crop-pct", "1.5"], "--crop-pct"), (["--crop-pct", "0"], "--crop-pct"),
                                         (["--corruptions", ","], "--corruptions")])
def test_builtin_corruptions_bad_input_is_one_line(opts, named, small_builtin, tmp_path, capsys):
    argv = ["--data", str(small_builtin / "imagenet"), "--to", str(tmp_path / "v"), "--img-size", "32",
            "--corruptions", "contrast", "--severities", "1", "--limit", "2", "--crop-pct", "0.875"]
    for i in range(0, len(opts), 2):
        argv[argv.index(opts[i]) + 1] = opts[i + 1]
    assert builtin_c_main(argv) == 1
    assert named in _one_line_error(capsys)
    assert not (tmp_path / "v" / "c" / "prepared.json").exists()


def test_one_evenly_spread_rule_for_limit_val_images_and_the_corrupted_copy():
    from classification.data import evenly_spread_indices
    from classification.robustness import evenly_spread

    for n in (1, 7, 40, 50_000):
        for limit in (1, 2, 3, 39, 100, n - 1, n):
            want = torch.linspace(0, n - 1, limit).round().long().tolist() if 0 < limit < n else list(range(n))
            assert evenly_spread_indices(n, limit) == want
        assert evenly_spread_indices(n, 0) == list(range(n))
    data = list(range(40))
    assert evenly_spread(data, 0) is data and evenly_spread(data, 40) is data
    assert evenly_spread(data, 5).indices == evenly_spread_indices(40, 5) == [0, 10, 20, 29, 39]


@pytest.mark.parametrize("text", ["1,x", "0,3", "6", ","])
def test_builtin_corruptions_severities_name_the_option(text, small_builtin, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        builtin_c_main(["--data", str(small_builtin / "imagenet"), "--to", str(tmp_path), "--severities", text])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --severities" in err and "Traceback" not in err


@pytest.mark.parametrize("opts, named", [(["--drops", "1.5"], "--drops 1.5"), (["--drops", "0.99"], "--drops 0.99"),
                                         (["--shuffles", "3"], "--shuffles 3"), (["--shuffles", "0"], "--shuffles 0"),
                                         (["--occlusions", "0"], "--occlusions 0"),
                                         (["--occlusions", "0.5,0.5"], "the same perturbation twice"),
                                         (["--device", "cuda"], "--device cuda")])
def test_robustness_bad_options_stop_before_any_forward_pass(opts, named, small_builtin, tmp_path, capsys,
                                                            monkeypatch):
    import classification.robustness as rob

    monkeypatch.setattr(rob, "predict", lambda *a, **k: pytest.fail("a forward pass ran"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = small_builtin / "imagenet"
    ckpt = _finetuned(tmp_path, data)
    args = ["--checkpoint", str(ckpt), "--sets", "position", "--imagenet", str(data), "--workers", "0",
            "--output", str(tmp_path / "rob"), *opts]
    assert robustness_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error:") and named in err[0], err


def test_robustness_unwritable_output_and_unknown_device_fail_first(small_builtin, tmp_path, capsys, monkeypatch):
    import classification.robustness as rob

    monkeypatch.setattr(rob, "predict", lambda *a, **k: pytest.fail("a forward pass ran"))
    data = small_builtin / "imagenet"
    ckpt = _finetuned(tmp_path, data)
    (tmp_path / "a_file").write_text("")
    for output in (tmp_path / "a_file", tmp_path / "a_file" / "rob", Path("/dev/null/rob")):
        assert robustness_main(["--checkpoint", str(ckpt), "--sets", "position", "--imagenet", str(data),
                                "--output", str(output)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --output {output} cannot be written"), err
    with pytest.raises(SystemExit) as exit_:
        robustness_main(["--checkpoint", str(ckpt), "--sets", "position", "--imagenet", str(data),
                         "--device", "bogus"])
    assert exit_.value.code == 2 and "argument --device: invalid choice: 'bogus'" in capsys.readouterr().err


# ------------------------------------------------------------------ the end-to-end run's stages, tables, picture
def _robustness_metrics(top1: float) -> dict:
    rows = {"clean": {"kind": "clean", "value": None, "top1": top1},
            "drop_0.75": {"kind": "drop", "value": 0.75, "top1": top1 - 10},
            "shuffle_grid": {"kind": "shuffle", "value": 8, "top1": top1 - 5},
            "occlude_centre_0.5": {"kind": "occlude_centre", "value": 0.5, "top1": top1 - 30}}
    return {"task": "robustness", "arch": "vit_tiny_patch8_64", "seed": 0, "sets_requested": ["c", "position"],
            "clean": {"top1": top1, "images": 100, "protocol": "p"},
            "sets": {"c": {"top1": {"contrast": {"1": top1 - 1, "3": top1 - 3}}, "mean_top1": top1 - 2, "mce": None,
                           "relative_mce": None, "protocol": "p"},
                     "position": {"rows": rows, "grid": 8, "protocol": {"drop": "p"}}}}


def test_stages_tables_and_picture_of_the_new_rows(tmp_path):
    import dataclasses

    from analysis.pictures.robustness import plot_robustness
    from analysis.reproduce.profiles import demo_profile
    from analysis.reproduce.stages import build_stage_table
    from analysis.tables.comparison import build_tables
    from analysis.tables.metrics_schema import MetricsError, load_metrics_file

    profile = dataclasses.replace(demo_profile(tmp_path / "data", 0), check=False)
    stages = {(s.method, s.name): s for s in build_stage_table(profile, tmp_path / "out", ["mae", "scratch"])}
    rob = stages[("scratch", "robustness")]
    assert rob.needs[-1] == tmp_path / "out" / "scratch" / "finetune" / "best.pth"
    assert rob.command[rob.command.index("--checkpoint") + 1] == str(rob.needs[-1])
    assert "--sets" in rob.command and "c,position" in rob.command and rob.protocol["image_size"] == 64
    low = stages[("mae", "lowshot")]
    assert "classification/configs/lowshot_vit_tiny_builtin.yaml" in low.command and low.needs
    assert not any(a.startswith("train.progress") for a in low.command)  # a low-shot run trains nothing

    for init, top1 in (("mae", 60.0), ("scratch", 50.0)):
        (tmp_path / init / "robustness").mkdir(parents=True)
        (tmp_path / init / "robustness" / "robustness_metrics.json").write_text(json.dumps(_robustness_metrics(top1)))
        (tmp_path / init / "lowshot").mkdir()
        (tmp_path / init / "lowshot" / "lowshot_metrics.json").write_text(json.dumps(
            {"task": "lowshot", "seed": 0, "holdout": 0.2, "C_grid": [1.0], "arch": "vit_tiny_patch8_64",
             "subsets": {"per_class_1": {"top1": top1 / 2, "C": 1.0, "C_selection": "fixed"},
                         "per_class_10": {"top1": top1, "C": 1.0, "C_selection": "held-out"}}}))
    md, _ = build_tables([tmp_path / "mae", tmp_path / "scratch"], tmp_path / "report")
    assert "| low-shot 10 % (demo: 10 img/class) top-1 | MAE | 60.0 (n=1) | +10.0 (one seed" in md
    assert "| 75 % tokens dropped top-1 | MAE | 50.0 (n=1) | +10.0" in md and "corrupted val mean top-1" in md
    assert "IN-R top-1" not in md  # measured by the paper profiles only: no empty rows in the demo
    png = plot_robustness({"mae": [tmp_path / "mae" / "robustness"], "scratch": [tmp_path / "scratch" / "robustness"]},
                          tmp_path / "robustness.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = _robustness_metrics(60.0)
    bad["sets"]["c"]["top1"]["contrast"]["1"] = 130.0
    (tmp_path / "bad" / "robustness").mkdir(parents=True)
    path = tmp_path / "bad" / "robustness" / "robustness_metrics.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(MetricsError, match="sets.c.top1.contrast must map severities to top-1 in percent"):
        load_metrics_file(path)
