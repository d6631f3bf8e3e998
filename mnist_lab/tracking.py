"""MLflow: one training run = one MLflow run, nested under a sweep's parent when there is one.

Logging goes through `MlflowClient` with explicit run ids, so nothing depends on MLflow's
process-global "active run" and jobs in other processes (joblib, submitit) log the same way.
MLflow is imported only here and only when tracking is on: it costs seconds at start-up.
"""

from __future__ import annotations

import csv
import os
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_lab.errors import ConfigError, TrackingError, TrialPruned
from mnist_lab.identity import flatten, identifies_run
from mnist_lab.schema import PROJECT_ROOT
from mnist_lab.sweep_resume import job_tags

PARENT_ID_FILE = "mlflow_parent_run_id"  # in the sweep folder, written by the sweep callback
STATUS_FOR = {KeyboardInterrupt: "KILLED", SystemExit: "KILLED", TrialPruned: "FINISHED"}
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


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


def connect(tracking: DictConfig):
    """A client on a checked store and the experiment's id; raises TrackingError fast."""
    import mlflow
    from mlflow import MlflowClient

    uri = resolve_uri(tracking)
    hint = "set tracking.uri (or MLFLOW_TRACKING_URI) to a reachable store, or use tracking=off"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"MLflow server {uri} is unreachable ({err.__class__.__name__}); "
                                f"start it or {hint}") from None
    elif uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri and not uri.startswith("databricks"):
        raise TrackingError(f"tracking.uri={uri!r} is not a URI (sqlite:///path.db, "
                            f"http://host:port, postgresql://...); {hint}")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)  # opens the store: a corrupt file fails here
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is not None:
            return client, experiment.experiment_id
        location = None
        if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
            db = Path(uri[len("sqlite:///"):])
            location = (db.parent / "artifacts" / tracking.experiment).resolve().as_uri()
        try:
            return client, client.create_experiment(tracking.experiment, location)
        except mlflow.exceptions.MlflowException:  # another job created it a moment ago
            return client, client.get_experiment_by_name(tracking.experiment).experiment_id
    except TrackingError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"MLflow store {uri} failed: {reason}; {hint}") from None  # no SQL


def client_for(uri: str | None, experiment: str = "mnist-lab"):
    """A client on the store run.py would use (or `uri`), for the mnist-lab commands."""
    return connect(OmegaConf.create({"uri": uri, "experiment": experiment}))[0]


def metric_curve(client, run_id: str, key: str = "val/loss") -> list[float]:
    """A run's metric values in step order."""
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def load_logged_config(path) -> DictConfig:
    """A run's recorded config.yaml, checked against the schema."""
    from mnist_lab.schema import LabConfig

    return OmegaConf.merge(OmegaConf.structured(LabConfig), OmegaConf.load(path))


def hydra_context() -> tuple[list[str], str | None]:
    """(task overrides, parent run id) of the current Hydra job, if any."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], None
    hydra = HydraConfig.get()
    parent = None
    parent_file = Path(hydra.sweep.dir) / PARENT_ID_FILE
    if hydra.mode == RunMode.MULTIRUN and parent_file.is_file():
        parent = parent_file.read_text().strip()
    return list(hydra.overrides.task), parent


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """`cnn-adam-lr0.001-p0.2`, then any other override, so runs read apart in the UI."""
    name = f"{cfg.model.name}-{cfg.optim.name}-lr{cfg.optim.lr:g}-p{cfg.dropout.p:g}"
    covered = ("model", "optim", "optim.lr", "dropout", "dropout.p", "experiment", "data.root")
    keys = [o.lstrip("+~") for o in overrides]
    extra = [o for o in keys if not o.startswith("hydra.")
             and o.split("=", 1)[0] not in covered and identifies_run(o.split("=", 1)[0])]
    return "-".join([name, *extra])


class NoTracking:
    """tracking=off: the same calls, no store touched."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.overrides, self.parent_id = hydra_context()
        self.run_id: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def start(self, **_) -> None:
        pass

    def catch_up(self, history: dict[str, list[float]]) -> None:
        pass

    def log_epoch(self, state, metrics: dict[str, float]) -> None:
        """Epoch callback (see train.fit)."""

    def finish(self, *_, **__) -> None:
        pass


