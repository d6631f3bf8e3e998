"""What identifies a run: the config keys that change what it computes, and the config flattened.

One home for both, used by the checkpoint folder (`config_key`), the MLflow params and the run
name. Torch-free, so run.py can use it before any heavy import.
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

GROUPS = ("model", "optim", "init", "sched", "dropout")  # in `choices`, logged as `model.name`...

# Keys that don't change what a run computes: the same training continues (resume) and the same
# checkpoint folder is used whatever their values.
NOT_IDENTITY = ("resume", "tracking", "train.progress", "checkpoint", "launcher", "threads",
                "eval")


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
    """The resolved config as `a.b.c` -> value strings, the form MLflow params take; a group's
    choice (`choices.model`) is the param `model.name`, the name users filter on."""
    return {param_name(key): str(value)
            for key, value in leaves(OmegaConf.to_container(cfg, resolve=True))}


def param_name(key: str) -> str:
    group, dot, rest = key.partition(".")
    return f"{rest}.name" if group == "choices" and dot else key


def config_key(cfg: DictConfig) -> str:
    """A short hash of what the run computes: same config (and seed) -> same checkpoint folder."""
    kept = sorted((key, repr(value))
                  for key, value in leaves(OmegaConf.to_container(cfg, resolve=True))
                  if identifies_run(key))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]
