"""The MLflow store: where it is, and opening it safely and fast.

A local SQLite store is checked as a file before any data is read (`check_store`), and opened
under a lock beside it, since MLflow creates its schema on first use and two processes doing
that at once fail. A server is asked for its health first. Every failure is one TrackingError.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_lab.errors import TrackingError
from mnist_lab.schema import PROJECT_ROOT

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# The runs table as the lab opens it: a view MLflow shares through an experiment tag, read when
# the address carries ?viewStateShareKey=lab. Every run listed flat, best test accuracy first,
# with the columns that answer "which configuration is best" (MLflow has no per-project default).
RUNS_VIEW = "lab"
RUNS_VIEW_STATE = {
    "searchFilter": "", "orderByKey": "metrics.`test/acc`", "orderByAsc": False,
    "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
    "modelVersionFilter": "All Runs",
    "selectedColumns": ["params.`model.name`", "params.`optim.lr`", "params.`dropout.p`",
                        "metrics.`best/val_loss`", "metrics.`test/acc`"]}


def resolve_uri(tracking: DictConfig) -> str:
    if tracking.uri:
        return tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"


def check_store(tracking: DictConfig) -> None:
    """The file checks of opening a local SQLite store, made before any data is read: the file is
    an SQLite database, and it and its folder can be written (SQLite writes a journal beside it).
    Without them a read-only store fails only at the first write, after minutes of retries."""
    uri = resolve_uri(tracking)
    if not tracking.enabled or not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    hint = "set tracking.uri (or MLFLOW_TRACKING_URI) to a writable store, or use tracking=off"
    if db.is_dir():
        raise TrackingError(f"MLflow store {uri}: {db} is a folder, not a database file; {hint}")
    if db.is_file():
        try:
            with open(db, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as err:
            raise TrackingError(f"MLflow store {uri} cannot be read ({err.strerror}); "
                                f"{hint}") from None
        if header and header != SQLITE_HEADER:
            raise TrackingError(f"MLflow store {uri} is not an SQLite database (corrupt, or another "
                                f"kind of file); move it away or {hint}")
        if not os.access(db, os.W_OK):
            raise TrackingError(f"MLflow store {uri} is read-only; {hint}")
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder that connect() will create the rest under
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingError(f"MLflow store {uri}: the folder {folder} is read-only (SQLite writes "
                            f"its journal beside the database); {hint}")


@contextmanager
def store_lock(uri: str):
    """Exclusive while a SQLite store opens: MLflow creates its schema on first use, and two
    processes doing that at once fail ("duplicate column name"). Servers handle their own."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(f"{uri[len('sqlite:///'):]}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


BUSY_SECONDS = 60  # how long a write waits for a SQLite file another process holds locked


def wait_when_busy(dbapi_connection, _record) -> None:
    """A SQLite connection of this process (Optuna's storage, or any other engine) waits up to
    BUSY_SECONDS for a lock another writer holds, instead of SQLite's 5 s. MLflow sets 20 s on
    each of its own sessions over this; `Patient` retries its calls to make up the minute."""
    if type(dbapi_connection).__module__ == "sqlite3":
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_SECONDS * 1000}")


def busy_timeout() -> None:
    """Install `wait_when_busy` for every SQLAlchemy engine, once (SQLAlchemy's own events)."""
    import logging

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    # MLflow logs each locked write with its SQL before raising it; Patient says it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if not event.contains(Engine, "connect", wait_when_busy):
        event.listen(Engine, "connect", wait_when_busy)


class Patient:
    """An MlflowClient that waits while the store is locked by another writer (a run, the UI, a
    backup holding a SQLite file): a call the store answers "database is locked" is tried again
    until BUSY_SECONDS have passed (MLflow waits 20 s itself each time), then fails with one
    line, without SQL. Any other failure of the store (a full disk) is one line at once."""

    def __init__(self, client, uri: str):
        self._client, self._uri = client, uri

    def __getattr__(self, name: str):
        found = getattr(self._client, name)
        return self._patiently(found) if callable(found) and not name.startswith("_") else found

    def _patiently(self, call):
        from mlflow.exceptions import MlflowException

        def patiently(*args, **kwargs):
            deadline = time.monotonic() + BUSY_SECONDS
            while True:
                try:
                    return call(*args, **kwargs)
                except MlflowException as err:
                    if err.error_code != "TEMPORARILY_UNAVAILABLE":
                        raise
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else "?"
                    if "locked" not in reason:
                        raise TrackingError(f"MLflow store {self._uri} failed: {reason}") from None
                    if time.monotonic() > deadline:
                        raise TrackingError(
                            f"MLflow store {self._uri} stayed locked by another process for "
                            f"over {BUSY_SECONDS} s ({reason}); try again once it is free") from None
                    time.sleep(1)

        return patiently


