"""Frozen-feature evaluations: weighted k-NN (DINO) and the attentive probe.

Known answers: k-NN votes on a constructed feature set computed by hand (the temperature
decides the winner); an attentive probe finds the one informative token among distractors
where a linear probe on mean-pooled tokens cannot. Then both entry points end to end on the
built-in data (random init and a tiny checkpoint), resume, and the bad inputs.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from classification.attentive_head import AttentivePoolingHead
from classification.attentive_probe import load_attentive_config, main as attentive_main, run as attentive_run
from classification.features import extract_features
from classification.knn import knn_votes, load_knn_config, main as knn_main, vote_accuracy
from classification.model import ProbeHead, build_classifier, encoder_tokens
from pretrain.engine.config import ConfigError
from pretrain.models.vit import create_vit
from pretrain.weights import atomic_torch_save

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_backbone(path: Path, size: str = "tiny") -> Path:
    """An exported backbone.pth of a random ViT/8 at 32 px."""
    torch.manual_seed(0)
    atomic_torch_save({"model": create_vit(size, img_size=32, patch_size=8).state_dict(),
                       "format": "droppos-backbone", "method": "droppos"}, path)
    return path


def builtin_opts(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0", "model.size=tiny",
            "model.img_size=32", "model.patch_size=8", *extra]


def probe_opts(root: Path, out: Path, *extra: str) -> list[str]:
    return builtin_opts(root, out, "train.batch_size=16", "train.epochs=2", "train.eval_every=1",
                        "train.eval_batch_size=20", "train.log_every=1", "train.tensorboard=false",
                        "train.deterministic=true", "optim.warmup_epochs=0", *extra)


# ------------------------------------------------------------------ k-NN: known answers
def test_knn_votes_follow_the_dino_rule_by_hand():
    """Query (1, 0); class 0 has one neighbour of cosine 1, class 1 two of cosine 0.8, class 2 is farther.

    Lengths differ on purpose (the features are L2-normalised first). With k = 3 the class-2
    points are out; at T = 0.07 exp(1/T) beats 2 exp(0.8/T), at T = 1 it does not. Votes are scaled
    by exp(-1/T) (the nearest neighbour's similarity is 1), so the nearest one votes exactly 1.
    """
    bank = torch.tensor([[5.0, 0.0], [2.4, 1.8], [0.4, -0.3], [0.0, 7.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2, 2])
    query = torch.tensor([[3.0, 0.0]])
    for temperature, winner in ((0.07, 0), (1.0, 1)):
        votes = knn_votes(bank, labels, query, num_classes=3, k=3, temperature=temperature)
        want = torch.tensor([[1.0, 2 * math.exp(-0.2 / temperature), 0.0]])
        torch.testing.assert_close(votes, want, rtol=1e-5, atol=0)
        assert votes.argmax(1).item() == winner
    votes = knn_votes(bank, labels, query, num_classes=3, k=4, temperature=1.0)  # (0, 7): cosine 0 -> weight 1
    torch.testing.assert_close(votes, torch.tensor([[1.0, 2 * math.exp(-0.2), math.exp(-1)]]), rtol=1e-5, atol=0)
    # several queries in chunks of one give the same votes as all at once
    queries = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.8, -0.61]])
    torch.testing.assert_close(knn_votes(bank, labels, queries, 3, k=3, chunk=1), knn_votes(bank, labels, queries, 3, k=3))
    # top-1: (1, 0) -> 0 at T = 0.07; (0, 1) -> class 2 ((0, 7) has cosine 1); (0.8, -0.61) -> class 1
    scores = vote_accuracy(knn_votes(bank, labels, queries, 3, k=3), torch.tensor([0, 2, 0]))
    assert scores == {"top1": pytest.approx(200 / 3), "top5": 100.0}
    with pytest.raises(ValueError, match="k=6"):
        knn_votes(bank, labels, query, 3, k=6)


def test_vote_ranking_ties_and_top5():
    votes = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # a tie: the lower class index ranks first
    assert vote_accuracy(votes, torch.tensor([0]))["top1"] == 100.0
    assert vote_accuracy(votes, torch.tensor([1]))["top1"] == 0.0
    ranked = torch.tensor([[7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert vote_accuracy(ranked, torch.tensor([4]))["top5"] == 100.0  # fifth place
    assert vote_accuracy(ranked, torch.tensor([5]))["top5"] == 0.0  # sixth place


# ------------------------------------------------------------------ attentive probe: a toy task
def needle_tokens(n: int, generator: torch.Generator, tokens: int = 16, classes: int = 4):
    """Each sample: ``tokens`` tokens, each the code of a random class plus noise; ONE token (at a random
    place, flagged in dim 0) carries the sample's class. The mean of the tokens hides it among the distractors."""
    dim = 16
    codes = torch.eye(dim)[1:classes + 1] * 2.0
    labels = torch.randint(classes, (n,), generator=generator)
    kinds = torch.randint(classes, (n, tokens), generator=generator)
    where = torch.randint(tokens, (n,), generator=generator)
    kinds[torch.arange(n), where] = labels
    x = codes[kinds] + 0.3 * torch.randn(n, tokens, dim, generator=generator)
    x[torch.arange(n), where, 0] += 3.0
    return x, labels


def fit(head: torch.nn.Module, x, y, pool: bool, steps: int = 300, lr: float = 3e-3) -> None:
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=g)
        batch = x[idx].mean(1) if pool else x[idx]
        loss = F.cross_entropy(head(batch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(head: torch.nn.Module, x, y, pool: bool) -> float:
    head.eval()
    return 100.0 * (head(x.mean(1) if pool else x).argmax(1) == y).float().mean().item()


def test_attentive_probe_finds_the_one_informative_token():
    g = torch.Generator().manual_seed(0)
    x_train, y_train = needle_tokens(2048, g)
    x_test, y_test = needle_tokens(1000, g)
    torch.manual_seed(0)
    attentive = AttentivePoolingHead(16, 4, num_heads=2)
    fit(attentive, x_train, y_train, pool=False)
    linear = ProbeHead(16, 4)
    fit(linear, x_train, y_train, pool=True)
    acc_attentive, acc_linear = accuracy(attentive, x_test, y_test, False), accuracy(linear, x_test, y_test, True)
    assert acc_attentive >= 90.0, (acc_attentive, acc_linear)
    assert acc_linear <= 60.0 and acc_attentive - acc_linear >= 30.0, (acc_attentive, acc_linear)


def test_cached_tokens_are_exactly_the_encoders(small_builtin):
    from classification.data import eval_dataset

    cfg = load_attentive_config("attentive_probe_vit_tiny_builtin", builtin_opts(small_builtin, Path("/unused"),
                                                                                  "data.limit=12"))
    images = eval_dataset(cfg)
    torch.manual_seed(0)
    encoder = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool="token").eval()
    cached = extract_features(encoder, images, 5, 0, torch.device("cpu"), "fp32",
                              lambda e, x: encoder_tokens(e, x, include_cls=True))
    batch = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():
        direct = encoder.forward_features(batch)
    assert cached.tensors[0].shape == (12, 17, 192)
    torch.testing.assert_close(cached.tensors[0], direct)
    with torch.no_grad():
        assert encoder_tokens(encoder, batch[:2]).shape == (2, 16, 192)


# ------------------------------------------------------------------ entry points end to end
def test_knn_cli_random_init_and_checkpoint(small_builtin, tmp_path, capsys):
    out = tmp_path / "scratch"
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml", *builtin_opts(small_builtin, out, "checkpoint=none",
                                                                             "train.seed=3")]) == 0
    m = json.loads((out / "knn_metrics.json").read_text())
    assert m["task"] == "knn" and m["seed"] == 3 and m["checkpoint"] is None and m["pretrain_method"] is None
    assert (m["k"], m["temperature"], m["global_pool"], m["arch"]) == (20, 0.07, "token", "vit_tiny_patch8_32")
    assert (m["train_images"], m["val_images"], m["num_classes"], m["feature_dim"]) == (120, 40, 10, 192)
    assert 0 <= m["top1"] <= m["top5"] <= 100 and (out / "config.yaml").is_file()

    backbone = tiny_backbone(tmp_path / "backbone.pth")
    out = tmp_path / "pretrained"
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml", *builtin_opts(
        small_builtin, out, f"checkpoint={backbone}", "model.global_pool=avg", "knn.k=5", "knn.temperature=0.1",
        "knn.query_chunk=7")]) == 0
    m = json.loads((out / "knn_metrics.json").read_text())
    assert (m["k"], m["temperature"], m["global_pool"], m["pretrain_method"]) == (5, 0.1, "avg", "droppos")
    assert m["checkpoint"] == str(backbone) and (out / "load_report.json").is_file()


