"""Any backbone in the comparison (issue 25): ``--init NAME=PATH``, evaluation-only profiles, provenance.

Tiny ViT-Ti/8 checkpoints in the released layouts (MAE's ``{'model': timm names}`` without a
decoder, DropPos's and AdPE's whole pretraining checkpoints with ``module.`` prefixes and a
pickled Namespace, the suite's safetensors export with its card) go through the demo profile's
k-NN stage beside each other (one process per row: the other stages are the same stage builder,
listed by the dry run); each row, its provenance, the "vs" column and the same weights under two
names are checked; then the bad inputs, each one line with nothing run.
"""
import csv
import json
import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_files import save_reference_style  # noqa: E402

from analysis.layout import STAGES  # noqa: E402
from analysis.reproduce import main as reproduce  # noqa: E402
from analysis.tables.provenance import provenance_table  # noqa: E402
from analysis.tables.runs import collect_runs  # noqa: E402
from pretrain.data.synthetic import make_builtin_dataset  # noqa: E402
from pretrain.engine.config import load_config  # noqa: E402
from pretrain.models.registry import build_method  # noqa: E402
from pretrain.models.vit import create_vit  # noqa: E402
from pretrain.weights import atomic_torch_save, to_reference_layout  # noqa: E402
from pretrain.weights.export import export_weights  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """130 train / 40 val images (one linear-probe batch of 128 fits) and the four checkpoint layouts."""
    root = tmp_path_factory.mktemp("any_backbone")
    make_builtin_dataset(root / "data", seed=0, formats=("imagefolder",), imagefolder_train_per_class=13,
                         imagefolder_val_per_class=4)
    torch.manual_seed(0)
    out = {"data": root / "data", "mae": root / "mae_pretrain_vit_tiny.pth"}
    torch.save({"model": create_vit("tiny", img_size=64, patch_size=8).state_dict()}, out["mae"])
    for seed, method in enumerate(("droppos", "adpe"), start=1):
        torch.manual_seed(seed)
        model = build_method(load_config(f"{method}_vit_tiny_builtin.yaml"))
        out[method] = root / f"{method}_released.pth"
        save_reference_style(to_reference_layout(model.state_dict()), out[method])
    torch.manual_seed(3)
    atomic_torch_save({"model": create_vit("tiny", img_size=64, patch_size=8).state_dict(), "format": "droppos-backbone",
                       "method": "mine"}, root / "mine_backbone.pth")
    out["mine"] = root / "mine.safetensors"
    export_weights(root / "mine_backbone.pth", out["mine"], "safetensors")
    from safetensors.torch import save_file  # timm's own .safetensors: a plain state dict, no card

    torch.manual_seed(4)
    timm_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, num_classes=0)
    out["timm"] = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_vit.state_dict().items()}, str(out["timm"]))
    return out


def run(files: dict[str, Path], out: Path, *extra: str) -> int:
    return reproduce.main(["--methods", "none", "--data", str(files["data"]), "--output", str(out), "--no-pictures",
                           "--workers", "0", "--jobs", "2", *extra])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_released_layouts_side_by_side_with_provenance(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)  # the tiny data set is there
    out = tmp_path / "demo"
    inits = [f"--init=mae={files['mae']}", f"--init=droppos_rel={files['droppos']}",
             f"--init=adpe_rel={files['adpe']}", f"--init=mine={files['mine']}", f"--init=mae_copy={files['mae']}",
             f"--init=timm_vit={files['timm']}"]
    assert run(files, out, *inits, "--stages", "knn", "--reference", "droppos_rel") == 0
    log = capsys.readouterr().out
    assert "[reproduce] --init mae_copy: " in log and "the same weights as mae" in log
    assert "pretrain" not in {p.name for p in out.glob("*/*")}  # no pretraining for an --init
    rows = {r["run"]: r for r in read_csv(out / "report" / "results.csv")}
    assert set(rows) == {"mae", "droppos_rel", "adpe_rel", "mine", "mae_copy", "timm_vit"}
    for name, row in rows.items():
        assert float(row["k-NN top-1"]) > 0 and row["LP top-1"] == "—", row
        assert len(row["sha256"]) == 64 and row["architecture"].startswith("ViT-Ti/8")
        assert "left at initialisation: head.bias, head.weight" in row["load report"]
    assert (rows["mae"]["format"], rows["droppos_rel"]["format"], rows["adpe_rel"]["format"]) == (
        "backbone", "droppos", "adpe")
    assert rows["mine"]["format"] == "backbone .safetensors" and "exported_to safetensors" in rows["mine"]["card"]
    assert rows["timm_vit"]["card"] == "none" and rows["timm_vit"]["source file"].endswith("model.safetensors")
    assert rows["mae"]["card"] == "none" and rows["mae"]["source file"] == str(files["mae"].resolve())
    assert rows["adpe_rel"]["position embedding"].startswith("relative: contextual (iRPE, AdPE)")
    assert "resized: pos_embed" in rows["adpe_rel"]["load report"]  # AdPE's 32 px crops -> the 64 px recipe
    assert rows["mae"]["position embedding"] == "absolute"
    # the same file under two names: the same weights, the same numbers
    assert (rows["mae"]["same weights as"], rows["mae_copy"]["same weights as"]) == ("mae_copy", "mae")
    assert rows["droppos_rel"]["same weights as"] == "—"
    assert rows["mae"]["k-NN top-1"] == rows["mae_copy"]["k-NN top-1"]
    # the "vs" column compares with --reference
    comparison = read_csv(out / "report" / "comparison.csv")
    assert "vs droppos_rel" in comparison[0]
    knn = {r["initialisation"]: r for r in comparison if r["measure"] == "k-NN top-1"}
    assert knn["droppos_rel"]["vs droppos_rel"] == "reference"
    diff = float(rows["mine"]["k-NN top-1"]) - float(rows["droppos_rel"]["k-NN top-1"])
    assert knn["mine"]["vs droppos_rel"].startswith(f"{diff:+.1f}")
    report = (out / "report.md").read_text()
    assert "Initialisations: where each row's weights came from" in report and "mine (weights: mine.safetensors)" in report
    # one feature pass per backbone: the copy read the original's features from the shared cache
    caches = {name: json.loads((out / name / "knn" / "knn_metrics.json").read_text())["feature_cache"]
              for name in ("mae", "mae_copy")}
    assert sorted(c["train"] for c in caches.values()) == ["hit", "stored"]
    assert json.loads((out / "mine" / "init.json").read_text())["sha256"] == rows["mine"]["sha256"]


