"""The shared, exact feature cache (issue 25): one feature pass per backbone and split, bit for bit.

The cache must give exactly what an uncached pass computes, share one pass between the
linear probe, k-NN and the attentive probe of a backbone, and never read an entry made
from other weights, other files, another transform or another batch size.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from classification.attentive_probe import load_attentive_config, run as attentive_run
from classification.data import eval_dataset
from classification.feature_cache import FeatureCache, FeatureCacheError
from classification.features import encode_dataset, extract_features
from classification.knn import load_knn_config, main as knn_main, run as knn_run
from classification.linear_probe import load_probe_config, run as probe_run
from classification.model import build_classifier, encoder_features, encoder_tokens
from pretrain.models.vit import create_vit
from pretrain.weights import atomic_torch_save

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def backbone(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    atomic_torch_save({"model": create_vit("tiny", img_size=32, patch_size=8).state_dict(), "method": "mae"}, path)
    return path


def opts(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0", "model.size=tiny",
            "model.img_size=32", "model.patch_size=8", "data.limit=40", *extra]


def train_opts(root: Path, out: Path, *extra: str) -> list[str]:
    return opts(root, out, "train.batch_size=8", "train.epochs=2", "train.eval_every=1", "train.eval_batch_size=20",
                "train.log_every=1", "train.tensorboard=false", "train.deterministic=true", "optim.warmup_epochs=0",
                *extra)


def encoder(seed: int = 0, pool: str = "token"):
    torch.manual_seed(seed)
    return build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool=pool).eval()


def images(root: Path, split: str = "val", *extra: str):
    cfg = load_knn_config("knn_vit_tiny_builtin", opts(root, Path("/unused"), *extra))
    return eval_dataset(cfg, split)


def test_cached_features_are_the_uncached_ones_bit_for_bit(small_builtin, tmp_path, capsys):
    enc, data = encoder(), images(small_builtin)
    off = encode_dataset(enc, data, batch_size=7)
    assert off.cache == "off" and off.file is None
    first = encode_dataset(enc, data, batch_size=7, cache_dir=tmp_path)
    again = encode_dataset(enc, data, batch_size=7, cache_dir=tmp_path)
    assert (first.cache, again.cache) == ("stored", "hit") and first.file == again.file
    assert first.file.name.startswith("sequence-")  # a cls-token encoder stores its whole output sequence
    for result in (first, again):
        assert torch.equal(result.features, off.features) and torch.equal(result.labels, off.labels)
    # the tokens come out of the same entry, equal to their own uncached pass
    for view, include_cls in (("patch_tokens", False), ("all_tokens", True)):
        tokens = encode_dataset(enc, data, view=view, batch_size=7, cache_dir=tmp_path)
        direct = extract_features(enc, data, 7, 0, CPU, "fp32", lambda e, x: encoder_tokens(e, x, include_cls))
        assert tokens.cache == "hit" and tokens.file == first.file
        assert torch.equal(tokens.features, direct.tensors[0]) and tokens.features.shape == (40, 17 if include_cls else 16, 192)
    # an average-pooling encoder has its own entry (its pooled feature is no slice of the sequence)
    avg = encoder(pool="avg")
    stored = encode_dataset(avg, data, batch_size=7, cache_dir=tmp_path)
    assert stored.cache == "stored" and stored.file.name.startswith("pooled-")
    assert torch.equal(stored.features, extract_features(avg, data, 7, 0, CPU, "fp32", encoder_features).tensors[0])
    assert "pooled features of 40 images: cache hit" in capsys.readouterr().out


def test_changed_weights_data_transform_or_batch_never_read_a_stale_entry(small_builtin, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", root / "imagenet")
    ckpt = backbone(tmp_path / "a.pth")
    enc, data = encoder(), images(root)
    cache = tmp_path / "cache"
    base = encode_dataset(enc, data, batch_size=8, cache_dir=cache, checkpoint=ckpt)
    assert base.cache == "stored"
    assert encode_dataset(enc, data, batch_size=8, cache_dir=cache, checkpoint=ckpt).cache == "hit"
    # another random initialisation (the scratch baseline under another seed): other weights, other entry
    assert encode_dataset(encoder(seed=1), data, batch_size=8, cache_dir=cache).cache == "stored"
    # the same path now holds other weights: its sha256 changes
    backbone(ckpt, seed=3)
    assert encode_dataset(enc, data, batch_size=8, cache_dir=cache, checkpoint=ckpt).cache == "stored"
    # another batch size, another crop
    assert encode_dataset(enc, data, batch_size=5, cache_dir=cache, checkpoint=ckpt).cache == "stored"
    cropped = images(root, "val", "data.crop_pct=0.5")
    assert encode_dataset(enc, cropped, batch_size=8, cache_dir=cache, checkpoint=ckpt).cache == "stored"
    # an image file rewritten in place (another image, same name): recomputed, and the features differ
    files = sorted((root / "imagenet" / "val").rglob("*.JPEG"))
    shutil.copyfile(files[-1], files[0])
    os.utime(files[0], ns=(1, 1))
    again = encode_dataset(enc, images(root), batch_size=8, cache_dir=cache, checkpoint=ckpt)
    assert again.cache == "stored" and not torch.equal(again.features[0], base.features[0])
    assert len(list(cache.glob("*.features.pt"))) == 6


def test_an_unusable_entry_is_recomputed_and_a_bad_folder_is_one_line(small_builtin, tmp_path, capsys):
    enc, data = encoder(), images(small_builtin)
    first = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)
    first.file.write_bytes(b"truncated")
    again = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path, tag="t")
    assert again.cache == "stored" and torch.equal(again.features, first.features)
    assert f"[t] feature cache: unreadable entry {first.file}" in capsys.readouterr().out
    # an entry under a name that is not its key's (a copied file): never trusted
    other = encode_dataset(encoder(seed=2), data, batch_size=8, cache_dir=tmp_path / "b")
    shutil.copyfile(other.file, first.file)
    assert encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path).cache == "stored"
    assert "holds another key" in capsys.readouterr().out
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(FeatureCacheError, match=f"feature_cache={not_a_folder} is not a folder"):
        FeatureCache(not_a_folder)
    assert knn_main(["--config", "knn_vit_tiny_builtin.yaml",
                     *opts(small_builtin, tmp_path / "run", f"feature_cache={not_a_folder}")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: feature_cache=") and len(err.strip().splitlines()) == 1


def test_a_pass_that_left_unreadable_images_out_is_not_stored(small_builtin, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_builtin / "imagenet", root / "imagenet")
    sorted((root / "imagenet" / "val").rglob("*.JPEG"))[0].write_bytes(b"not a jpeg")
    data = images(root, "val", "data.skip_bad=true")
    result = encode_dataset(encoder(), data, batch_size=8, cache_dir=tmp_path / "cache")
    assert result.cache == "not stored: 1 of 40 images unreadable and left out" and len(result.dataset) == 39
    assert not list((tmp_path / "cache").glob("*.features.pt"))


def test_the_weights_digest_is_made_once_per_unchanged_encoder(small_builtin, tmp_path, monkeypatch):
    import classification.features as features
    from classification.feature_cache import state_digest

    calls = []
    monkeypatch.setattr(features, "state_digest", lambda m: calls.append(1) or state_digest(m))
    enc, data = encoder(), images(small_builtin)
    before = state_digest(enc)

    def digest() -> str:
        return features.entry_key(enc, data, "pooled", 8, "fp32", CPU, None)["weights"]["state"]

    assert digest() == digest() == before and len(calls) == 1  # the key as before, the state hashed once
    first = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)
    assert encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path).cache == "hit" and len(calls) == 1
    # a weight written in place, weights loaded, a parameter replaced: hashed again, never a stale key
    saved = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        enc.blocks[0].attn.qkv.weight.add_(1.0)
    assert digest() == state_digest(enc) != before and len(calls) == 2
    changed = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)
    assert changed.cache == "stored" and changed.file != first.file
    enc.load_state_dict(saved)
    assert digest() == before and len(calls) == 3
    enc.cls_token = torch.nn.Parameter(enc.cls_token.detach() + 1.0)
    assert digest() == state_digest(enc) != before and len(calls) == 4
    enc.cls_token = torch.nn.Parameter(saved["cls_token"].clone())
    assert encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path).file == first.file


def test_only_rank_0_makes_the_keys_and_sends_them(small_builtin, tmp_path, monkeypatch):
    import classification.features as features
    from pretrain.engine import distributed as du

    enc, data = encoder(), images(small_builtin)
    sent = []
    monkeypatch.setattr(du, "all_gather_object", lambda obj: sent.append(obj) or [obj])
    stored = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)  # rank 0: computes and stores
    (rank0,) = sent
    assert rank0[0] is None and rank0[1][0]["view"] == "sequence" and features.FeatureCache(tmp_path).path(
        rank0[1][0]) == stored.file
    # another rank: no key of its own (no state hashed, no file stat), rank 0's decision and keys
    monkeypatch.setattr(du, "is_main_process", lambda: False)
    monkeypatch.setattr(features, "entry_key", lambda *a, **k: pytest.fail("a non-main rank made a key"))
    monkeypatch.setattr(du, "all_gather_object", lambda obj: [(rank0[1][0], rank0[1])] if obj == (None, None)
                        else pytest.fail(f"sent {obj!r}"))
    other = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)
    assert other.cache == "hit" and other.file == stored.file and torch.equal(other.features, stored.features)
    monkeypatch.setattr(du, "all_gather_object", lambda obj: [(None, rank0[1])])  # a miss: computed, not written
    missed = encode_dataset(enc, data, batch_size=8, cache_dir=tmp_path)
    assert missed.cache == "stored" and missed.file == stored.file and torch.equal(missed.features, stored.features)


def history(out: Path) -> list:
    """Every epoch's numbers (losses, accuracies, lr) without its timings."""
    rows = json.loads((out / "classification_metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def test_three_probes_share_one_pass_with_unchanged_numbers(small_builtin, tmp_path):
    """The attentive probe encodes once; the linear probe and k-NN read its entry; every number is as uncached."""
    ckpt = backbone(tmp_path / "backbone.pth")
    cache = f"feature_cache={tmp_path / 'cache'}"
    common = (f"checkpoint={ckpt}", "probe.feature_batch_size=20")
    cached = {}
    for name, load, run in (("attentive", load_attentive_config, attentive_run),
                            ("linear", load_probe_config, probe_run)):
        recipe = f"{'attentive_probe' if name == 'attentive' else 'linear_probe'}_vit_tiny_builtin"
        plain = run(load(recipe, train_opts(small_builtin, tmp_path / f"{name}_plain", *common)))
        cached[name] = run(load(recipe, train_opts(small_builtin, tmp_path / f"{name}_cached", *common, cache)))
        assert plain["feature_cache"] == {"train": "off", "val": "off"}
        assert history(tmp_path / f"{name}_plain") == history(tmp_path / f"{name}_cached")
        assert (plain["top1"], plain["top5"]) == (cached[name]["top1"], cached[name]["top5"])
    assert cached["attentive"]["feature_cache"] == {"train": "stored", "val": "stored"}
    assert cached["linear"]["feature_cache"] == {"train": "hit", "val": "hit"}
    knn = [knn_run(load_knn_config("knn_vit_tiny_builtin", opts(small_builtin, tmp_path / f"knn{i}", f"checkpoint={ckpt}",
                                                              "knn.feature_batch_size=20", *extra)))
           for i, extra in enumerate([(), (cache,)])]
    assert knn[1]["feature_cache"] == {"train": "hit", "val": "hit"} and knn[0]["feature_cache"]["train"] == "off"
    assert (knn[0]["top1"], knn[0]["top5"]) == (knn[1]["top1"], knn[1]["top5"])
    assert len(list((tmp_path / "cache").glob("*.features.pt"))) == 2  # one pass: train and val sequences