def test_knn_leaves_unreadable_images_out_and_says_so(small_builtin, tmp_path, capsys):
    """Evaluation never substitutes images: with data.skip_bad the bad file is dropped, counted and named."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", root / "imagenet")
    bad = sorted((root / "imagenet" / "val").rglob("*.JPEG"))[0]
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml", *builtin_opts(root, out, "checkpoint=none")]) == 1
    assert str(bad) in capsys.readouterr().err  # without the option: one line naming the file
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml",
                     *builtin_opts(root, out, "checkpoint=none", "data.skip_bad=true")]) == 0
    m = json.loads((out / "knn_metrics.json").read_text())
    assert m["data"]["val"]["bad_files"] == 1 and m["data"]["val"]["bad_file_names"] == [str(bad)]
    assert m["data"]["train"]["bad_files"] == 0 and "left out 1 unreadable val images" in capsys.readouterr().out


def test_attentive_probe_cli_and_resume(small_builtin, tmp_path):
    backbone = tiny_backbone(tmp_path / "backbone.pth")
    opts = (f"checkpoint={backbone}", "data.limit=48", "train.seed=5", "train.save_every_steps=2")
    full = tmp_path / "full"
    assert attentive_main(["--config", "attentive_probe_vit_tiny_builtin.yaml", *probe_opts(small_builtin, full, *opts)]) == 0
    m = json.loads((full / "classification_metrics.json").read_text())
    assert m["task"] == "attentive_probe" and m["seed"] == 5 and m["pretrain_method"] == "droppos"
    assert (m["epochs"], m["steps"], m["tokens"], m["num_heads"], m["arch"]) == (2, 6, "patch", 3, "vit_tiny_patch8_32")
    assert m["cache_features"] and 0 <= m["top1"] <= m["top5"] <= 100 and len(m["history"]) == 2
    assert json.loads((full / "load_report.json").read_text())["new"] == ["head.bias", "head.weight"]
    assert {"pool.latent", "fc.weight"} <= set(torch.load(full / "best.pth", weights_only=True)["head"])

    part = tmp_path / "part"  # stopped after 2 steps, then resumed: the same losses as the uninterrupted run
    attentive_run(load_attentive_config("attentive_probe_vit_tiny_builtin.yaml",
                                        probe_opts(small_builtin, part, *opts, "train.max_steps=2")))
    resumed = attentive_run(load_attentive_config("attentive_probe_vit_tiny_builtin.yaml",
                                                  probe_opts(small_builtin, part, *opts)))
    assert resumed["resumed_from"].endswith("checkpoint-00000002.pth")

    def losses(d):
        return [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if r["phase"] == "train"]

    torch.testing.assert_close(torch.tensor(losses(part)), torch.tensor(losses(full)), rtol=1e-5, atol=1e-6)
    assert resumed["top1"] == pytest.approx(m["top1"])


def test_attentive_probe_random_init_uncached(small_builtin, tmp_path):
    out = tmp_path / "uncached"
    m = attentive_run(load_attentive_config("attentive_probe_vit_tiny_builtin.yaml", probe_opts(
        small_builtin, out, "checkpoint=none", "probe.cache_features=false", "probe.include_cls=true",
        "probe.num_heads=2", "train.max_steps=2", "data.limit=40")))
    assert not m["cache_features"] and m["steps"] == 2 and m["tokens"] == "cls+patch" and m["num_heads"] == 2
    assert m["checkpoint"] is None and m["seed"] == 0 and "top1" in m


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("opt, key", [("knn.k=0", "knn.k"), ("knn.k=-3", "knn.k"),
                                      ("knn.temperature=0", "knn.temperature"),
                                      ("knn.temperature=-0.1", "knn.temperature"),
                                      ("model.global_pool=max", "model.global_pool")])
def test_knn_bad_options_are_config_errors(opt, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_knn_config("knn_vit_tiny_builtin", [opt])
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml", f"train.output_dir={tmp_path}", opt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and key in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("entry", ["knn", "lowshot", "attentive_probe"])
@pytest.mark.parametrize("opt, message", [
    ("train.precision=xx", "train.precision must be auto, bf16, fp16 or fp32, got 'xx'"),
    ("model.rel_pos=maybe", "model.rel_pos must be null (auto), true or false, got 'maybe'"),
    ("model.size=giant", "model.size must be one of tiny, small, base, large, huge, got 'giant'"),
    ("model.patch_size=15", "model.img_size (224) must be a positive multiple of model.patch_size (15)"),
])
def test_frozen_protocols_share_the_model_and_train_checks(entry, opt, message, tmp_path, capsys):
    from classification.lowshot import load_lowshot_config, main as lowshot_main

    load, main = {"knn": (load_knn_config, knn_main), "lowshot": (load_lowshot_config, lowshot_main),
                  "attentive_probe": (load_attentive_config, attentive_main)}[entry]
    with pytest.raises(ConfigError) as raised:
        load(None, [opt])
    assert str(raised.value) == message
    assert main([f"train.output_dir={tmp_path}", opt]) == 2  # a one-line config error, before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"config error: {message}"] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("entry", ["knn", "lowshot"])
def test_frozen_evaluations_refuse_other_val_class_folders_alike(entry, small_builtin, tmp_path, capsys):
    import shutil

    from classification.lowshot import main as lowshot_main

    root = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", root / "imagenet")
    shutil.rmtree(sorted((root / "imagenet" / "val").iterdir())[-1])  # val lacks the last class
    main = {"knn": knn_main, "lowshot": lowshot_main}[entry]
    assert main(["--config", f"{entry}_vit_tiny_builtin.yaml", *builtin_opts(root, tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"config error: the class folders of 'val' differ from those of 'train' under {root / 'imagenet'}"]


def test_knn_k_beyond_the_train_images(small_builtin, tmp_path, capsys):
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml",
                     *builtin_opts(small_builtin, tmp_path, "knn.k=500", "data.limit=30")]) == 2
    assert "knn.k=500 exceeds the 30 train images" in capsys.readouterr().err


def test_attentive_bad_options(small_builtin, tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.global_pool must be 'token'"):
        load_attentive_config("attentive_probe_vit_tiny_builtin", ["model.global_pool=avg"])
    with pytest.raises(ConfigError, match="probe.num_heads"):
        load_attentive_config("attentive_probe_vit_tiny_builtin", ["probe.num_heads=0"])
    assert attentive_main(["--config", "attentive_probe_vit_tiny_builtin.yaml",
                           *probe_opts(small_builtin, tmp_path / "heads", "probe.num_heads=5", "data.limit=20")]) == 2
    assert "probe.num_heads=5 does not divide the token width 192" in capsys.readouterr().err


@pytest.mark.parametrize("entry", ["knn", "attentive_probe"])
def test_checkpoint_of_another_architecture_names_the_file(entry, small_builtin, tmp_path, capsys):
    backbone = tiny_backbone(tmp_path / "small_backbone.pth", size="small")  # ViT-S (384 wide); the probe asks ViT-Ti
    main = knn_main if entry == "knn" else attentive_main
    opts = probe_opts if entry == "attentive_probe" else builtin_opts
    assert main(["--config", f"{entry}_vit_tiny_builtin.yaml",
                 *opts(small_builtin, tmp_path / "run", f"checkpoint={backbone}", "data.limit=20")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(backbone) in err
    assert f"the {entry} config builds vit_tiny_patch8_32: model.size=tiny" in err
