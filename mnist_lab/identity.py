"""What identifies a run: the config keys that change what it computes, the config flattened,
and the run's name.

One home for these, used by the checkpoint folder (`config_key`), the MLflow params (`flatten`)
and the MLflow run name (`run_name`). Torch-free, so run.py can use it before any heavy import.
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

GROUPS = ("model", "optim", "init", "sched", "dropout")  # in `choices`, logged as `model.name`...

# Keys that don't change what a run computes: the same training continues (resume) and the same
# checkpoint folder is used whatever their values.
NOT_IDENTITY = ("resume", "tracking", "train.progress", "checkpoint", "launcher", "threads",
                "eval", "output_dir", "objectives")


def identifies_run(dotted: str) -> bool:
    """True unless `dotted` (a config key such as `train.progress`) is in NOT_IDENTITY or under one."""
    return not any(dotted == key or dotted.startswith(f"{key}.") for key in NOT_IDENTITY)


def leaves(container: dict, prefix: str = ""):
    """(`a.b.c`, value) for every leaf of a nested dict; lists are leaves."""
    for key, value in container.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The user's knobs as `a.b.c` -> value strings, the form MLflow params take: Hydra's own
    keys (`_target_`, `_partial_`) and bookkeeping (NOT_IDENTITY) are left out, but not `eval`,
    whose `tta` changes the test result; a group's choice (`choices.model`) is the param
    `model.name`, the name users filter on."""
    return {param_name(key): str(value)
            for key, value in leaves(OmegaConf.to_container(cfg, resolve=True))
            if "._" not in f".{key}" and (identifies_run(key) or key.startswith("eval."))}


def param_name(key: str) -> str:
    group, dot, rest = key.partition(".")
    return f"{rest}.name" if group == "choices" and dot else key


def config_key(cfg: DictConfig) -> str:
    """A short hash of what the run computes: same config (and seed) -> same checkpoint folder."""
    kept = sorted((key, repr(value))
                  for key, value in leaves(OmegaConf.to_container(cfg, resolve=True))
                  if identifies_run(key))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]


def run_name(cfg: DictConfig, overrides: list[str], fixed_keys: frozenset[str] = frozenset()) -> str:
    """What this run was given, swept values first so a sweep's children read apart in the
    UI's narrow name column, then model, optimizer, lr and dropout, then what a sweep fixed for
    all its runs: `lr0.003-cnn-adam-p0.2-epochs5`."""
    base = {"model": cfg.choices.model, "optim": cfg.choices.optim,
            "optim.lr": f"lr{cfg.optim.lr:g}", "dropout.p": f"p{cfg.dropout.p:g}"}
    swept, fixed = [], []
    for override in (o.lstrip("+~") for o in overrides):
        key, _, value = override.partition("=")
        if key.startswith("hydra.") or key in ("experiment", "data.root") \
                or not identifies_run(key):
            continue
        if key in base:
            token = base.pop(key)
        elif key in cfg and OmegaConf.is_dict(cfg[key]):  # a group choice: `xavier`, `no-sched`
            token = f"no-{key}" if value == "none" else value
        else:  # a knob: its last name and value, `epochs5`
            token = key.rsplit(".", 1)[-1] + value
        (fixed if key in fixed_keys else swept).append(token)
    return "-".join([*swept, *base.values(), *fixed])
