"""The GPU check (tools/gpu_check): the CPU dry run of every part, the no-GPU refusal, per-part
time limits, the README table from the JSON, and the wheel preparation's packing."""
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tools.gpu_check.plan import DRY, Part, build_plan
from tools.gpu_check.runner import Schedule, run_command
from tools.gpu_check.summary import bench_row, row_names
from tools.gpu_check.tables import BEGIN, END, RESULT_FILE, readme_block, replace_block

REPO = Path(__file__).resolve().parents[1]


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gpu_check(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.gpu_check", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """tools/gpu_check.sh --dry-run once: (completed process, JSON, out folder, wall seconds)."""
    out, work = tmp_path_factory.mktemp("gpu_check_out"), tmp_path_factory.mktemp("gpu_check_work")
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                          "--work-dir", str(work)], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHON": sys.executable})
    wall = time.monotonic() - t0
    doc_path = out / "gpu_check.json"
    assert doc_path.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(doc_path.read_text()), out, wall


def test_dry_run_runs_every_part(dry_run):
    res, doc, out, wall = dry_run
    assert res.returncode == 0, f"{doc['failed']}\n{res.stderr[-3000:]}"
    plan = build_plan(DRY, Path(doc["work_dir"]))
    assert list(doc["parts"]) == [p.name for p in plan]
    assert {o["status"] for o in doc["parts"].values()} == {"ok"} and doc["failed"] == []
    assert doc["dry_run"] and doc["command"].startswith("tools/gpu_check.sh --dry-run")
    assert doc["wall_s"] < doc["budget_s"] and "segmentation: not run" in doc["segmentation"]
    print(f"dry run: {wall:.0f} s wall")


def test_dry_run_figures_and_checks(dry_run):
    _, doc, _, _ = dry_run
    s = doc["summary"]
    rows = {r["name"]: r for r in s["bench"]}
    assert list(rows) == row_names()
    for name, r in rows.items():
        assert r["images_per_s"] > 0 and r["peak_memory_mib"] > 0 and r["share_of_peak"] > 0, name
    compiled = rows["bench-mae-bf16-compile"]
    assert compiled["compile"] and compiled["flops_from"] == "bench-mae-bf16"  # FLOPs of the eager twin
    assert compiled["train_gflops_per_image"] == rows["bench-mae-bf16"]["train_gflops_per_image"]
    compiled_part = doc["parts"]["bench-mae-bf16-compile"]  # as a stand-in prewarm too (the dry run has none)
    with_prewarm = bench_row(compiled_part, doc["parts"]["bench-mae-bf16"], compiled_part)
    assert with_prewarm["prewarm_first_step_s"] == compiled_part["result"]["first_step_s"]
    assert rows["bench-adpe-bf16"]["crops"] == 4 and rows["bench-droppos-fp16"]["precision"] == "fp16"
    assert rows["bench-droppos-bf16"]["attention_ops"]  # the profiled step names its SDPA kernel
    assert set(s["compile_gain"]) == {"droppos", "mae", "adpe", "finetune"}
    assert len(s["goals"]) == 6 and all(g["met"] is None for g in s["goals"])  # CPU figures: not judged
    training = {t["name"]: t for t in s["training"]}
    for method in ("droppos", "mae", "adpe"):
        t = training[f"pretrain-{method}"]
        assert all(t["checks"].values()) and t["steps"] == 10 and t["resumed_from"] == "checkpoint-00000006.pth"
        assert t["last_loss"] < t["first_loss"]
    assert training["finetune-droppos"]["checks"]["loaded_pretrained"]
    det = s["detection"]
    assert det["status"] == "ok" and all(det["checks"].values()) and det["s_per_iter"] > 0 and not det["amp"]


def test_dry_run_writes_markdown_and_log(dry_run):
    _, doc, out, _ = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (CPU dry run") and "## Training-step benchmark" in md
    assert "| pretrain-adpe | ok |" in md and "Detection (ViTDet Mask R-CNN)" in md and "segmentation: not run" in md
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name}: ok =====" in log for name in doc["parts"])


def test_table_cells_come_from_the_json(dry_run):
    _, doc, _, _ = dry_run
    block = readme_block(doc)
    row = next(r for r in doc["summary"]["bench"] if r["name"] == "bench-droppos-bf16")
    line = next(ln for ln in block.splitlines() if ln.startswith("| DropPos ViT-Ti/8, 32 px, batch 8 | bf16 |"))
    assert f"| {row['images_per_s']:.1f} | {row['step_ms']:.1f} ms |" in line
    assert doc["machine"]["device_name"] in block and doc["date"][:10] in block
    empty = readme_block(None)
    assert "no GPU run yet" in empty and "| DropPos ViT-B/16, 224 px, batch 256 | bf16 |  |  |" in empty


def test_readme_gpu_block_is_rendered_from_the_result_file():
    readme = (REPO / "README.md").read_text()
    result = REPO / RESULT_FILE
    doc = json.loads(result.read_text()) if result.is_file() else None
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert replace_block(readme, readme_block(doc)) == readme, "run: python -m tools.gpu_check --table " \
        f"{RESULT_FILE} --readme README.md"


def test_no_gpu_refusal(tmp_path):
    res = gpu_check("--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), timeout=120,
                    CUDA_VISIBLE_DEVICES="")
    if "no CUDA GPU" not in res.stderr:
        pytest.skip("a CUDA device is visible")
    assert res.returncode == 2 and "--dry-run" in res.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()


def test_a_part_over_its_limit_is_killed_and_named(tmp_path):
    res = gpu_check("--dry-run", "--parts", "bench-droppos-fp32", "--limit", "bench-droppos-fp32=1",
                    "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), timeout=120)
    assert res.returncode == 1 and "bench-droppos-fp32 (timeout" in res.stderr
    part = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]["bench-droppos-fp32"]
    assert part["status"] == "timeout" and part["seconds"] < 10 and "time limit of 1 s" in part["reason"]


def test_timeout_kills_the_whole_process_group(tmp_path):
    child = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
             "print(p.pid, flush=True); time.sleep(60)")
    log = tmp_path / "hang.log"
    status, code, seconds = run_command([sys.executable, "-c", child], 2.0, log)
    assert status == "timeout" and code is None and seconds < 10
    grandchild = int(log.read_text().split()[0])
    time.sleep(0.2)
    assert not running(grandchild)


def test_schedule_dependencies_and_budget(tmp_path):
    def part(name, code, **kw):
        path = tmp_path / f"{name}.json"
        script = f"import json, sys; json.dump({{'name': '{name}'}}, open(r'{path}', 'w')); {code}"
        return Part(name, "test", ["-c", script], 30.0, path, **kw)

    plan = [part("slow", "import time; time.sleep(1)", lane="side"), part("bad", "sys.exit(3)"),
            part("needs_bad", "", needs=("bad",)), part("after_bad", "", after=("bad", "slow")),
            part("late", "", needs=("slow",))]
    outcomes = Schedule(plan, 60, tmp_path / "logs", say=lambda _: None).run()
    status = {k: v["status"] for k, v in outcomes.items()}
    assert status == {"slow": "ok", "bad": "failed", "needs_bad": "skipped", "after_bad": "ok", "late": "ok"}
    assert outcomes["needs_bad"]["reason"] == "needs bad, which failed" and outcomes["bad"]["returncode"] == 3
    spent = Schedule([part("first", "import time; time.sleep(30)"), part("second", "")], 4.0, tmp_path / "logs2",
                     say=lambda _: None).run()
    assert spent["first"]["status"] == "timeout" and "budget" in spent["first"]["reason"]
    assert spent["second"]["status"] == "skipped"


def test_prepare_packs_a_pure_wheel_that_pip_installs(tmp_path):
    from tools.prepare_gpu_wheels import pack_pure_wheel, unmet_requirements

    pkg = tmp_path / "src" / "fakepkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 6\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "conf.yaml").write_text("a: 1\n")
    (pkg / "sub" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (pkg / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    wheel = pack_pure_wheel(pkg, "fakepkg", "0.6", "test", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "fakepkg/sub/conf.yaml" in names and not any(n.endswith((".pyc", ".so")) for n in names)
    assert unmet_requirements([wheel]) == []
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-c", "import fakepkg; print(fakepkg.VALUE, fakepkg.__file__)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert res.stdout.split()[0] == "6" and str(target) in res.stdout


def test_gpu_plan_arguments_and_configs_resolve(tmp_path):
    """Every GPU part's arguments parse with its entry point's parser and its configs resolve
    (no model is built): a typo must not first show on the GPU machine."""
    from classification.finetune import load_finetune_config
    from pretrain.engine.config import load_config
    from tools import benchmark
    from tools.gpu_check import train_parts
    from tools.gpu_check.plan import GPU

    plan = {p.name: p for p in build_plan(GPU, tmp_path)}
    for p in plan.values():
        if p.argv[1] == "tools.benchmark":
            args = benchmark.get_args_parser().parse_args(p.argv[2:])
            assert (args.device, args.batch, args.size) == ("cuda", 256, "base") and args.json
            if args.method != "finetune":
                cfg = benchmark.build_config(args)
                assert int(cfg.model.img_size) == (112 if args.method == "adpe" else 224)
    for method in ("droppos", "mae", "adpe"):
        args = train_parts.get_args_parser().parse_intermixed_args(plan[f"pretrain-{method}"].argv[2:])
        cfg = load_config(args.recipe, [*args.opts, f"train.max_steps={args.steps}"])
        assert (cfg.method, cfg.model.size, int(cfg.train.batch_size), int(cfg.train.accum_iter)) == \
            (method, "base", 64, 1)
        assert 1000 // 64 * int(cfg.train.epochs) >= args.steps > args.resume_at  # 1000 built-in images
    args = train_parts.get_args_parser().parse_intermixed_args(plan["finetune-droppos"].argv[2:])
    cfg = load_finetune_config(args.recipe, args.opts)
    assert (cfg.model.size, int(cfg.model.img_size), int(cfg.train.max_steps)) == ("base", 224, 10)
    pytest.importorskip("detectron2")
    import detection  # noqa: F401
    from detectron2.config import LazyConfig

    from detection.train_net import apply_overrides
    from tools.gpu_check.detection_part import get_args_parser

    args = get_args_parser().parse_args(plan["detection"].argv[2:])
    cfg = apply_overrides(LazyConfig.load(args.config_file), ["dataloader.train.dataset.names=x", *args.opts])
    assert cfg.train.amp.enabled and cfg.model.backbone.square_pad == 1024 and cfg.train.max_iter == 25
    assert cfg.dataloader.train.total_batch_size == 8 and cfg.model.backbone.net.embed_dim == 768


def test_stopping_the_check_ends_its_running_part(tmp_path):
    """A part runs in its own session; SIGTERM to the check must still end it."""
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "tools.gpu_check", "--dry-run", "--parts", "detection",
                             "--out", str(tmp_path / "out"), "--work-dir", str(work)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def part_pids() -> list[int]:
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "tools.gpu_check.detection_part" in text and str(work) in text:
                pids.append(int(cmdline.parent.name))
        return pids

    deadline = time.monotonic() + 60
    while not part_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert part_pids(), "the part did not start"
    proc.send_signal(15)
    assert proc.wait(timeout=30) == 128 + 15
    time.sleep(0.5)
    assert [p for p in part_pids() if running(p)] == []
