"""The benchmark tools run a few steps and report sane numbers; the counted FLOPs are exact.

No timing assertions: the machine is shared.
"""
import json
import math

import pytest
import torch

from pretrain.engine.config import load_config
from pretrain.models import DropPos, create_vit
from tools import benchmark, benchmark_data


def vit_macs(depth: int, dim: int, tokens: int, patches: int, patch: int, classes: int) -> int:
    """Multiply-adds of a ViT forward: patch conv, per block qkv/attn/proj/mlp, avg-pool head, and
    fvcore's LayerNorm estimate (5 per element)."""
    embed = patches * 3 * patch * patch * dim
    block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * 4 * dim
    norms = 2 * tokens * dim * 5
    return embed + depth * (block + norms) + dim * 5 + dim * classes  # fc_norm on the pooled token, head


def test_flop_count_matches_analytic_vit():
    model = create_vit("tiny", img_size=32, patch_size=8, num_classes=10, global_pool="avg")
    macs, skipped = benchmark.count_macs(model, lambda m, x: m(x), (torch.randn(1, 3, 32, 32),))
    assert macs == vit_macs(depth=12, dim=192, tokens=17, patches=16, patch=8, classes=10)
    assert "aten::scaled_dot_product_attention" not in skipped  # counted by our handle


def test_droppos_training_flops_split():
    cfg = load_config("droppos_vit_tiny_builtin.yaml", ["model.img_size=32", "droppos.mask_ratio=0.75"])
    from pretrain.models import build_method

    model = build_method(cfg)
    f = benchmark.training_flops("droppos", model, (3, 32, 32), torch.device("cpu"))
    # The no-grad attentive pass runs the encoder (no patch embedding) over all 1 + 16 tokens.
    # (final norm over every token instead of fc_norm on the pooled one).
    enc = vit_macs(depth=12, dim=192, tokens=17, patches=0, patch=8, classes=0) - 192 * 5 + 17 * 192 * 5
    assert f["forward_nograd_flops"] == pytest.approx(2 * enc)
    assert f["train_flops_per_image"] == pytest.approx(3 * f["forward_grad_flops"] + f["forward_nograd_flops"])
    assert 0 < f["forward_grad_flops"] < f["forward_nograd_flops"]  # 4 visible of 16 patches + small head


def test_gpu_peak_lookup():
    assert benchmark.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert benchmark.gpu_peak_tflops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.0)
    assert benchmark.gpu_peak_tflops("NVIDIA H200", "bf16") == pytest.approx(989.4)
    assert benchmark.gpu_peak_tflops("NVIDIA A100-SXM4-80GB", benchmark.gpu_peak_kind("fp32", tf32=True)) == pytest.approx(156.0)
    assert benchmark.gpu_peak_tflops("NVIDIA A100-SXM4-80GB", benchmark.gpu_peak_kind("fp32", tf32=False)) == pytest.approx(19.5)
    assert benchmark.gpu_peak_tflops("Some Unknown GPU", "bf16") is None


def test_benchmark_cli_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["--method", "droppos", "--size", "tiny", "--img-size", "32", "--patch-size", "8", "--batch", "2",
            "--steps", "2", "--warmup", "1", "--device", "cpu", "--peak-sizes", "256", "--profile", "1",
            "--json", str(out)]
    assert benchmark.main(args) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "share of peak" in text and "2 FLOPs per multiply-add" in text
    r = json.loads(out.read_text())
    assert r["method"] == "droppos" and r["batch"] == 2 and r["precision"] == "fp32"
    assert r["images_per_s"] > 0 and r["step_s_median"] > 0 and r["peak_memory_mib"] > 0
    assert r["train_flops_per_image"] > 0 and r["forward_nograd_flops"] > 0 and r["peak_tflops"] > 0
    assert math.isclose(r["achieved_tflops"], r["train_flops_per_image"] * r["images_per_s"] / 1e12, rel_tol=1e-9)
    assert r["command"].startswith("python -m tools.benchmark --method droppos")
    ops = r["profile"]["top_ops"]
    assert ops and sum(o["share"] for o in ops) <= 1.0 + 1e-6
    assert any("mm" in o["op"] for o in ops)