def open_client(uri: str, create: bool):
    """A client on the checked store `uri`. `create`: a local database is made on first use;
    otherwise it must exist already (a read never creates a store). Raises TrackingError fast.
    It also sets MLflow's global tracking URI, which the fluent calls read (the model export's
    `start_run(run_id=...)`, `mlflow.pyfunc.load_model` of a `models:/` URI)."""
    import mlflow
    from mlflow import MlflowClient

    busy_timeout()
    hint = "set tracking.uri (or MLFLOW_TRACKING_URI) to a reachable store, or use tracking=off"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"MLflow server {uri} is unreachable ({err.__class__.__name__}); "
                                f"start it or {hint}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif not db.is_file():
            raise TrackingError(f"no MLflow store at {db}: nothing has been logged there yet; "
                                "train a run first (python run.py) or pass --uri")
    elif "://" not in uri and not uri.startswith("databricks"):
        raise TrackingError(f"tracking.uri={uri!r} is not a URI (sqlite:///path.db, "
                            f"http://host:port, postgresql://...); {hint}")
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri):
            client = Patient(MlflowClient(uri), uri)
            client.search_experiments(max_results=1)  # opens the store: a corrupt file fails here
        return client
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"MLflow store {uri} failed: {reason}; {hint}") from None  # no SQL


def connect(tracking: DictConfig):
    """A client on a checked store and the experiment's id, both created on first use (a run
    writes: this is its way in), the experiment restored if it was deleted; raises TrackingError
    fast."""
    import mlflow

    uri = resolve_uri(tracking)
    client = open_client(uri, create=True)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
            db = Path(uri[len("sqlite:///"):])
            location = (db.parent / "artifacts" / tracking.experiment).resolve().as_uri()
        try:
            client.create_experiment(tracking.experiment, location)
        except mlflow.exceptions.MlflowException:  # another job created it a moment ago
            pass
        experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment.lifecycle_stage == "deleted":  # deleted in the UI: its name is still taken
        client.restore_experiment(experiment.experiment_id)
        print(f"MLflow experiment {tracking.experiment!r} was deleted; restored it (with its "
              "runs) to record this run")
    view = f"mlflow.sharedViewState.{RUNS_VIEW}"
    if view not in experiment.tags:  # a view the user changed in the UI stays as they left it
        client.set_experiment_tag(experiment.experiment_id, view, json.dumps(RUNS_VIEW_STATE))
    return client, experiment.experiment_id


def runs_table(experiment_id: str) -> str:
    """The page of the experiment's runs table in the lab's view (see RUNS_VIEW)."""
    return f"experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}"


def ui_port_file(uri: str) -> Path | None:
    """Where `mnist-lab ui` keeps the port it serves a local store on (beside the database),
    so that the links runs print lead there; None for a server."""
    return Path(uri[len("sqlite:///"):]).with_name("ui_port") if uri.startswith("sqlite:///") \
        else None


def ui_url(tracking: DictConfig, page: str) -> str:
    """Where the MLflow UI shows `page` (`experiments/1/runs/ID`), and how to start it."""
    uri = resolve_uri(tracking)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/{page}"
    kept = ui_port_file(uri)
    port = kept.read_text().strip() if kept and kept.is_file() else "5000"
    default = uri == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    start = ("make ui" + ("" if port == "5000" else f" PORT={port}") if default
             else f"mnist-lab ui --uri {shlex.quote(uri)} --port {port}")
    return f"http://127.0.0.1:{port}/#/{page}  (start the UI: {start})"


def uri_option(tracking: DictConfig) -> str:
    """` --uri URI` for a printed mnist-lab command when the run named its store, shell-quoted."""
    return f" --uri {shlex.quote(tracking.uri)}" if tracking.uri else ""


def client_for(uri: str | None):
    """A client on the store run.py would use (or `uri`), for the mnist-lab commands; a read
    that finds no store says so, and creates none."""
    return open_client(resolve_uri(OmegaConf.create({"uri": uri})), create=False)
