"""Hydra callback for sweeps: one MLflow parent run per multirun, and its summary at the end.

`on_multirun_start`/`on_multirun_end` run once in the launching process whatever the launcher,
so the parent is created before any job starts. Its id goes into the sweep folder, where every
job (in this process, a joblib worker or a SLURM node) reads it and nests its run under it.
"""

from __future__ import annotations

import atexit
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_lab.cli import resume_command
from mnist_lab.errors import ConfigError
from mnist_lab.study import check, is_optuna_sweep, settle_study, study_parent
from mnist_lab.tracking import PARENT_ID_FILE, children, metric_curve

SUMMARY_METRICS = ("best/val_loss", "val/acc", "test/acc", "test/loss", "best/epoch")


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_lab import stopping

        optuna = is_optuna_sweep(config)
        if optuna:  # a bad hydra.sweeper key stops here, before the store is touched
            try:
                check(config.hydra.sweeper)
            except ConfigError as err:
                refuse(err)
        overrides = list(config.hydra.overrides.task)
        stopping.guard_sweep(f"continue the sweep with {resume_command(overrides, sweep=True)} "
                             "(finished jobs are skipped)")
        if not config.tracking.enabled:  # resume=true: each job continues its checkpoint
            return
        from mnist_lab import sweep_resume
        from mnist_lab.liveness import process_tags, reconcile
        from mnist_lab.provenance import git_state
        from mnist_lab.store import connect

        sweep_dir = Path(config.hydra.sweep.dir)
        experiment = config.hydra.runtime.choices.get("experiment")
        name = f"sweep-{experiment}" if experiment else "sweep"
        tags = {"sweep": "true", "sweep.dir": str(sweep_dir.resolve()),
                "hydra.overrides": " ".join(overrides) or "(none)",
                **sweep_resume.new_sweep_tags(config), **git_state(), **process_tags()}
        resuming = sweep_resume.wants_resume(config)
        if resuming:  # an Optuna sweep's study continues too: reopen names it
            client, experiment_id = connect(config.tracking)
            reconcile(client)  # dead RUNNING runs end KILLED: a RUNNING parent is alive
            self.parent_id = sweep_resume.continue_sweep(client, experiment_id, config)
            sweep_dir = Path(config.hydra.sweep.dir)  # the resumed sweep's own folder
        elif optuna:
            client, self.parent_id = study_parent(config, name, tags)
        else:
            client, experiment_id = connect(config.tracking)
            self.parent_id = client.create_run(experiment_id, run_name=f"{name}-{sweep_dir.name}",
                                               tags=tags).info.run_id
        reconcile(client)  # runs whose process died end KILLED, not RUNNING forever
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_ID_FILE).write_text(self.parent_id)
        # a stop signal or a crash skips on_multirun_end; no run may stay RUNNING then
        atexit.register(self._close, client, "KILLED")
        print(f"MLflow parent run {self.parent_id} for this sweep")

    def _close(self, client, status: str | None) -> None:
        """End the parent with `status`; None leaves it running for another process (an Optuna
        study that other processes still work on)."""
        if self.parent_id is None:
            return
        parent, self.parent_id = self.parent_id, None
        if status is None:
            return
        if status != "FINISHED":  # the workers are gone: their runs, and this one's, are dead
            from mnist_lab.liveness import reconcile

            reconcile(client, this_process_ending=True)
        client.set_terminated(parent, status)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_id is None:
            return
        from mnist_lab.store import connect, ui_url, uri_option

        client, experiment_id = connect(config.tracking)
        status = "FAILED"
        try:
            running = settle_study(config, client, self.parent_id) if is_optuna_sweep(config) else 0
            failed = summarise(client, self.parent_id)
            if not config.tracking.log_model:
                log_best_model(client, self.parent_id, config.tracking)
            status = "FINISHED" if not running else None  # the study's last process ends it
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        finally:
            parent_id = self.parent_id
            self._close(client, status)
        print(f"compare the sweep's runs: mnist-lab compare --parent {parent_id}"
              f"{uri_option(config.tracking)}\n"
              f"MLflow: {ui_url(config.tracking, f'experiments/{experiment_id}/runs/{parent_id}')}")
        if failed:
            print(f"{failed} job{'s' if failed > 1 else ''} of this sweep failed; each run's "
                  "`error` tag says why", file=sys.stderr)
            sys.exit(1)