@pytest.mark.parametrize("method,extra", [("mae", ["mae.decoder_depth=1"]), ("finetune", [])])
def test_benchmark_other_methods(method, extra, capsys):
    args = benchmark.get_args_parser().parse_args(["--method", method, "--size", "tiny", "--img-size", "32",
                                                   "--patch-size", "8", "--batch", "2", "--steps", "1",
                                                   "--warmup", "1", "--no-flops", "--device", "cpu", *extra])
    args.argv = []
    r = benchmark.benchmark(args)
    assert r["method"] == method and r["images_per_s"] > 0 and "train_flops_per_image" not in r
    benchmark.print_result(r)
    assert "images/s" in capsys.readouterr().out


def test_finetune_flops_are_three_forwards():
    model = create_vit("tiny", img_size=32, patch_size=8, num_classes=1000, global_pool="avg")
    f = benchmark.training_flops("finetune", model, (3, 32, 32), torch.device("cpu"))
    fwd = 2 * vit_macs(depth=12, dim=192, tokens=17, patches=16, patch=8, classes=1000)
    assert f["forward_grad_flops"] == pytest.approx(fwd) and f["forward_nograd_flops"] == 0
    assert f["train_flops_per_image"] == pytest.approx(3 * fwd)


def test_train_step_updates_and_returns_output():
    """Trainer.train_step (shared by the loop and the benchmark) steps the optimizer once."""
    args = benchmark.get_args_parser().parse_args(["--size", "tiny", "--img-size", "32", "--patch-size", "8",
                                                   "--batch", "2", "--device", "cpu", "optim.clip_grad=1.0"])
    model, trainer, batch, _, _ = benchmark.build_trainer(args, torch.device("cpu"))
    before = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    out, grad_norm = trainer.train_step(batch)
    assert torch.isfinite(out.loss) and grad_norm is not None and grad_norm > 0
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) after the step


def test_attentive_weights_bf16_match_fp32():
    """The no-grad attentive pass keeps its result under bf16 autocast (the GPU precision)."""
    torch.manual_seed(0)
    m = DropPos(create_vit("tiny", img_size=64, patch_size=8)).eval()
    tokens = m.encoder.embed_patches(torch.randn(4, 3, 64, 64))
    ids = m.sample_masks(4).ids_keep
    w32 = m.attentive_weights(tokens, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w16 = m.attentive_weights(tokens, ids)
    assert w16.dtype == torch.float32
    assert (w16 - w32).abs().sum(-1).max() < 0.02  # L1 distance between the weight distributions


def test_make_large_jpegs(small_builtin, tmp_path):
    root = benchmark_data.make_large_jpegs(small_builtin / "imagenet", tmp_path / "large", 6)
    files = sorted((root / "train").glob("*/*.JPEG"))
    assert len(files) == 6
    from PIL import Image

    with Image.open(files[0]) as im:
        assert im.size == (500, 375) and im.format == "JPEG"
    stamp = files[0].stat().st_mtime_ns
    assert benchmark_data.make_large_jpegs(small_builtin / "imagenet", tmp_path / "large", 6) == root
    assert files[0].stat().st_mtime_ns == stamp  # same arguments: reused
    benchmark_data.make_large_jpegs(small_builtin / "imagenet", tmp_path / "large", 6, noise=5.0)
    assert files[0].stat().st_mtime_ns != stamp  # other arguments: rewritten
    assert json.loads((root / "large_jpegs.json").read_text())["noise"] == 5.0
    own = root / "train" / files[0].parent.name / "mine.JPEG"  # not written by make_large_jpegs: kept
    own.write_bytes(files[0].read_bytes())
    (root / "large_jpegs.json").write_text("{not json")  # unreadable manifest: the folder is written again
    benchmark_data.make_large_jpegs(small_builtin / "imagenet", tmp_path / "large", 6)
    assert own.is_file() and len(list((root / "train").glob("*/large_*.JPEG"))) == 6
    assert json.loads((root / "large_jpegs.json").read_text())["noise"] == 25.0
    with pytest.raises(ValueError, match="--large-noise"):
        benchmark_data.make_large_jpegs(small_builtin / "imagenet", tmp_path / "large", 6, noise=-1.0)


def test_stats_standard_error():
    """The s.e. of the channel mean is the spread of per-image means over sqrt(images)."""
    st = benchmark_data._Stats()
    x = torch.zeros(4, 3, 2, 2)
    x[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)  # per-image means 1..4 in channel R
    st.update(x[:2])
    st.update(x[2:])
    mean, std, se = st.result()
    assert mean[0] == pytest.approx(2.5) and mean[1] == 0.0
    assert std[0] == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std(unbiased=False).item())
    assert se[0] == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item() / 2) and se[1] == 0.0


