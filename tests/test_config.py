import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import ROOT, compose_config, run_lab, tiny_overrides
from mnist_lab.job import build_optimizer
from mnist_lab.models import build_model
from mnist_lab.schema import ConfigError, validate

GROUPS = {
    "model": ["ffnn", "cnn", "cnn_bn"],
    "optim": ["adam", "adamw", "sgd", "rmsprop"],
    "dropout": ["standard", "none"],
    "init": ["normal", "xavier", "kaiming", "default"],
    "sched": ["none", "step", "cosine", "onecycle"],
    "tracking": ["local", "off"],
    "launcher": ["basic", "parallel", "slurm", "submitit_local"],
}


def test_every_group_folder_is_covered():
    for group, options in GROUPS.items():
        on_disk = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        assert on_disk == sorted(options + (["server"] if group == "tracking" else []))


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_validates_and_builds(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)
    model = build_model(cfg)
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch=10)
    assert type(optimizer).__name__.lower() == cfg.optim.name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        cfg.optim.lr / (25 if cfg.sched.name == "onecycle" else 1))  # OneCycle starts at max/25
    assert (scheduler is None) == (cfg.sched.name == "none")
    loss = model(torch.rand(4, 1, 28, 28)).sum()
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def test_every_optimizer_knob_reaches_the_optimizer():
    cfg = compose_config(["optim=sgd", "optim.lr=0.05", "optim.momentum=0.8",
                          "optim.nesterov=false", "optim.weight_decay=1e-4"])
    optimizer, _ = build_optimizer(cfg, build_model(cfg), 10)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == \
        (0.05, 0.8, False, 1e-4)
    adam, _ = build_optimizer(compose_config(["optim.betas=[0.8,0.99]"]), build_model(cfg), 10)
    assert tuple(adam.param_groups[0]["betas"]) == (0.8, 0.99)


def test_reference_defaults_are_the_notebooks():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.optim.name, cfg.optim.lr, cfg.dropout.p, cfg.init.name) == \
        ("ffnn", "adam", 1e-3, 0.2, "normal")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.val_size) == (20, 20, 12000)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("dropout.p=1.0", "dropout.p"),
    ("dropout.p=-0.1", "dropout.p"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=100000", "train.batch_size"),
    ("train.epochs=0", "train.epochs"),
    ("data.val_size=0", "data.val_size"),
    ("data.val_size=60000", "data.val_size"),
    ("data.limit=0", "data.limit"),
    ("device=gpu", "device"),
    ("threads=-1", "threads"),
    ("train.progress=fancy", "train.progress"),
])
def test_bad_values_fail_naming_key_value_and_what_is_allowed(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "not allowed" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device"):
        validate(compose_config(["device=cuda"]))


def test_typos_and_wrong_types_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_config(["optim.lrr=0.1"])
    with pytest.raises(ConfigCompositionException, match="optim.lr"):
        compose_config(["optim.lr=fast"])
    with pytest.raises(ConfigCompositionException, match="hiddn"):
        compose_config(["model.hiddn=[10]"])
    with pytest.raises(ConfigCompositionException, match="transformer"):
        compose_config(["model=transformer"])


def test_bad_value_from_the_command_line_fails_before_any_work(tmp_path, tiny_data):
    result = run_lab([*tiny_overrides(tiny_data), "dropout.p=1.5", f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 2
    assert "dropout.p=1.5 is not allowed: a probability in [0, 1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "config.yaml").exists()


def test_experiments_are_found_from_any_working_directory(tmp_path):
    result = run_lab(["--cfg", "job", "experiment=notebook"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch_size: 20" in result.stdout
    listing = run_lab(["--help"], cwd=tmp_path)
    assert "experiment: " in listing.stdout and "notebook" in listing.stdout