def log_best_model(client, parent_id: str, tracking: DictConfig) -> None:
    """The sweep's best run gets its `mlflow.pytorch` model now, once per sweep instead of an
    export per run; a failure is reported, the sweep's record stands without it."""
    from mnist_lab.registry import logged_model_id
    from mnist_lab.store import resolve_uri

    best = client.get_run(parent_id).data.tags.get("best_run_id")
    if best:
        try:
            logged_model_id(client, best, resolve_uri(tracking))
        except Exception as err:
            print(f"logging the best run's model failed ({err.__class__.__name__}: {err}); "
                  f"mnist-lab register --run {best} logs it", file=sys.stderr)


def refuse(err: ConfigError) -> None:
    """A sweep the callback can't start: one line, exit status 2, before any job."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def summary_rows(runs: list, swept: list[str]) -> list[dict]:
    rows = []
    for run in runs:
        row = {"run": run.info.run_name, "run_id": run.info.run_id, "status": run.info.status}
        if "optuna.trial" in run.data.tags:  # an Optuna sweep: which trial, pruned when
            row["trial"] = int(run.data.tags["optuna.trial"])
            row["pruned_epoch"] = run.data.tags.get("pruned_epoch", "")
        row.update({key: run.data.params.get(key, "") for key in swept})
        row.update({key: round(run.data.metrics[key], 6) if key in run.data.metrics else ""
                    for key in SUMMARY_METRICS})
        if run.info.end_time and run.info.start_time:
            row["wall_seconds"] = round((run.info.end_time - run.info.start_time) / 1000, 1)
        rows.append(row)
    return rows


def swept_keys(runs: list) -> list[str]:
    """The params the sweep varied, read from each child's Hydra overrides; a group choice
    (`model=cnn`) shows as that group's `name` param."""
    chosen = [dict(o.split("=", 1) for o in r.data.tags.get("hydra.overrides", "").split()
                   if "=" in o) for r in runs]
    varied = sorted({k for o in chosen for k in o if len({c.get(k) for c in chosen}) > 1})
    # `seed` is a param itself; `model` is a group whose choice is logged as `model.name`
    return [k if "." in k or any(k in r.data.params for r in runs) else f"{k}.name"
            for k in varied]


def seed_spread(finished: list, swept: list[str]) -> list[dict]:
    """Test accuracy over the seeds of each configuration a sweep ran with several seeds:
    mean, sample standard deviation and range, so one run's figure can be read against its
    luck. `finished`: the sweep's finished runs. Empty when the sweep did not vary `seed`."""
    if "seed" not in swept:
        return []
    others = [k for k in swept if k != "seed"]
    groups: dict[tuple, list[float]] = {}
    for run in finished:
        if "test/acc" in run.data.metrics:
            key = tuple(run.data.params.get(k, "") for k in others)
            groups.setdefault(key, []).append(run.data.metrics["test/acc"])
    rows = []
    for key, accuracies in groups.items():
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
        rows.append({**dict(zip(others, key)), "seeds": len(accuracies),
                     "test/acc_mean": round(statistics.fmean(accuracies), 6),
                     "test/acc_std": round(spread, 6), "test/acc_min": min(accuracies),
                     "test/acc_max": max(accuracies)})
    return rows


