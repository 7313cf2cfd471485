"""Runs on a real SLURM (issue 30): the launcher against the one-node SLURM of tools/slurm_local.sh.

The SLURM tests submit the demo profile with tiny budgets (ViT-Tiny MAE pretraining on 40
images, k-NN, a 2-epoch linear probe) through ``--launcher slurm`` and check: (a) the report
and metrics equal a local run's; (b) a pretraining job requeued mid-run (``scontrol
requeue``) resumes and ends with the same per-step losses; (c) a job that reaches its time
limit is requeued by submitit and finishes (submitted first, checked last: SLURM checks time
limits every 30 s, so it runs beside the others); (d) ``--status`` shows a failed stage with
its log and ``--resubmit-failed`` finishes it; bad input is one line before any submission.
Without SLURM tests (e): the recipes' total batch on 8 x 1, 8 x 2 and 4 x 4 GPUs, the srun
environment and the launcher rebuilt on the node. The SLURM tests skip only when
tools/slurm_local.sh says SLURM cannot run here (exit 3: not root, no packages, a foreign
slurm.conf).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.reproduce import main as reproduce
from analysis.reproduce import profiles, slurm_resources
from analysis.reproduce.slurm_job import Launch, node_command
from analysis.reproduce.slurm_status import queue_states, read_jobs
from analysis.reproduce.stages import METHODS, build_stage_table
from pretrain.data.synthetic import make_builtin_dataset
from pretrain.engine.config import load_config
from pretrain.engine.slurm_env import HostlistError, expand_hostlist, slurm_port, torchrun_variables
from pretrain.engine.total_batch import TotalBatchError, plan_total_batch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "slurm_local.sh"
TINY = ["data.limit=40", "train.batch_size=8", "train.save_every_steps=2", "train.log_every=1"]
SHORT = "train.epochs=3"  # 15 steps of 8 images (40 images: 5 steps an epoch)
PAST_SIGNAL_S = 55  # (c) trains this long: past the time-limit signal, which SLURM sends 20-50 s into a 1-min job
STAGES = "pretrain,knn,linear_probe"


# ----------------------------------------------------------------------------- (e) total batch
PAPER_TOTAL = {"pretrain": 4096, "finetune": 1024, "linear_probe": 16384, "attentive_probe": 1024,
               "detection": 64, "segmentation": 16}  # FACTS.md §2 / §4 (attentive probe: the suite's 128 x 8)
DEFAULTS = {"pretrain": "pretrain/configs/default.yaml", **{s: f"classification/configs/{s}_default.yaml"
                                                              for s in ("finetune", "linear_probe", "attentive_probe")}}


def _overrides(cmd: list[str], start: str) -> list[str]:
    return [a for a in cmd[cmd.index(start) + 2:] if "=" in a and not a.startswith("-")]


def _world(cmd: list[str], gpus: int, nodes: int) -> int:
    """The GPUs the stage's launcher starts (checked against the command): ``gpus x nodes``."""
    if "--num-gpus" in cmd:  # Detectron2's launcher
        i = cmd.index("--num-gpus")
        assert cmd[i + 1] == str(gpus) and (nodes == 1 or cmd[cmd.index("--num-machines") + 1] == str(nodes))
    else:
        assert f"--nproc_per_node={gpus}" in cmd and (nodes == 1 or f"--nnodes={nodes}" in cmd)
    return gpus * nodes


