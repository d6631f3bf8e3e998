"""Read-only questions to an MLflow store: a sweep's children, metric curves, the keys a sweep
varied, its summary rows, the last active sweep. Nothing here writes, or creates a store or an
experiment; each function takes a client its caller opened.
"""

from __future__ import annotations

from mnist_lab.identity import identifies_run

# the tags a sweep's parent and its jobs carry, which resume and compare read back
KEY_TAG, JOB_TAG, RESUMES_TAG = "sweep.key", "sweep.job", "sweep.resumes"
STACK_TAG = "stack"  # a run trained in a stack (launcher=stacked): its jobs and size
RESUMED_AT_TAG = "sweep.resumed_at"  # unix milliseconds of the latest resume
SEARCH_TAG = "sweep.search"  # the sweeper's search space, to say what differs
SUMMARY_METRICS = ("best/val_loss", "val/acc", "test/acc", "test/loss", "best/epoch")


def metric_curve(client, run_id: str, key: str = "val/loss") -> list[float]:
    """A run's metric values in step order."""
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def children(client, parent_id: str) -> list:
    """Every run nested under the parent, oldest first."""
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=10000)
    return list(runs)


def sweeps(client, experiment_ids: list[str]) -> list:
    """The sweeps' parent runs, the last active first."""
    found = client.search_runs(experiment_ids, filter_string="tags.sweep = 'true'",
                               max_results=10000)
    return sorted(found, key=last_active, reverse=True)


def last_active(parent) -> int:
    """When a sweep last started: its parent's start, or its latest resume (milliseconds)."""
    return max(parent.info.start_time, int(parent.data.tags.get(RESUMED_AT_TAG, 0)))


def swept_keys(runs: list) -> list[str]:
    """The params the sweep varied, read from each child's Hydra overrides; a group choice
    (`model=cnn`) shows as that group's `name` param."""
    chosen = [dict(o.split("=", 1) for o in r.data.tags.get("hydra.overrides", "").split()
                   if "=" in o) for r in runs]
    # bookkeeping (a resumed job's `resume=true`, an output folder) is not what a sweep varies
    varied = sorted({k for o in chosen for k in o if len({c.get(k) for c in chosen}) > 1
                     and (identifies_run(k.lstrip("+~")) or k.startswith("eval."))})
    # `seed` is a param itself; `model` is a group whose choice is logged as `model.name`
    return [k if "." in k or any(k in r.data.params for r in runs) else f"{k}.name"
            for k in varied]


def summary_rows(runs: list, swept: list[str]) -> list[dict]:
    """A row per run of a sweep: its status, trial, swept params and summary metrics."""
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


def finished_with_test(runs: list) -> list:
    """The runs that FINISHED with a test accuracy (a pruned or killed run has none)."""
    return [r for r in runs if r.info.status == "FINISHED" and "test/acc" in r.data.metrics]
