from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from omegaconf import OmegaConf

from helpers import ROOT, compose_config, run_lab, tiny_overrides
from hydra_plugins.mnist_lab_optuna_sweeper.settings import check_settings
from mnist_lab.identity import config_key, flatten
from mnist_lab.preflight import first_problem
from mnist_lab.job import build_optimizer
from mnist_lab.models import build_model
from mnist_lab.errors import ConfigError
from mnist_lab.schema import job_config
from mnist_lab.study import is_optuna_sweep
from mnist_lab.validation import validate

GROUPS = {
    "model": ["ffnn", "cnn", "cnn_bn"],
    "optim": ["adam", "adamw", "sgd", "rmsprop"],
    "dropout": ["standard", "none"],
    "init": ["normal", "xavier", "kaiming", "default"],
    "sched": ["none", "step", "cosine", "onecycle"],
    "tracking": ["local", "off"],
    "launcher": ["basic", "parallel", "slurm", "submitit_local", "stacked"],
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
    assert type(optimizer).__name__.lower() == cfg.choices.optim
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        cfg.optim.lr / (25 if cfg.choices.sched == "onecycle" else 1))  # OneCycle starts at max/25
    assert (scheduler is None) == (cfg.choices.sched == "none")
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
    assert (cfg.choices.model, cfg.choices.optim, cfg.optim.lr, cfg.dropout.p, cfg.choices.init) == \
        ("ffnn", "adam", 1e-3, 0.2, "normal")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.val_size) == (20, 20, 12000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device"):
        validate(compose_config(["device=cuda"]))


@pytest.mark.parametrize("override, named", [
    ("optim.lrr=0.1", "lrr"), ("optim.lr=fast", "optim.lr"), ("model.hiddn=[10]", "hiddn"),
    ("model=transformer", "transformer"), ("optim=lbfgs", "lbfgs"), ("train.epoch=3", "epoch"),
    ("dropout.q=0.1", "dropout.q"), ("sched=linear", "linear"), ("device=tpu", "tpu"),
])
def test_typos_unknown_options_and_wrong_types_fail_at_composition(override, named):
    with pytest.raises(ConfigCompositionException, match=named):
        compose_config([override])


@pytest.mark.parametrize("override, allowed", [
    ("device=gpu", "auto, cpu, cuda"),
    ("train.progress=fancy", "auto, bar, lines, off"),
    ("train.sched_interval=hour", "epoch, step"),
])
def test_choices_are_enums_refused_at_composition_in_one_line(override, allowed):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])
    problem = first_problem([override])
    key, value = override.split("=")
    assert problem.startswith(f"{override}:") and f"'{value}'" in problem and allowed in problem
    assert "\n" not in problem


def test_schemas_are_no_options_and_help_lists_only_options():
    assert first_problem(["model=cnn_schema"]) == \
        "model=cnn_schema is not an option: model is one of cnn, cnn_bn, ffnn"
    with pytest.raises(ConfigCompositionException):
        compose_config(["model=cnn_schema"])
    listing = run_lab(["--help"]).stdout
    assert "schema" not in listing.split("== Config")[0]
    for group, options in GROUPS.items():
        assert all(option in listing for option in options), group


def test_nodes_hold_no_name_and_the_choices_are_recorded():
    cfg = compose_config(["model=cnn_bn", "optim=sgd", "sched=onecycle", "dropout=none"])
    for group in ("model", "optim", "init", "sched", "dropout", "launcher"):
        assert "name" not in cfg[group]
    assert dict(cfg.choices) == {"model": "cnn_bn", "optim": "sgd", "init": "normal",
                                 "sched": "onecycle", "dropout": "none"}
    assert "interval" not in cfg.sched and cfg.train.sched_interval == "step"
    assert compose_config(["sched=step"]).train.sched_interval == "epoch"
    params = flatten(cfg)
    assert (params["model.name"], params["optim.name"], params["sched.name"]) == \
        ("cnn_bn", "sgd", "onecycle")
    assert not any(key.startswith("choices.") for key in params)


def test_the_output_folder_is_a_config_value_outside_the_run_identity(tmp_path):
    """`output_dir`, where a run writes its files: Hydra's run folder unless given (composed
    outside a job, the outputs/DATE/TIME a single run would get); it changes neither the
    checkpoint a run resumes from nor the MLflow params that runs are compared by."""
    default = compose_config([])
    assert Path(default.output_dir).parents[1] == Path.cwd() / "outputs"
    given = compose_config([f"output_dir={tmp_path}"])
    validate(given)
    assert given.output_dir == str(tmp_path)
    assert config_key(given) == config_key(default) and flatten(given) == flatten(default)


def test_choices_cannot_be_set_by_hand():
    assert "model=" in first_problem(["choices.model=resnet"])


