"""Every `hydra.sweeper` setting checked before anything is written: one line for the first
that can't work (`SweeperConfigError`). An app may call `check_settings` before it starts its
own records; the sweeper calls it again when Hydra sets it up.
"""

import warnings
from dataclasses import fields
from typing import Any, List

from omegaconf import DictConfig, ListConfig, OmegaConf

from hydra_plugins.mnist_lab_optuna_sweeper import storages
from hydra_plugins.mnist_lab_optuna_sweeper.api import SweeperConfigError
from hydra_plugins.mnist_lab_optuna_sweeper.config import OptunaSweeperConf

DIRECTIONS = ("minimize", "maximize")
KEYS = {f.name for f in fields(OptunaSweeperConf)} - {"defaults"}
NOP_PRUNER = "optuna.pruners.NopPruner"


def fail(key: str, value: Any, allowed: str) -> None:
    raise SweeperConfigError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")


def directions(direction: Any) -> List[str]:
    """`direction` as Optuna's list of names: one, or a list (an Enum's name is taken too)."""
    given = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [getattr(d, "name", d) for d in given]
    if not names or any(n not in DIRECTIONS for n in names):
        fail("direction", OmegaConf.to_container(direction) if isinstance(direction, ListConfig)
             else direction, "minimize, maximize, or a list of them (one per value the task "
             "function returns)")
    return names


def configure_function(path: str, app_module: str = "__main__"):
    """The `configure(cfg, trial)` that `custom_search_space` names: a dotted path, or a
    relative one (`.module.function`) beside the app: in its package, or its script's folder."""
    from hydra.utils import get_method

    if path.startswith("."):
        package = app_module.rpartition(".")[0]
        path = f"{package}{path}" if package else path[1:]
    return get_method(path)


def check_built(part: str, given: Any) -> None:
    """Build the sampler or pruner as Hydra will, so that Optuna's own refusal of an argument
    (`reduction_factor=1`) is one line here, not a traceback from inside Hydra."""
    if not given or not given.get("_target_"):
        return
    from hydra.utils import instantiate

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecations: Optuna tells them when it runs
            instantiate(given)
    except Exception as err:
        cause = err.__cause__ or err
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        arguments = ", ".join(f"{k}={v}" for k, v in given.items() if not k.startswith("_"))
        fail(part, f"{given._target_.rpartition('.')[2]}({arguments})",
             f"Optuna refuses it: {text}")


def check_settings(sweeper: DictConfig, app_module: str = "__main__") -> None:
    """Raise SweeperConfigError for the first setting of `hydra.sweeper` that can't work.
    `app_module`: the task function's module, which a relative custom_search_space is beside."""
    unknown = sorted(set(sweeper) - KEYS)
    if unknown:
        fail(unknown[0], sweeper[unknown[0]], f"not a key of this sweeper (its keys: "
             f"{', '.join(sorted(KEYS - {'_target_'}))})")
    objectives = directions(sweeper.direction)
    for key in ("n_trials", "n_jobs", "heartbeat_interval"):
        if not isinstance(sweeper[key], int) or sweeper[key] < 1:
            fail(key, sweeper[key], "at least 1")
    if sweeper.grace_period <= sweeper.heartbeat_interval:
        fail("grace_period", sweeper.grace_period,
             f"more than hydra.sweeper.heartbeat_interval ({sweeper.heartbeat_interval} s)")
    if not 0.0 <= sweeper.max_failure_rate <= 1.0:
        fail("max_failure_rate", sweeper.max_failure_rate, "a share of a batch, from 0 to 1")
    storage = sweeper.storage
    if storage is not None:
        problem = storages.problem_with(storage) if isinstance(storage, str) else "not a URL"
        if problem:
            fail("storage", storage, f"{problem}; give null (optuna.db in the sweep folder), a "
                 "database URL (sqlite:///path.db, postgresql://user@host/db) or "
                 "journal:///path/file.log")
    if sweeper.timeout is not None and not sweeper.timeout > 0:
        fail("timeout", sweeper.timeout, "null (none) or seconds, more than 0")
    if sweeper.metric_names is not None and len(sweeper.metric_names) != len(objectives):
        fail("metric_names", OmegaConf.to_container(sweeper.metric_names),
             f"one name per direction ({len(objectives)})")
    pruner = sweeper.get("pruner")
    if len(objectives) > 1 and pruner and pruner.get("_target_") != NOP_PRUNER:
        fail("pruner", pruner.get("_target_"), "none with several directions: Optuna cannot "
             "prune a multi-objective study (hydra/sweeper/pruner=none)")
    for part in ("sampler", "pruner"):
        check_built(part, sweeper.get(part))
    if sweeper.custom_search_space:
        try:
            configure_function(sweeper.custom_search_space, app_module)
        except Exception as err:
            fail("custom_search_space", sweeper.custom_search_space,
                 f"a dotted path to a function configure(cfg, trial) ({str(err).splitlines()[0]})")