def test_benchmark_data_cli(small_builtin, tmp_path, capsys):
    out = tmp_path / "d.json"
    args = ["--data", str(small_builtin / "imagenet"), "--workers", "0", "--seconds", "0.4", "--batch", "4",
            "--size", "32", "--warmup-batches", "1", "--json", str(out)]
    assert benchmark_data.main(args) == 0
    assert "vs torchvision" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    res = {r["pipeline"]: r for r in rep["results"]}
    assert set(res) == set(benchmark_data.PIPELINES)
    for r in res.values():
        assert r["images"] > 0 and r["images_per_s"] > 0
        assert all(0.2 < s < 3.0 for s in r["std"]) and all(abs(m) < 2.0 for m in r["mean"])
        assert all(0.0 < e < 1.0 for e in r["mean_se"])
    # Same recipe, two implementations: output statistics agree (loosely: few random crops).
    for a, b in [("pretrain/ours", "pretrain/torchvision")]:
        assert max(abs(x - y) for x, y in zip(res[a]["mean"], res[b]["mean"])) < 0.35


def test_benchmark_table_from_json(tmp_path, capsys):
    from tools import benchmark_table

    train = {"method": "droppos", "size": "small", "patch_size": 16, "img_size": 224, "batch": 16,
             "precision": "fp32", "compile": False, "adamw": "fused", "images_per_s": 8.0, "step_s_median": 2.0,
             "peak_memory_mib": 1500.0, "train_flops_per_image": 18e9, "achieved_tflops": 0.144,
             "peak_tflops": 0.192, "share_of_peak": 0.75, "command": "python -m tools.benchmark --x",
             "machine": {"device_name": "CPU", "threads": 2, "torch": "2.9"}}
    data = {"workers": 1, "folder": {"images": 500, "first_size_wh": [500, 375]}, "command": "python -m tools.benchmark_data",
            "results": [{"pipeline": "pretrain/ours", "images_per_s": 90.0, "images_per_s_per_worker": 90.0,
                         "mean": [0.0, 0.1, -0.1], "std": [1.0, 1.0, 1.0]},
                        {"pipeline": "pretrain/torchvision", "images_per_s": 36.0, "images_per_s_per_worker": 36.0,
                         "mean": [0.0, 0.1, -0.1], "std": [1.0, 1.0, 1.0]}]}
    (tmp_path / "t.json").write_text(json.dumps(train))
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert benchmark_table.main([str(tmp_path / "t.json"), str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "| droppos ViT-small/16 224 px | 16 |" in out and "| 75.0 % |" in out and "0.144 / 0.192" in out
    assert "| pretrain/ours | 500 JPEGs, 500x375 | 1 | 90.0 | 90.0 | 2.50x |" in out
    (tmp_path / "bad.json").write_text('{"method": "droppos"}')
    with pytest.raises(SystemExit, match="bad.json"):
        benchmark_table.main([str(tmp_path / "bad.json")])


def test_benchmark_builds_finetuning_through_the_entry_points_builders():
    """The fine-tuning benchmark's model and optimizer are classification.finetune's: rel_pos honoured, same lr and groups."""
    from classification.finetune import build_model, build_optimizer, load_finetune_config

    argv = ["--method", "finetune", "--size", "tiny", "--img-size", "32", "--patch-size", "8", "--batch", "4",
            "--device", "cpu", "--rel-pos", "model.num_classes=10"]
    args = benchmark.get_args_parser().parse_args(argv)
    model, optimizer, _, _, info = benchmark.build_finetune(args, torch.device("cpu"))
    assert any(".rpe_k." in n for n, _ in model.named_parameters())  # the relative-position blocks are there
    cfg = load_finetune_config(None, ["model.size=tiny", "model.img_size=32", "model.patch_size=8", "train.batch_size=4",
                                      "train.compile=false", "train.precision=auto", "model.num_classes=10"])
    ref_opt, _, lr = build_optimizer(cfg, build_model(cfg, 10, rel_pos=True), world=1)
    assert info["lr"] == lr
    assert [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        (g["lr_scale"], g["weight_decay"], len(g["params"])) for g in ref_opt.param_groups]