class MlflowRun(NoTracking):
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.client, self.experiment_id = connect(cfg.tracking)

    def start(self, model, data, device, checkpoint: Path | None = None,
              resume_run_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param

        from mnist_lab.models import count_parameters
        from mnist_lab.provenance import provenance_tags

        if resume_run_id and self._reopen(resume_run_id):
            return
        tags = {**provenance_tags(str(device), data.checksums), **(tags or {})}
        tags["hydra.overrides"] = " ".join(self.overrides) or "(none)"
        tags.update(job_tags(self.cfg))
        if checkpoint is not None:
            tags["checkpoint.path"] = str(checkpoint)
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        run = self.client.create_run(self.experiment_id, tags=tags,
                                     run_name=run_name(self.cfg, self.overrides))
        self.run_id = run.info.run_id
        params = flatten(self.cfg)
        params.pop("resume")  # a resumed run keeps its params; this one differs
        params["model.parameters"] = str(count_parameters(model))
        params["data.train_size"] = str(len(data.train_images))
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _reopen(self, run_id: str) -> bool:
        """Continue the interrupted run itself, so its curves stay in one place."""
        try:
            self.client.get_run(run_id)
        except Exception:
            print(f"run {run_id} is not in this store; the resumed training gets a new run")
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "resumed", "true")
        return True

    def catch_up(self, history: dict[str, list[float]]) -> None:
        """Log the epochs the checkpoint has and the store lacks (a kill between the two)."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val/loss")}
        for epoch in range(1, len(history["val/loss"]) + 1):
            if epoch not in logged:
                self.log_metrics({k: v[epoch - 1] for k, v in history.items()}, step=epoch)

    def log_epoch(self, state, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=state.epoch)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def finish(self, model, state, test, out: Path) -> None:
        import mlflow

        metrics = {"test/loss": test.loss, "test/acc": test.accuracy,
                   "best_epoch": state.best_epoch, "best/val_loss": state.best_val_loss}
        metrics.update({f"test/acc_class_{d}": a for d, a in enumerate(test.class_accuracy.tolist())})
        self.log_metrics(metrics)
        self.client.log_artifacts(self.run_id, str(out))
        if self.cfg.tracking.log_model:
            log_pytorch_model(model, self.run_id)
        self.client.set_terminated(self.run_id, "FINISHED")
        print(f"MLflow run {self.run_id} in {mlflow.get_tracking_uri()}")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.run_id is None or exc_type is None:
            return False
        status = next((s for t, s in STATUS_FOR.items() if issubclass(exc_type, t)), "FAILED")
        if exc_type is TrialPruned:  # a finished run, stopped early on purpose: no error
            self.client.set_tag(self.run_id, "pruned", "true")
            self.client.set_tag(self.run_id, "pruned_epoch", str(exc.epoch))
            self.client.set_terminated(self.run_id, status)
            return False
        try:
            self.client.set_tag(self.run_id, "error", f"{exc_type.__name__}: {exc}"[:5000])
            self.client.log_text(self.run_id, "".join(traceback.format_exception(exc)),
                                 "error.txt")
        finally:
            self.client.set_terminated(self.run_id, status)
        return False


def log_pytorch_model(model, run_id: str) -> None:
    """`mlflow.pytorch` model with signature and input example: `runs:/<id>/model` loads it."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    example = torch.zeros(2, 1, 28, 28).numpy()  # batch 2 keeps the exported batch dim dynamic
    with torch.inference_mode():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name="model", signature=signature,
                                 input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def open_run(cfg: DictConfig) -> NoTracking:
    return MlflowRun(cfg) if cfg.tracking.enabled else NoTracking(cfg)


def record_failed_job(cfg: DictConfig, err: Exception) -> None:
    """A sweep job refused before training still shows in the store, FAILED with its reason."""
    if not cfg.tracking.enabled:
        return
    try:
        tracker = MlflowRun(cfg)
        tags = {"error": f"{type(err).__name__}: {err}"[:5000],
                "hydra.overrides": " ".join(tracker.overrides) or "(none)", **job_tags(cfg)}
        if tracker.parent_id:
            tags["mlflow.parentRunId"] = tracker.parent_id
        run = tracker.client.create_run(tracker.experiment_id, tags=tags,
                                        run_name=run_name(cfg, tracker.overrides))
        tracker.client.set_terminated(run.info.run_id, "FAILED")
    except Exception as store_err:  # the job's own error is the one to report
        print(f"could not record the failure in MLflow: {store_err}", file=sys.stderr)


def checkpoint_of(cfg: DictConfig, run_id: str) -> Path:
    """The checkpoint recorded on an MLflow run, for resume=RUN_ID."""
    if not cfg.tracking.enabled:
        raise ConfigError(f"resume={run_id} looks the run up in MLflow, which tracking=off "
                          "turns off; use resume=true, or turn tracking on")
    client, _ = connect(cfg.tracking)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"resume={run_id}: no such run in {resolve_uri(cfg.tracking)}") from None
    path = run.data.tags.get("checkpoint.path")
    if not path or not Path(path).is_file():
        raise ConfigError(f"resume={run_id}: the run has no checkpoint on this machine "
                          f"({path or 'none recorded'})")
    return Path(path)


def write_table(rows: list[dict], csv_path: Path, md_path: Path) -> None:
    """The same rows as CSV and as a Markdown table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