def test_a_component_key_its_target_does_not_take_is_refused():
    cfg = compose_config([])
    # a new component is one YAML file, without a schema: its keys are checked against its
    # target's signature (weight_init.normal(model) takes no gain)
    cfg.init = OmegaConf.create({"_target_": "mnist_lab.weight_init.normal", "_partial_": True,
                                 "gain": 2.0})
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith("init.gain=2.0 is not allowed: not an argument of "
                                     "mnist_lab.weight_init.normal")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_experiment_composes_and_validates(name):
    """Each file in experiments/, found by listing the folder: a new one is checked too, its
    sweeper's settings as well (every plugin an experiment names is installed with the lab)."""
    composed = compose_config([f"experiment={name}"], return_hydra_config=True)
    if is_optuna_sweep(composed):
        check_settings(composed.hydra.sweeper)
    cfg = job_config(composed)
    validate(cfg)
    model = build_model(cfg)
    build_optimizer(cfg, model, steps_per_epoch=10)


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


def test_a_config_recorded_with_names_in_the_nodes_still_loads(tmp_path):
    """Runs recorded before the choices node (a `name` per node, `sched.interval`) or before
    `output_dir` predict and rerun as before."""
    from mnist_lab.schema import load_logged_config

    cfg = compose_config(["model=cnn", "sched=onecycle", "optim=sgd"])
    recorded = OmegaConf.to_container(cfg, resolve=True)
    del recorded["output_dir"]
    for group, name in recorded.pop("choices").items():
        recorded[group]["name"] = name
    recorded["launcher"]["name"] = "basic"
    recorded["sched"]["interval"] = recorded["train"].pop("sched_interval")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(recorded))
    loaded = load_logged_config(tmp_path / "config.yaml")
    assert loaded.output_dir is None  # not recorded: rerun gives the run a new folder
    loaded.output_dir = cfg.output_dir
    assert OmegaConf.to_container(loaded, resolve=True) == OmegaConf.to_container(cfg, resolve=True)


def test_a_new_component_is_one_yaml_file(tmp_path):
    """A scheduler torch has and the lab never named: a file with its target and arguments."""
    (tmp_path / "sched").mkdir()
    (tmp_path / "sched" / "exponential.yaml").write_text(
        "_target_: torch.optim.lr_scheduler.ExponentialLR\ngamma: 0.9\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = compose_config([searchpath, "sched=exponential"])
    validate(cfg)
    optimizer, scheduler = build_optimizer(cfg, build_model(cfg), steps_per_epoch=10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR)
    assert scheduler.gamma == 0.9 and flatten(cfg)["sched.name"] == "exponential"
    problem = first_problem([searchpath, "sched=exponential", "+sched.decay=0.5"])
    assert problem.startswith("sched.decay=0.5 is not allowed: not an argument of "
                              "torch.optim.lr_scheduler.ExponentialLR") and "gamma" in problem


def leaf_values(cfg, prefix: str = "") -> dict[str, object]:
    """Every leaf key of a composed config (dotted) with its value; unresolved interpolations
    are kept as written."""
    values = {}
    for key in cfg:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            values[path] = None
            continue
        value = cfg[key]
        if OmegaConf.is_dict(value) and len(value):
            values.update(leaf_values(value, path + "."))
        else:
            values[path] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return values


def documented_keys() -> dict[str, list[str]]:
    """docs/configuration.md's Keys table: each key named in a row's first column, with the
    default column's backquoted values in the same order (`.optim` after `choices.model` is
    `choices.optim`)."""
    import re

    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("## Keys"):text.index("Every default above")]
    keys = {}
    for row in (line for line in table.splitlines() if line.startswith("| `")):
        names_cell, default_cell = row.split("|")[1:3]
        names = re.findall(r"`([^`]+)`", names_cell)
        defaults = re.findall(r"`([^`]+)`", default_cell.split("(")[0])
        for i, name in enumerate(names):
            full = names[0].rsplit(".", 1)[0] + name if name.startswith(".") else name
            keys[full] = defaults[i:i + 1]
    return keys


def test_the_keys_reference_names_every_key_of_the_schema_with_a_default_it_takes():
    import yaml

    options = [[], ["model=cnn"], ["model=cnn_bn"], *([f"optim={o}"] for o in
               ("adamw", "sgd", "rmsprop")), *([f"sched={s}"] for s in ("step", "cosine",
               "onecycle")), ["launcher=parallel"], ["launcher=submitit_local"]]
    taken: dict[str, list] = {}
    for values in (leaf_values(compose_config(overrides)) for overrides in options):
        for key, value in values.items():
            taken.setdefault(key, []).append(value)
    documented = documented_keys()
    assert sorted(set(documented) - set(taken)) == []  # a key the schema no longer has
    by_group = ("optim.", "sched", "launcher.", "hydra.")  # the groups' own arguments
    undocumented = [key for key in taken if key not in documented and "_target_" not in key
                    and "_partial_" not in key and not key.startswith(by_group)]
    assert undocumented == []
    for key, shown in documented.items():
        if not shown or "$" in shown[0] or "/" in shown[0]:
            continue  # an interpolation or a path: resolved per machine
        value = yaml.safe_load(shown[0])
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        assert any(value == v or str(value) == str(v) for v in taken[key]), (key, shown)
