"""Methods own their config checks: one rule per option, the same for pretraining and sweeps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analysis.reproduce.profiles import demo_profile
from analysis.sweeps.ablation import AblationError, format_value, plan_sweep
from pretrain.engine.config import ConfigError, load_config
from pretrain.models.droppos import MIN_TAU
from pretrain.models.option_checks import OptionError
from pretrain.models.registry import build_method, method_class

DROPPOS = "pretrain/configs/droppos_vit_tiny_builtin.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("droppos.tau=0", "droppos.tau"),
        ("droppos.tau=1e-13", "droppos.tau"),
        ("droppos.sigma=-0.5", "droppos.sigma"),
        ("droppos.mask_ratio=0.99", "keeps 0 of the 64 patches"),
        ("droppos.pos_drop_ratio=1.0", "droppos.pos_drop_ratio"),
        ("droppos.smoothing=gauss", "droppos.smoothing"),
        ("optim.clip_grad=abc", "optim.clip_grad"),
        ("optim.clip_grad=inf", "optim.clip_grad"),
        ("optim.lr=0", "optim.lr"),
    ],
)
def test_pretraining_and_sweep_refuse_with_the_same_rule(override, message):
    """A direct pretraining run and an ablation point refuse the same value with the same message."""
    with pytest.raises(ConfigError, match=message) as direct:
        load_config(DROPPOS, [override])
    with pytest.raises(AblationError, match=message) as swept:
        plan_sweep([override], demo_profile(Path("data/builtin"), 1))
    assert str(direct.value).split(": ", 1)[-1] in str(swept.value)


def test_check_config_goes_through_the_registry():
    """build_method runs the method's check_config: a config built by hand is refused too."""
    cfg = load_config(DROPPOS)
    cfg.droppos.tau = 1e-4  # below MIN_TAU
    with pytest.raises(OptionError, match="droppos.tau"):
        build_method(cfg)
    mae = load_config("pretrain/configs/mae_vit_tiny_builtin.yaml")
    mae.mae.mask_ratio = 0.999
    with pytest.raises(OptionError, match="mae.mask_ratio"):
        method_class("mae").check_config(mae)


def test_tiny_tau_gave_nan_and_the_bound_is_finite():
    """Below MIN_TAU the attentive weights can all underflow (NaN at step 1); at the default and the bound they do not."""
    cfg = load_config(DROPPOS)
    losses = {}
    for tau in (1e-4, MIN_TAU, 0.1):
        cfg.droppos.tau = tau
        torch.manual_seed(0)
        model = method_class("droppos").from_config(cfg)  # bypasses the check, to show why it exists
        x = torch.randn(4, 3, cfg.model.img_size, cfg.model.img_size)
        losses[tau] = float(model(x, generator=torch.Generator().manual_seed(0)).loss)
    assert torch.isnan(torch.tensor(losses[1e-4]))
    assert all(torch.isfinite(torch.tensor(losses[t])) for t in (MIN_TAU, 0.1))


def test_sweep_values_that_print_alike_get_their_own_folders():
    """0 and 1e-13 are two values: two folders (they both printed '0.0' before)."""
    assert format_value(0.0) != format_value(1e-13)
    assert format_value(1.0) == "1.0" and format_value(0.05) == "0.05" and format_value(1.5e-4) == "0.00015"
    _, points = plan_sweep(["droppos.sigma=0,1e-13"], demo_profile(Path("data/builtin"), 1))
    names = [p.name for p in points]
    assert len(set(names)) == len(names) == 3


@pytest.mark.parametrize("spec", ["optim.clip_grad=abc", "optim.clip_grad=true", "optim.clip_grad=[1", "optim.lr=-1"])
def test_sweep_of_a_null_default_key_is_type_checked_before_any_stage(spec):
    """A key whose default is null gets its value checked by the config's rule at planning time."""
    with pytest.raises(AblationError, match=spec.split("=")[0]):
        plan_sweep([spec], demo_profile(Path("data/builtin"), 1))