def test_provenance_of_the_suites_own_rows_and_scratch(files, tmp_path):
    run_dir, scratch = tmp_path / "mae", tmp_path / "scratch"
    protocol = {"init": "mae", "stages": {"knn": {"checkpoint": str(files["mae"]), "seed": 0}}}
    (run_dir / "knn").mkdir(parents=True)
    (run_dir / "protocol.json").write_text(json.dumps(protocol))
    (run_dir / "knn" / "knn_metrics.json").write_text(json.dumps({"task": "knn", "top1": 50.0, "seed": 0}))
    (run_dir / "knn" / "load_report.json").write_text(json.dumps({"loaded": ["a"] * 150, "new": ["head.bias"]}))
    (scratch / "knn").mkdir(parents=True)
    (scratch / "knn" / "knn_metrics.json").write_text(json.dumps({"task": "knn", "top1": 10.0, "seed": 0}))
    header, rows = provenance_table(collect_runs([run_dir, scratch]))
    by = {r[0]: dict(zip(header, r)) for r in rows}
    assert by["mae"]["source file"] == str(files["mae"]) and by["mae"]["architecture"] == "ViT-Ti/8 @64 px"
    assert by["mae"]["load report"] == "loaded 150 tensors; left at initialisation: head.bias"
    assert by["scratch"]["source file"] == "random initialisation" and by["scratch"]["sha256"] == "—"


def test_demo_dry_run_gives_an_init_every_transfer_stage_with_its_methods_recipes(files, tmp_path, capsys):
    out = tmp_path / "demo"
    assert reproduce.main(["--dry-run", "--output", str(out), "--methods", "scratch", "--init", f"a={files['adpe']}",
                           "--seeds", "2"]) == 0
    text = capsys.readouterr().out
    heads = [line.split(" -> ")[0] for line in text.splitlines() if line.startswith("# a") and " -> " in line]
    assert heads == [f"# {f} / {s}" for s in STAGES[1:] for f in ("a", "a/seed1")]  # all but pretraining
    ckpt = files["adpe"].resolve()
    assert f"-m classification.linear_probe --config classification/configs/linear_probe_vit_tiny_builtin.yaml " \
           f"checkpoint={ckpt} train.output_dir={out / 'a' / 'linear_probe'}" in text
    assert f"feature_cache={out / 'feature_cache'}" in text and "--label a" in text
    assert f"--pretrained {ckpt}" in text and "# scratch / finetuned_probe" not in text
    assert "--init a: " in text and "contextual" not in text.split("--init a: ")[0]
    assert not out.exists()


def test_eval_profile_dry_run_prints_paper_commands_for_each_init(tmp_path, capsys):
    torch.manual_seed(0)
    base = tmp_path / "vit_b.pth"
    torch.save({"model": {k: v.half() for k, v in create_vit("base").state_dict().items()}}, base)
    out = tmp_path / "eval"
    assert reproduce.main(["--profile", "vit_b_eval", "--init", f"mae={base}", "--init", f"mine={base}", "--dry-run",
                           "--output", str(out), "--imagenet", "/in1k", "--gpus", "4"]) == 0
    text = capsys.readouterr().out
    assert "-m pretrain.main" not in text
    for name in ("mae", "mine"):
        assert (f"torchrun --nproc_per_node=4 -m classification.finetune --config "
                f"classification/configs/finetune_vit_base_100ep.yaml checkpoint={base.resolve()} "
                f"train.output_dir={out / name / 'finetune'}") in text
        assert f"train.init_checkpoint={base.resolve()} train.output_dir={out / name / 'detection'}" in text
        assert f"--checkpoint {base.resolve()} --work-dir {out / name / 'segmentation'}" in text
        assert f"-m analysis.position_probe --checkpoint {base.resolve()} --data /in1k" in text
    assert "mask_rcnn_vitdet_b_100ep.py" in text and "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py" in text
    assert f"python -m analysis.tables {out / 'mae'} {out / 'mine'}" in text
    assert "ViT-B/16 @224 px" in text and "the same weights as mine" in text
    assert not out.exists()  # printing only


