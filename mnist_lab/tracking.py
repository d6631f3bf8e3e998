"""MLflow: one training run = one MLflow run, nested under a sweep's parent when there is one.

The run is made, logged to and ended through `MlflowClient` with explicit run ids, so jobs in
other processes (joblib, submitit) log the same way and nothing reads MLflow's "active run".
The one fluent call is the model export (`served.log_digit_model`), which opens this run by
id with `mlflow.start_run(run_id=...)` on the global tracking URI that `store.connect` sets.
MLflow is imported inside the functions that use it, only when tracking is on: it costs seconds.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from mnist_lab.context import JobContext
from mnist_lab.errors import LabError, TrialPruned
from mnist_lab.identity import config_key, flatten, run_name
from mnist_lab.queries import JOB_TAG
from mnist_lab.store import connect

STATUS_FOR = {KeyboardInterrupt: "KILLED", SystemExit: "KILLED", TrialPruned: "FINISHED"}


def job_tags(cfg: DictConfig, ctx: JobContext) -> dict[str, str]:
    """Tags that let a resumed sweep find this job's run again."""
    tags = {"config_key": config_key(cfg)}
    if ctx.job_num is not None:
        tags[JOB_TAG] = str(ctx.job_num)
    return tags


class Tracker(Protocol):
    """What a run reports to: `MlflowRun`, or `NoTracking` for tracking=off. A context manager
    around the run; `start` once the model and data exist; `log_epoch` is an epoch callback."""

    run_id: str | None
    experiment_id: str | None

    def __enter__(self) -> "Tracker": ...

    def __exit__(self, exc_type, exc, tb) -> bool: ...

    def start(self, model, data, device, checkpoint: Path | None = None,
              resume_run_id: str | None = None, tags: dict[str, str] | None = None) -> None: ...

    def catch_up(self, history: dict[str, list[float]]) -> None: ...

    def log_epoch(self, state, metrics: dict[str, float]) -> None: ...

    def finish(self, state, test, out: Path, report: str) -> None: ...


class NoTracking:
    """tracking=off: the Tracker that records nothing and touches no store."""

    run_id = experiment_id = None

    def __enter__(self) -> "NoTracking":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def start(self, *_, **__) -> None:
        pass

    def catch_up(self, history: dict[str, list[float]]) -> None:
        pass

    def log_epoch(self, state, metrics: dict[str, float]) -> None:
        pass

    def finish(self, *_, **__) -> None:
        pass


