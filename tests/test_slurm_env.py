"""torchrun's variables from SLURM's (pretrain.engine.slurm_env): a variable an srun step cannot be
joined from is one line naming it, not a traceback from init_distributed. No SLURM needed."""
from __future__ import annotations

import pytest

from pretrain.engine.slurm_env import HostlistError, SlurmEnvError, torchrun_variables


@pytest.mark.parametrize("change, named", [
    ({"SLURM_STEP_NUM_TASKS": "eight"}, "SLURM_STEP_NUM_TASKS"),
    ({"SLURM_STEP_NUM_TASKS": None, "SLURM_NTASKS": "x8"}, "SLURM_NTASKS"),
    ({"SLURM_PROCID": "five"}, "SLURM_PROCID"),
    ({"SLURM_LOCALID": "-1"}, "SLURM_LOCALID"),
    ({"SLURM_JOB_ID": None}, "SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "12ab"}, "SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": None, "SLURM_JOBID": "12ab"}, "SLURM_JOBID"),
    ({"SLURM_STEP_NODELIST": None}, "SLURM_STEP_NODELIST"),
    ({"SLURM_STEP_NODELIST": "gpu[06-03]"}, "SLURM_STEP_NODELIST"),
])
def test_a_bad_srun_variable_is_one_line_naming_it(change, named):
    """No traceback from init_distributed: a SlurmEnvError naming the variable, printed as one line by the CLI."""
    from pretrain.engine.cli import explain_failure

    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu[03-06]", "SLURM_JOB_ID": "123456"}
    env = {k: v for k, v in {**step, **change}.items() if v is not None}
    with pytest.raises(SlurmEnvError, match=named) as err:
        torchrun_variables(env)
    message = explain_failure(err.value)
    assert message == str(err.value) and named in message and "\n" not in message
    assert issubclass(HostlistError, SlurmEnvError) and issubclass(SlurmEnvError, ValueError)


def test_init_distributed_says_which_variable_in_one_line(monkeypatch, capsys):
    """Through the entry points' CLI: 'error: SLURM_NTASKS ...', exit 1, no traceback."""
    from pretrain.engine import distributed as du
    from pretrain.engine.cli import run_cli

    for key in ("WORLD_SIZE", "RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "two")
    with pytest.raises(SlurmEnvError, match="SLURM_NTASKS must be a number"):
        du.init_distributed()
    assert run_cli([], "test", lambda recipes, opts: {}, lambda cfg: du.init_distributed()) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: SLURM_NTASKS must be a number >= 0, got 'two'"]