def summarise(client, parent_id: str) -> int:
    """Table (CSV + Markdown), overlaid val/loss curves and the best child, on the parent;
    returns how many jobs failed (a KILLED run was interrupted, not failed: it can be resumed)."""
    from mnist_lab.plots import overlay
    from mnist_lab.sweep_resume import log_once
    from mnist_lab.tables import write_table

    runs = children(client, parent_id)
    swept = swept_keys(runs)
    rows = summary_rows(runs, swept)
    finished = [r for r in runs if r.info.status == "FINISHED" and
                math.isfinite(r.data.metrics.get("best/val_loss", math.inf))]
    pruned = [r for r in runs if r.data.tags.get("pruned") == "true"]
    running = [r for r in runs if r.info.status == "RUNNING"]  # another process's trials
    killed = [r for r in runs if r.info.status == "KILLED"]  # interrupted: resumable, not failed
    spread = seed_spread(finished, swept)
    failed = len(runs) - len(finished) - len(pruned) - len(running) - len(killed)
    others = [k for k in swept if k != "seed"]
    comparison: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_table(rows, out / "sweep_summary.csv", out / "sweep_summary.md")
        if spread:
            write_table(spread, out / "sweep_seed_spread.csv", out / "sweep_seed_spread.md")
        if len(spread) > 1 and len(others) == 1:  # several configurations over seeds
            comparison = compare_configurations(client, finished, others[0], out)
        curves = {r.info.run_name: metric_curve(client, r.info.run_id) for r in runs}
        overlay(curves, out / "sweep_val_loss.png", "val/loss", "validation loss per run")
        client.log_artifacts(parent_id, str(out))
    counts = {"runs": len(runs), "completed": len(finished), "pruned": len(pruned),
              "failed": failed, "killed": len(killed), "running": len(running)}
    for key, count in counts.items():
        client.set_tag(parent_id, f"sweep.{key}", str(count))
    if finished:
        best = min(finished, key=lambda r: r.data.metrics["best/val_loss"])
        client.set_tag(parent_id, "best_run_id", best.info.run_id)
        client.set_tag(parent_id, "best_run_name", best.info.run_name)
        # best/*: the best child's, as best/* on a child is its best epoch's
        for key, child_key in (("best/val_loss", "best/val_loss"), ("best/epoch", "best/epoch"),
                               ("best/test_acc", "test/acc")):
            if child_key in best.data.metrics:
                log_once(client, parent_id, key, best.data.metrics[child_key])
    if len(spread) == 1:  # one configuration over seeds: its spread belongs on the parent
        for key, value in spread[0].items():
            if key.startswith("test/acc_") and math.isfinite(value):
                log_once(client, parent_id, key, value)
    print(f"sweep summary: {len(runs)} runs: {len(finished)} completed"
          + (f", {len(pruned)} pruned" if pruned else "") + f", {failed} failed"
          + (f", {len(killed)} killed" if killed else "")
          + (f", {len(running)} still running" if running else "")
          + (f"; best (the lowest val/loss): {best.info.run_name} ({best.info.run_id})"
             if finished else ""))
    for row in spread:
        where = ", ".join(f"{k}={row[k]}" for k in swept if k in row)
        std = row["test/acc_std"]  # NaN when only one seed of this configuration finished
        seeds = f"{row['seeds']} seed" + ("s" if row["seeds"] > 1 else "")
        print(f"test/acc over {seeds}{' (' + where + ')' if where else ''}: "
              f"mean {row['test/acc_mean']:.2%}"
              + (f", std {std:.2%}" if math.isfinite(std) else "")
              + f", range {row['test/acc_min']:.2%}-{row['test/acc_max']:.2%}")
    if len(spread) > 1 and len(others) > 1:
        print(f"several keys vary besides seed ({', '.join(others)}); to compare two groups: "
              f"mnist-lab compare --stats --parent {parent_id} --by KEY")
    for line in comparison:
        print(line)
    return failed

def compare_configurations(client, finished: list, key: str, out: Path) -> list[str]:
    """`mnist-lab compare --stats` on the sweep's runs, into `out`; a failure is reported,
    not raised: the sweep's runs and summary stand without it."""
    from mnist_lab.compare import compare_stats

    try:
        return compare_stats(client, finished, key, out)
    except Exception as err:
        print(f"comparison failed ({err.__class__.__name__}: {err}); the runs are in the store, "
              "retry with mnist-lab compare --stats", file=sys.stderr)
        return []