class MlflowRun:
    """The Tracker that records the run in the MLflow store."""

    def __init__(self, cfg: DictConfig, ctx: JobContext = JobContext()):
        self.cfg, self.ctx = cfg, ctx
        self.overrides, self.parent_id = ctx.overrides, ctx.parent_id
        self.run_id: str | None = None
        self.client, self.experiment_id = connect(cfg.tracking)
        self.closed = False
        from mnist_lab.liveness import reconcile

        reconcile(self.client)  # runs whose process died end KILLED, not RUNNING forever

    def __enter__(self) -> "MlflowRun":
        return self

    def create(self, tags: dict[str, str], params: dict[str, str]) -> None:
        """The one place a run is made: nested under the sweep's parent, with its process."""
        from mlflow.entities import Param

        from mnist_lab.liveness import heartbeat, process_tags

        tags = {"hydra.overrides": " ".join(self.overrides) or "(none)",
                **job_tags(self.cfg, self.ctx),
                **tags, **process_tags()}
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
            self.client.set_tag(self.parent_id, *heartbeat().popitem())  # the sweep lives
        run = self.client.create_run(self.experiment_id, tags=tags,
                                     run_name=run_name(self.cfg, self.overrides,
                                                       self.ctx.fixed_keys))
        self.run_id = run.info.run_id
        params = {**flatten(self.cfg), **params}  # no `resume`: a resumed run keeps its params
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def start(self, model, data, device, checkpoint: Path | None = None,
              resume_run_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        from mnist_lab.models import count_parameters
        from mnist_lab.provenance import provenance_tags

        if resume_run_id and self._reopen(resume_run_id):
            return
        tags = {**provenance_tags(str(device), data.checksums), **(tags or {})}
        if checkpoint is not None:
            tags["checkpoint.path"] = str(checkpoint)
        self.create(tags, {"model.parameters": str(count_parameters(model)),
                           "data.train_size": str(len(data.train_images))})
        try:
            self.client.log_inputs(self.run_id, datasets=[self.dataset(data)])
        except Exception:  # another job registered the same dataset a moment ago: it is there now
            self.client.log_inputs(self.run_id, datasets=[self.dataset(data)])

    def dataset(self, data):
        """The data split as an MLflow dataset input: the runs table's Dataset column says
        what each run trained on; the digest changes with the files and the split."""
        import hashlib
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        sizes = {"train": len(data.train_images), "val": len(data.val_images),
                 "test": len(data.test_images)}
        digest = hashlib.sha256(json.dumps([data.checksums, sizes, self.cfg.seed,
                                            self.cfg.data.split_seed]).encode()).hexdigest()
        name = f"mnist {sizes['train']:,}/{sizes['val']:,}"
        source = json.dumps({"uri": str(Path(self.cfg.data.root).resolve())})
        return DatasetInput(Dataset(name, digest[:8], "local", source, profile=json.dumps(sizes)),
                            tags=[InputTag("mlflow.data.context", "training")])

    def _reopen(self, run_id: str) -> bool:
        """Continue the interrupted run itself, so its curves stay in one place."""
        from mnist_lab.liveness import process_tags

        try:
            self.client.get_run(run_id)
        except Exception:
            print(f"run {run_id} is not in this store; the resumed training gets a new run")
            return False
        self.run_id = run_id
        for key, value in process_tags().items():  # this process first, then RUNNING
            self.client.set_tag(run_id, key, value)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "resumed", "true")
        return True

    def catch_up(self, history: dict[str, list[float]]) -> None:
        """Log the epochs the checkpoint has and the store lacks (a kill between the two)."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val/loss")}
        epochs = len(history["val/loss"])
        whole = {k: v for k, v in history.items() if len(v) == epochs}  # not a newer metric
        for epoch in range(1, epochs + 1):
            if epoch not in logged:
                self.log_metrics({k: v[epoch - 1] for k, v in whole.items()}, step=epoch)

    def log_epoch(self, state, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=state.epoch)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric, RunTag

        from mnist_lab.liveness import heartbeat

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()],
                              tags=[RunTag(*heartbeat().popitem())])  # same write, no cost

    def finish(self, state, test, out: Path, report: str) -> None:
        """Log the test results, the output folder and `report` (report.txt, which the job
        writes to its folder only after this), then end the run FINISHED."""
        metrics = {"test/loss": test.loss, "test/acc": test.accuracy, "test_seconds": test.seconds,
                   "best/epoch": state.best_epoch, "best/val_loss": state.best_val_loss}
        metrics.update({f"test/acc_class_{d}": a for d, a in enumerate(test.class_accuracy.tolist())})
        self.log_metrics(metrics)
        self.client.set_tag(self.run_id, "mlflow.note.content", (  # the run's description
            f"{self.cfg.choices.model}, {self.cfg.choices.optim} lr {self.cfg.optim.lr:g}, "
            f"dropout {self.cfg.dropout.p:g}: test accuracy {test.accuracy:.2%}, best val/loss "
            f"{state.best_val_loss:.4f} at epoch {state.best_epoch}"))
        self.client.log_artifacts(self.run_id, str(out))
        self.client.log_text(self.run_id, report + "\n", "report.txt")
        log_model = self.cfg.tracking.log_model
        if log_model or (log_model is None and not self.ctx.multirun):  # a sweep: its best
            from mnist_lab.served import log_digit_model

            log_digit_model(self.run_id, out / "config.yaml", out / "best.pth")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.closed = True  # a stop signal from here on leaves it FINISHED

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or self.closed:
            return False
        if exc_type is TrialPruned and self.run_id is not None:  # stopped early on purpose
            self.client.set_tag(self.run_id, "pruned", "true")
            self.client.set_tag(self.run_id, "pruned_epoch", str(exc.epoch))
            self.client.set_terminated(self.run_id, "FINISHED")
            self.closed = True
            return False
        if self.run_id is None and issubclass(exc_type, (LabError, KeyboardInterrupt)):
            return False  # refused before the run exists: no run (a sweep's job: policy.run_job)
        self.record_failure(exc)
        return False

    def record_failure(self, err: BaseException) -> None:
        """End the run (made now if the job failed before it existed) FAILED with the reason, or
        KILLED for a stop signal; the error is marked recorded, so no caller records it twice."""
        if self.run_id is None:
            self.create({}, {})
        status = next((s for t, s in STATUS_FOR.items() if isinstance(err, t)), "FAILED")
        try:
            self.client.set_tag(self.run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            self.client.log_text(self.run_id, "".join(traceback.format_exception(err)),
                                 "error.txt")
        finally:
            self.client.set_terminated(self.run_id, status)
            self.closed = True
            err.mlflow_run_id = self.run_id


def open_run(cfg: DictConfig, ctx: JobContext) -> Tracker:
    return MlflowRun(cfg, ctx) if cfg.tracking.enabled else NoTracking()


def record_failed_job(cfg: DictConfig, ctx: JobContext, err: Exception) -> None:
    """A sweep's job that failed outside its run (refused before training) still shows in the
    store, FAILED with its reason; an error its run recorded already is left alone."""
    if not cfg.tracking.enabled or getattr(err, "mlflow_run_id", None):
        return
    try:
        MlflowRun(cfg, ctx).record_failure(err)
    except Exception as store_err:  # the job's own error is the one to report
        print(f"could not record the failure in MLflow: {store_err}", file=sys.stderr)
