"""The Optuna study behind `hydra/sweeper=optuna`: where it lives, its name, its trial budget.

The sweeper (hydra_plugins/mnist_lab_optuna_sweeper), the sweep module (the MLflow parent) and
each trial's job (the pruning hook) all open the same study from the same config, so these rules
have one home here. A study always lives in a database, never in memory: `hydra.sweeper.storage`
when set, else `optuna.db` beside the local MLflow store, so a sweep that is stopped continues
where it was when the same command runs again. Optuna is imported only when a study is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab.errors import ConfigError
from mnist_lab.queries import children

SWEEPER_TARGET = "hydra_plugins.mnist_lab_optuna_sweeper.sweeper.OptunaSweeper"
DIRECTIONS = ("minimize", "maximize")
# a trial counts against n_trials once asked, whatever became of it (WAITING ones are not asked)
SPENT = ("RUNNING", "COMPLETE", "PRUNED", "FAIL")


def is_optuna_sweep(cfg: DictConfig) -> bool:
    return cfg.hydra.sweeper.get("_target_") == SWEEPER_TARGET


def check(sweeper: DictConfig) -> None:
    """The sweeper's own keys, checked before a study or an MLflow run is touched."""
    def fail(key, value, allowed):
        raise ConfigError(f"hydra.sweeper.{key}={value!r} is not allowed: {allowed}")

    if sweeper.direction not in DIRECTIONS:
        fail("direction", sweeper.direction, "minimize or maximize (run.py returns one value)")
    for key in ("n_trials", "n_jobs", "heartbeat_interval"):
        if sweeper[key] < 1:
            fail(key, sweeper[key], "at least 1")
    if sweeper.grace_period <= sweeper.heartbeat_interval:
        fail("grace_period", sweeper.grace_period,
             f"more than hydra.sweeper.heartbeat_interval ({sweeper.heartbeat_interval} s)")
    storage = sweeper.storage
    if storage is not None and not (isinstance(storage, str) and "://" in storage):
        fail("storage", storage, "null (optuna.db beside the MLflow store) or a database URL "
             "(sqlite:///path.db, postgresql://user@host/db)")


def storage_url(sweeper: DictConfig, tracking: DictConfig) -> str:
    """`hydra.sweeper.storage`, else `optuna.db` in the folder of the local MLflow database."""
    if sweeper.storage:
        return sweeper.storage
    from mnist_lab.store import resolve_uri

    uri = resolve_uri(tracking)
    folder = (Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///")
              else Path(__file__).resolve().parents[1] / "mlruns")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def study_name(sweeper: DictConfig, hydra: DictConfig) -> str:
    """`hydra.sweeper.study_name`; without one, each sweep folder is a study of its own."""
    return sweeper.study_name or f"sweep:{hydra.sweep.dir}"


def shown(url: str) -> str:
    """The storage URL without its password, for logs and MLflow tags."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, sweeper: DictConfig | None = None):
    """RDBStorage on `url`; with the sweeper's config, with heartbeats so lost trials can end."""
    import optuna

    if sweeper is None:
        return optuna.storages.RDBStorage(url)
    return optuna.storages.RDBStorage(url, heartbeat_interval=sweeper.heartbeat_interval,
                                      grace_period=sweeper.grace_period)


def open_study(storage, name: str, direction: str, sampler=None, pruner=None):
    """The study `name`, created on first use; any number of processes may race to create it."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"hydra.sweeper.direction={direction!r} is not allowed: study {name!r} "
                          f"in {shown(storage.url)} already has direction "
                          f"{study.direction.name.lower()}; use another hydra.sweeper.study_name")
    return study


def spent(study) -> int:
    """Trials of the study that count against its budget."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=[TrialState[s] for s in SPENT]))


@contextlib.contextmanager
def exclusive(url: str, name: str):
    """One process at a time per study, across machines: counting the budget and asking for
    trials, or finding the MLflow parent, must not interleave between workers.

    PostgreSQL and MySQL hold a server-side lock (released if the holder dies); SQLite, which
    lives on one machine, a lock on a file beside the database.
    """
    key = int.from_bytes(hashlib.sha256(f"mnist-lab:{name}".encode()).digest()[:8], "big",
                         signed=True)
    if url.startswith("sqlite:///"):
        with open(f"{url[len('sqlite:///'):]}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not url.startswith(("postgresql", "mysql")):
        yield  # in-memory SQLite and other stores: one process only
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    postgres = url.startswith("postgresql")
    lock = "SELECT pg_advisory_lock(:k)" if postgres else "SELECT GET_LOCK(:k, -1)"
    unlock = "SELECT pg_advisory_unlock(:k)" if postgres else "SELECT RELEASE_LOCK(:k)"
    with engine.connect() as connection:
        arg = {"k": key if postgres else str(key)}
        connection.execute(sqlalchemy.text(lock), arg)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), arg)
    engine.dispose()


def settle_study(config: DictConfig, client, parent_id: str) -> int:
    """A trial whose process died (Optuna failed it: no heartbeat) left its MLflow run RUNNING:
    mark that run KILLED, as liveness.reconcile does for any run whose process is gone.
    Returns how many trials other processes are still running."""
    storage = open_storage(storage_url(config.hydra.sweeper, config.tracking))
    study_id = storage.get_study_id_from_name(study_name(config.hydra.sweeper, config.hydra))
    states = {str(t.number): t.state.name for t in storage.get_all_trials(study_id, deepcopy=False)}
    for run in children(client, parent_id):
        if run.info.status == "RUNNING" and states.get(run.data.tags.get("optuna.trial")) == "FAIL":
            client.set_tag(run.info.run_id, "killed_because", "its process stopped: no heartbeat "
                           f"for hydra.sweeper.grace_period={config.hydra.sweeper.grace_period} s")
            client.set_terminated(run.info.run_id, "KILLED")
    return sum(state == "RUNNING" for state in states.values())
