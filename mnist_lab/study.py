"""The lab's side of `hydra/sweeper=optuna`: where its studies live, and their trials' runs.

The sweeper (hydra_plugins/mnist_lab_optuna_sweeper) is a Hydra plugin that knows nothing of
the lab; the lab gives it a default storage (`optuna.db` beside the local MLflow store, so a
stopped sweep continues where it was when the same command runs again, and `mnist-lab dashboard`
finds every study), and reads the study back to close its MLflow record.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.mnist_lab_optuna_sweeper import storages
from hydra_plugins.mnist_lab_optuna_sweeper.api import SweeperConfigError
from hydra_plugins.mnist_lab_optuna_sweeper.identity import study_for
from hydra_plugins.mnist_lab_optuna_sweeper.settings import directions
from hydra_plugins.mnist_lab_optuna_sweeper.sweeper import study_name as sweeper_study_name
from mnist_lab.errors import ConfigError
from mnist_lab.identity import NOT_IDENTITY
from mnist_lab.queries import children

SWEEPER_TARGET = "hydra_plugins.mnist_lab_optuna_sweeper.sweeper.OptunaSweeper"
METRIC_NAMES = {"val/loss": "best val/loss", "parameters": "parameters"}  # per objective
# keys that change no trial's result: bookkeeping (identity.NOT_IDENTITY) but `objectives`, which
# is the study's objective, and where the data is read from, which differs between machines
STUDY_IGNORES = [*(k for k in NOT_IDENTITY if k != "objectives"), "data.root", "data.download",
                 "data.verify", "plots", "device"]


def is_optuna_sweep(cfg: DictConfig) -> bool:
    return cfg.hydra.sweeper.get("_target_") == SWEEPER_TARGET


def storage_url(sweeper: DictConfig, tracking: DictConfig, make: bool = True) -> str:
    """`hydra.sweeper.storage`, else `optuna.db` in the folder of the local MLflow database
    (made unless `make` is false: a read makes nothing)."""
    if sweeper.storage:
        return sweeper.storage
    from mnist_lab.store import resolve_uri

    uri = resolve_uri(tracking)
    folder = (Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///")
              else Path(__file__).resolve().parents[1] / "mlruns")
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def lab_defaults(config: DictConfig) -> None:
    """What the lab gives the sweeper where the config says nothing (the sweep callback runs
    before Hydra builds the sweeper, on the same config): its default storage, and the names
    of `objectives` for the dashboard. ConfigError when the directions do not match them."""
    sweeper = config.hydra.sweeper
    given = directions(sweeper.direction)
    if len(given) != len(config.objectives):
        raise ConfigError(f"hydra.sweeper.direction={given} is not allowed: one direction per "
                          f"objective (objectives={list(config.objectives)})")
    with read_write(config.hydra), open_dict(config.hydra):
        sweeper.storage = storage_url(sweeper, config.tracking)
        if sweeper.metric_names is None:
            sweeper.metric_names = [METRIC_NAMES[name] for name in config.objectives]
        if not sweeper.identity_ignore:  # what changes no result is no part of a study's identity
            sweeper.identity_ignore = STUDY_IGNORES


def choose_study(config: DictConfig) -> None:
    """The study this sweep works on, decided before its MLflow parent is made: a study made
    with other settings is never joined (the plugin's identity.study_for). The terminal says
    when the sweep gets a study of its own; SweeperConfigError when the command line names a
    study made with other settings."""
    sweeper, name = config.hydra.sweeper, study_name(config)
    try:
        with storages.exclusive(sweeper.storage, name):  # the first process makes the tables
            name, note = study_for(config, sweeper.storage, name,
                                   list(config.hydra.overrides.task))
    except SweeperConfigError:
        raise
    except ValueError as err:  # a value that can't be searched: the sweeper's own words
        raise SweeperConfigError(f"hydra.sweeper.params: {err}") from None
    if note:
        print(note)
        with read_write(config.hydra), open_dict(config.hydra):
            sweeper.study_name = name


def trials_left(config: DictConfig) -> int | None:
    """How many trials the study's budget has left; None when there is no such study yet."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(config),
                                  storage=storages.open_storage(config.hydra.sweeper.storage))
    except KeyError:
        return None
    return config.hydra.sweeper.n_trials - storages.spent(study)


def study_name(config: DictConfig) -> str:
    return sweeper_study_name(config.hydra.sweeper, config.hydra.sweep.dir)


def settle_study(config: DictConfig, client, parent_id: str) -> int:
    """A trial whose process died (the sweeper failed it: no heartbeat) left its MLflow run
    RUNNING: mark that run KILLED, as liveness.reconcile does for any run whose process is gone.
    Returns how many trials other processes are still running."""
    storage = storages.open_storage(storage_url(config.hydra.sweeper, config.tracking))
    study_id = storage.get_study_id_from_name(study_name(config))
    states = {str(t.number): t.state.name for t in storage.get_all_trials(study_id, deepcopy=False)}
    for run in children(client, parent_id):
        if run.info.status == "RUNNING" and states.get(run.data.tags.get("optuna.trial")) == "FAIL":
            client.set_tag(run.info.run_id, "killed_because", "its process stopped: no heartbeat "
                           f"for hydra.sweeper.grace_period={config.hydra.sweeper.grace_period} s")
            client.set_terminated(run.info.run_id, "KILLED")
    return sum(state == "RUNNING" for state in states.values())