def stage_total(stage, world: int) -> int:
    """The total batch a stage's command trains with, read through the recipe loaders themselves."""
    cmd = stage.command
    if stage.name in DEFAULTS:
        cfg = load_config(REPO / cmd[cmd.index("--config") + 1], _overrides(cmd, "--config"),
                          default=REPO / DEFAULTS[stage.name], validator=lambda c: None)
        return int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    if stage.name == "detection":
        import detection  # noqa: F401
        from detectron2.config import LazyConfig

        cfg = LazyConfig.load(str(REPO / cmd[cmd.index("--config-file") + 1]))
        from detection.train_net import apply_overrides  # the entry point's own reading of them

        cfg = apply_overrides(cfg, _overrides(cmd, "--config-file"))
        total = int(cfg.dataloader.train.total_batch_size)
        assert total % world == 0  # Detectron2 splits the total over the GPUs, it cannot accumulate
        return total
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO / cmd[cmd.index("segmentation/train.py") + 1]))
    options = dict(a.split("=", 1) for a in cmd[cmd.index("--cfg-options") + 1:] if "=" in a)
    per_gpu = int(options.get("train_dataloader.batch_size", cfg.train_dataloader.batch_size))
    accum = int(options.get("optim_wrapper.accumulative_counts", cfg.optim_wrapper.get("accumulative_counts", 1)))
    return per_gpu * accum * world


@pytest.mark.parametrize("profile", ["vit_b_200ep", "vit_b_800ep", "vit_l_800ep"])
def test_e_total_batch_of_every_paper_recipe_holds_on_any_cluster_shape(profile, tmp_path):
    for gpus, nodes in ((8, 1), (8, 2), (4, 4)):
        args = reproduce.get_args_parser().parse_args(["--profile", profile, "--gpus", str(gpus), "--nnodes", str(nodes)])
        table = build_stage_table(profiles.profile_from_args(args), tmp_path, list(METHODS))
        checked = set()
        for stage in table:
            if stage.name in PAPER_TOTAL:
                world = _world(stage.command, gpus, nodes)
                assert stage_total(stage, world) == PAPER_TOTAL[stage.name], (profile, gpus, nodes, stage.shell())
                checked.add(stage.name)
        assert checked == set(PAPER_TOTAL)
        if (gpus, nodes) == (8, 1):  # the recipes' own shape: no override
            assert not any("accum_iter=" in a for s in table for a in s.command)