def bad(argv: list[str], capsys, *needles: str) -> None:
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def test_bad_inits_are_one_line_and_run_nothing(files, tmp_path, capsys):
    out = tmp_path / "out"
    demo = ["--methods", "none", "--output", str(out), "--dry-run"]
    bad([*demo, "--init", f"x={tmp_path / 'missing.pth'}"], capsys, "checkpoint file not found", "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    bad([*demo, "--init", f"x={garbage}"], capsys, "garbage.pth", "corrupt or truncated")
    no_vit = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}}, no_vit)
    bad([*demo, "--init", f"x={no_vit}"], capsys, "resnet.pth", "no ViT encoder weights found")
    bad([*demo, "--init", f"a={files['mae']}", "--init", f"a={files['mine']}"], capsys, "--init a= is given twice")
    bad(["--methods", "mae,scratch", "--output", str(out), "--dry-run", "--init", f"mae={files['mae']}"], capsys,
        "--init mae= collides with the method 'mae'")
    bad([*demo, "--init", f"x={files['mae']}", "--reference", "nope"], capsys, "--reference nope: not a row")
    bad([*demo, "--init", "mae=timm/vit_base_patch16_224.mae"], capsys, "is not a local file",
        "nothing is ever downloaded")
    bad([*demo, "--init", "justaname"], capsys, "expected NAME=PATH")
    torch.manual_seed(0)
    small = tmp_path / "vit_small.pth"
    torch.save({"model": create_vit("small", img_size=64, patch_size=8).state_dict()}, small)
    bad([*demo, "--init", f"s={small}"], capsys, "the weights are ViT-S/8 @64 px",
        "the demo profile has recipes for ViT-Ti/8 only")
    patch16 = tmp_path / "vit_tiny16.pth"
    torch.save({"model": create_vit("tiny", img_size=64, patch_size=16).state_dict()}, patch16)
    bad([*demo, "--init", f"t={patch16}"], capsys, "ViT-Ti/16 @64 px", "recipes for ViT-Ti/8 only")
    bad(["--profile", "vit_b_eval", "--output", str(out), "--init", f"t={patch16}"], capsys,
        "ViT-Ti/16", "the vit_b_eval profile has recipes for ViT-B/16 only")
    bad(["--profile", "vit_b_eval", "--output", str(out)], capsys, "add --init NAME=PATH")
    bad(["--profile", "vit_l_eval", "--methods", "droppos", "--init", f"t={patch16}"], capsys, "runs no pretraining")
    assert not out.exists()


def test_the_pictures_get_every_row_the_inits_included(files, tmp_path, monkeypatch):
    """An --init row runs the probe and robustness stages: its curves belong in those pictures."""
    seen = []
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)
    monkeypatch.setattr(reproduce, "run_stages", lambda *a, **k: {})
    monkeypatch.setattr(reproduce, "make_pictures", lambda out, data, rows: seen.append(list(rows)) or [])
    monkeypatch.setattr(reproduce, "write_report", lambda *a, **k: tmp_path / "report.md")
    assert reproduce.main(["--methods", "scratch", "--data", str(files["data"]), "--output", str(tmp_path / "out"),
                           "--jobs", "1", "--init", f"mine={files['mine']}"]) == 0
    assert seen == [["scratch", "mine"]]


def test_an_init_name_may_not_be_what_the_run_writes_at_its_output_root(files, tmp_path, capsys):
    """The submitit folder, the job record, the report, the feature cache: an --init run folder of that name would
    mix with them."""
    from analysis.layout import OUTPUT_ROOT_ENTRIES
    from analysis.reproduce.inits import InitError, parse_inits

    assert {"slurm", "jobs.json", "report", "report.md", "feature_cache", ".replaced"} <= OUTPUT_ROOT_ENTRIES
    for name in sorted(OUTPUT_ROOT_ENTRIES | {"logs", "pictures"}):
        with pytest.raises(InitError, match="NAME must be a plain folder name"):
            parse_inits([f"{name}=x.pth"], [])
    assert parse_inits(["mine=x.pth"], []) == [("mine", "x.pth")]
    out = tmp_path / "out"
    for name in ("slurm", "jobs.json", "report.md"):
        bad(["--methods", "none", "--output", str(out), "--init", f"{name}={files['mae']}"], capsys,
            f"--init '{name}=", "not one of", "jobs.json, logs, pictures, report, report.md, slurm")
    assert not out.exists()