def test_total_batch_refused_or_changed_only_when_asked(capsys):
    assert plan_total_batch(4096, 8, 2, 128) == plan_total_batch(4096, 4, 4, 128)
    assert (plan_total_batch(4096, 8, 2, 128).per_gpu, plan_total_batch(4096, 8, 2, 128).accum) == (128, 2)
    assert plan_total_batch(16384, 16, 1, 2048).per_gpu == 1024
    with pytest.raises(TotalBatchError, match="not a multiple of 6"):
        plan_total_batch(4096, 6, 1, 128)
    with pytest.raises(TotalBatchError, match="cannot accumulate"):
        plan_total_batch(64, 6, 1, 8, accumulation=False)
    changed = plan_total_batch(4096, 6, 1, 128, allow_change=True)
    assert changed.per_gpu * changed.accum * 6 == changed.total and abs(changed.total - 4096) <= 16
    assert reproduce.main(["--profile", "vit_b_200ep", "--gpus", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: droppos pretraining") and "--allow-batch-change" in err[0]
    assert reproduce.main(["--profile", "vit_b_200ep", "--gpus", "6", "--allow-batch-change", "--methods", "mae"]) == 0
    captured = capsys.readouterr()
    assert "mae pretraining: total batch 4104 instead of the recipe's 4096" in captured.err and "lr = blr" in captured.err
    assert "train.batch_size=114 train.accum_iter=6" in captured.out


def test_only_stages_with_a_launcher_ask_for_every_node(tmp_path):
    """A one-process stage (robustness, the position probes) asks for one GPU of one node: with --nnodes 2 the
    other node would run the same command racing on its --output."""
    from analysis.reproduce.slurm import SlurmOptions, _resources, launch_of

    args = reproduce.get_args_parser().parse_args(["--profile", "vit_b_200ep", "--gpus", "8", "--nnodes", "2"])
    profile = profiles.profile_from_args(args)
    opts = SlurmOptions.from_args(args)
    seen = set()
    for stage in build_stage_table(profile, tmp_path, list(METHODS)):
        res = _resources(args, opts, profile, stage)
        parallel = launch_of(stage, profile, args.gpus).kind != "process"
        assert (res.gpus, res.nodes) == ((8, 2) if parallel else (1, 1)), (stage.name, res)
        seen.add((stage.name, parallel))
    assert ("robustness", False) in seen and ("position_probe", False) in seen and ("finetuned_probe", False) in seen
    assert {("pretrain", True), ("finetune", True), ("knn", True), ("detection", True)} <= seen


# ----------------------------------------------------------------------------- srun environment
def test_hostlists_expand_as_scontrol_does():
    cases = {"vm": ["vm"], "gpu[01-03,07]": ["gpu01", "gpu02", "gpu03", "gpu07"],
             "a[1-2]-b[08-09],c": ["a1-b08", "a1-b09", "a2-b08", "a2-b09", "c"], "n[9-11]": ["n9", "n10", "n11"]}
    for spec, hosts in cases.items():
        assert expand_hostlist(spec) == hosts
        if shutil.which("scontrol"):  # the reference parser, where SLURM is installed
            r = subprocess.run(["scontrol", "show", "hostnames", spec], capture_output=True, text=True, timeout=20)
            assert r.stdout.split() == hosts
    with pytest.raises(HostlistError):
        expand_hostlist("gpu[3-1]")


def test_rank_world_and_master_from_slurm_variables_torchrun_wins():
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[03-06]", "SLURM_JOB_ID": "123456"}
    assert torchrun_variables(step) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03",
                                        "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert slurm_port(7) != slurm_port(8)
    assert torchrun_variables({**step, "WORLD_SIZE": "8", "RANK": "5"}) == {}  # torchrun set them
    assert torchrun_variables({**step, "MASTER_PORT": "1234"})["MASTER_ADDR"] == "gpu03"
    assert "MASTER_PORT" not in torchrun_variables({**step, "MASTER_PORT": "1234"})  # the user's own port
    batch_script = {k: v for k, v in step.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
    assert torchrun_variables(batch_script) == {}  # the batch script is one process, whatever --ntasks says
    assert torchrun_variables({**step, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) == {}


def test_launcher_rebuilt_on_the_node_from_the_job():
    cmd = ["torchrun", "--nproc_per_node=8", "-m", "pretrain.main", "--config", "x.yaml"]
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "99"}
    argv, extra = node_command(cmd, Launch("torchrun", 0, 2, 8), env)
    assert argv[1:6] == ["--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=gpu07",
                         f"--master_port={slurm_port(99)}"] and argv[6:] == cmd[2:] and not extra
    one, _ = node_command(cmd, Launch("torchrun", 0, 2, 4), {"SLURM_JOB_ID": "5"})
    assert one[1:3] == ["--nproc_per_node=4", "--standalone"]
    det = ["python", "-m", "detection.train_net", "--num-gpus", "8", "--config-file", "d.py"]
    argv, extra = node_command(det, Launch("detectron2", 3, 2, 8), env)
    assert argv[0] == sys.executable and argv[3:11] == ["--num-gpus", "8", "--num-machines", "2", "--machine-rank",
                                                        "1", "--dist-url", "env://"]
    assert extra == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(slurm_port(99))}


# ----------------------------------------------------------------------------- the local SLURM
@pytest.fixture(scope="session")
def slurm():
    """tools/slurm_local.sh start (seconds when it runs already); left running for the next session, or another one
    sharing it."""
    if not SCRIPT.is_file() or shutil.which("bash") is None:
        pytest.skip("tools/slurm_local.sh or bash missing")
    r = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if r.returncode == 3:
        pytest.skip(r.stderr.strip() or "SLURM cannot run here")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo with tiny budgets on a small built-in data set (what each job unpickles is built here)."""
    root = tmp_path_factory.mktemp("slurm")
    data = root / "data"
    make_builtin_dataset(data, seed=0, formats=("imagefolder",), imagefolder_train_per_class=12,
                         imagefolder_val_per_class=4)
    late = root / "late"  # a data folder that appears only later: the failing k-NN of (d)
    real_demo = profiles.demo_profile

    def demo_profile(*a, **k):
        p = real_demo(*a, **k)
        knn = [f"data.path={late}"] if os.environ.get("SLURM_TEST_LATE") else []
        return dataclasses.replace(p, overrides={**p.overrides, "knn": knn})

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(profiles.PROFILES["demo"], "pretrain", {"mae": ("mae_vit_tiny_builtin.yaml", [SHORT, *TINY])})
        mp.setitem(profiles.DEMO, "linear_probe", ["train.epochs=2", "train.batch_size=32"])
        mp.setitem(slurm_resources.DEMO, "pretrain", (30, 0.1))  # the tiny run checkpoints every 2 steps (~1 s)
        mp.setattr(profiles, "demo_profile", demo_profile)
        mp.setattr(reproduce, "prepare_data", lambda root: None)
        yield {"root": root, "data": data, "late": late, "mp": mp}


def run(demo, out: Path, *extra: str) -> int:
    return reproduce.main(["--output", str(out), "--data", str(demo["data"]), "--methods", "mae", "--no-pictures",
                           "--workers", "0", *extra])


def skip_report(out: Path) -> None:
    """Cancel the run's report job where the test does not read the report (one job fewer on a small machine)."""
    subprocess.run(["scancel", read_jobs(out)["report"]["job_id"]], check=True, timeout=30)


def job_ids(out: Path) -> list[str]:
    jobs = read_jobs(out)
    return [e["job_id"] for e in jobs.get("stages", {}).values()] + [jobs["report"]["job_id"]]


def wait_jobs(out: Path, timeout: float = 240) -> None:
    """Until no job of the run is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = queue_states()
        if not any(states.get(j) is not None and states[j].live for j in job_ids(out)):
            return
        time.sleep(1)
    raise AssertionError(f"jobs of {out} still queued or running after {timeout:.0f} s: {queue_states()}")


def losses(out: Path) -> list[tuple[int, float]]:
    """(step, loss) of each pretraining step in log.jsonl (a line being written is left out)."""
    rows = []
    for line in (out / "mae" / "pretrain" / "log.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return [(r["step"], r["loss"]) for r in rows if r.get("phase") == "train"]


def section(report: Path, title: str) -> str:
    text = report.read_text()
    return text.split(title, 1)[1].split("\n### ", 1)[0]


def test_bad_input_is_one_line_before_anything_is_submitted(slurm, demo, tmp_path, capsys, monkeypatch):
    def refused(*extra: str, profile: str = "demo") -> str:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        if profile == "demo":
            assert run(demo, out, "--launcher", "slurm", *extra) == 2
        else:
            assert reproduce.main(["--profile", profile, "--output", str(out), "--launcher", "slurm", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and not (out / "jobs.json").exists()
        assert not out.exists()  # refused before the protocols, the init records or the data are written
        return err[0]

    assert "partition 'nope' does not exist (partitions: local)" in refused("--partition", "nope")
    assert "less than one checkpoint interval" in refused("--time-limit", "1")  # the default signal 120 s ahead
    assert "asks for 8 GPUs per node (--gpus), more than the nodes of partition local have (0)" in refused(
        "--gpus", "8", "--methods", "mae", profile="vit_b_200ep")
    dead = tmp_path / "dead.conf"
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    dead.write_text(conf.replace("SlurmctldPort=", "SlurmctldPort=1").replace("MessageTimeout=20", "MessageTimeout=2"))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    assert "SLURM controller not reachable" in refused()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert "SLURM not reachable: sbatch, srun" in refused()


@pytest.mark.parametrize("extra, needle", [
    (["--slurm-extra", "bad"], "--slurm-extra 'bad' must look like KEY=VALUE"),
    (["--time-limit", "0"], "--time-limit 0: a job's time limit is at least 1 minute"),
    (["--time-limit", "-3"], "--time-limit -3: a job's time limit is at least 1 minute"),
])
def test_bad_slurm_options_are_one_line_and_write_nothing(extra, needle, tmp_path, capsys, monkeypatch):
    """Checked with the stage table, before anything is written (the protocols, the data); no SLURM needed."""
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: pytest.fail("data prepared before the check"))
    out = tmp_path / "out"
    argv = ["--output", str(out), "--methods", "mae", "--launcher", "slurm", "--no-pictures", *extra]
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()


def test_srun_tasks_join_one_process_group_without_torchrun(slurm, tmp_path):
    code = ("import torch; from pretrain.engine import distributed as du; r, w, l = du.init_distributed(); "
            "t = torch.tensor([float(r + 1)]); du.all_reduce_mean(t); import torch.distributed as d; "
            "x = torch.tensor([float(r + 1)]); d.all_reduce(x); print('RANK', r, w, l, x.item(), flush=True)")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run(["srun", "-n2", "-t", "2", sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = sorted(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RANK"))
    assert rows == [["0", "2", "0", "3.0"], ["1", "2", "1", "3.0"]]


@pytest.fixture(scope="module")
def timelimit_run(slurm, demo, local_run):
    """(c), submitted before the other jobs: a 1-minute limit, the signal 10 s before it, and enough epochs to train
    ``PAST_SIGNAL_S`` seconds at the speed the local run measured (the machine's load varies)."""
    out = demo["root"] / "timelimit"
    rows = [json.loads(line) for line in (local_run / "mae" / "pretrain" / "log.jsonl").read_text().splitlines()]
    times = sorted(b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if a.get("phase") == b.get("phase") == "train")
    epochs = max(4, min(400, int(PAST_SIGNAL_S / times[len(times) // 2] / 5) + 1))
    long = f"train.epochs={epochs}"
    demo["mp"].setitem(profiles.PROFILES["demo"], "pretrain", {"mae": ("mae_vit_tiny_builtin.yaml", [long, *TINY])})
    try:
        assert run(demo, out, "--stages", "pretrain", "--launcher", "slurm", "--time-limit", "1",
                   "--signal-delay", "10") == 0
    finally:
        demo["mp"].setitem(profiles.PROFILES["demo"], "pretrain", {"mae": ("mae_vit_tiny_builtin.yaml", [SHORT, *TINY])})
    skip_report(out)
    return out, epochs


@pytest.fixture(scope="module")
def local_run(demo):
    out = demo["root"] / "local"
    rc = run(demo, out, "--stages", STAGES)
    assert rc == 0, "\n".join(p.read_text()[-2000:] for p in sorted((out / "mae" / "logs").glob("*.log")))
    return out


def test_a_demo_through_slurm_reports_the_local_numbers(timelimit_run, local_run, demo, capsys):
    out = demo["root"] / "slurm"
    assert run(demo, out, "--stages", STAGES, "--launcher", "slurm") == 0
    jobs = read_jobs(out)
    pre, knn, lp = (jobs["stages"][f"mae/{s}"] for s in ("pretrain", "knn", "linear_probe"))
    assert knn["dependency"] == [pre["job_id"]] and lp["dependency"] == [pre["job_id"]]
    assert set(jobs["report"]["dependency"]) == {pre["job_id"], knn["job_id"], lp["job_id"]}
    assert "--dependency=afterok:" + pre["job_id"] in (out / "slurm" / knn["job_id"] / f"{knn['job_id']}_submission.sh").read_text()
    wait_jobs(out)
    for name in ("knn/knn_metrics.json", "linear_probe/classification_metrics.json"):
        ours, local = (json.loads((o / "mae" / name).read_text()) for o in (out, local_run))
        assert ours["top1"] == local["top1"]
    assert losses(out) == losses(local_run) and len(losses(out)) == 15
    title = "### Side by side"
    assert section(out / "report.md", title) == section(local_run / "report.md", title)
    assert (out / "mae" / "logs" / "knn.log").is_file()
    capsys.readouterr()
    assert reproduce.main(["--status", str(out)]) == 0
    status = capsys.readouterr().out
    assert status.count(" done ") >= 3 and "failed" not in status
    # the same command again: everything done, only the report is submitted
    assert run(demo, out, "--stages", STAGES, "--launcher", "slurm") == 0
    assert "0 stage job(s) submitted" in capsys.readouterr().out
    skip_report(out)


@pytest.fixture(scope="module")
def requeued_run(slurm, demo, local_run):
    """(b): pretraining requeued by ``scontrol requeue`` once it has written a checkpoint and 4 steps."""
    out = demo["root"] / "requeued"
    assert run(demo, out, "--stages", "pretrain", "--launcher", "slurm") == 0
    skip_report(out)
    job = read_jobs(out)["stages"]["mae/pretrain"]["job_id"]
    pre = out / "mae" / "pretrain"
    deadline = time.time() + 120
    while time.time() < deadline and not (list(pre.glob("checkpoint-*.pth")) and (pre / "log.jsonl").is_file()
                                          and len(losses(out)) >= 4):
        time.sleep(0.2)
    assert len(losses(out)) < 15, "pretraining ended before it could be requeued"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    wait_jobs(out)
    return out, job


def test_b_requeued_pretraining_resumes_to_the_same_losses(requeued_run, local_run):
    out, job = requeued_run
    log = (out / "slurm" / job / f"{job}_0_log.out").read_text()
    assert "DUE TO JOB REQUEUE" in log and log.count("Starting with JobEnvironment") == 2
    assert "resumed from" in (out / "mae" / "logs" / "pretrain.log").read_text()
    assert losses(out) == losses(local_run)


def test_d_status_shows_a_failed_stage_and_resubmit_finishes_it(requeued_run, demo, capsys, monkeypatch):
    out, _ = requeued_run
    monkeypatch.setenv("SLURM_TEST_LATE", "1")  # k-NN reads a folder that is not there yet
    assert run(demo, out, "--stages", "knn", "--launcher", "slurm") == 0
    skip_report(out)
    wait_jobs(out)
    capsys.readouterr()
    assert reproduce.main(["--status", str(out)]) == 1
    status = capsys.readouterr().out
    line = next(row for row in status.splitlines() if row.startswith("mae/knn"))
    assert " failed " in line and "FAILED" in line and str(demo["late"]) in status  # the log tail names it
    demo["late"].symlink_to(demo["data"] / "imagenet")
    assert reproduce.main(["--resubmit-failed", str(out)]) == 0
    assert "mae/knn: job" in capsys.readouterr().out
    skip_report(out)
    wait_jobs(out)
    assert reproduce.main(["--status", str(out)]) == 0
    assert " done " in next(r for r in capsys.readouterr().out.splitlines() if r.startswith("mae/knn"))


def test_c_job_at_its_time_limit_requeues_and_finishes(timelimit_run):
    out, epochs = timelimit_run
    wait_jobs(out, timeout=300)
    job = read_jobs(out)["stages"]["mae/pretrain"]["job_id"]
    log = (out / "slurm" / job / f"{job}_0_log.out").read_text()
    assert "this job is timed-out" in log and "Requeued job" in log and log.count("Starting with JobEnvironment") >= 2
    metrics = json.loads((out / "mae" / "pretrain" / "pretrain_metrics.json").read_text())
    assert metrics["epochs_done"] == metrics["epochs"] == epochs
    assert [s for s, _ in losses(out)] == list(range(1, 5 * epochs + 1))
