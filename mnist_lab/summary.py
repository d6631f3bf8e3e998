"""A sweep's summary on its MLflow parent: the table of its runs (CSV and Markdown), their
val/loss curves overlaid, the best child, the spread over seeds, a comparison of configurations,
and the best run's model. The sweep module (the parent's lifecycle) calls `summarise` at the end.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab.comparison import compare_stats
from mnist_lab.queries import children, metric_curve, summary_rows, swept_keys
from mnist_lab.registry import logged_model_id
from mnist_lab.store import resolve_uri


def log_best_model(client, parent_id: str, tracking: DictConfig) -> None:
    """The sweep's best run gets its model (see `served`) now, once per sweep instead of an
    export per run; a failure is reported, the sweep's record stands without it."""
    best = client.get_run(parent_id).data.tags.get("best_run_id")
    if best:
        try:
            logged_model_id(client, best, resolve_uri(tracking))
        except Exception as err:
            print(f"logging the best run's model failed ({err.__class__.__name__}: {err}); "
                  f"mnist-lab register --run {best} logs it", file=sys.stderr)


def record_study(client, parent_id: str, config: DictConfig) -> None:
    """An Optuna sweep's study on its parent: each parameter's importance (Optuna's
    `get_param_importances`, as metrics `importance/KEY`) and Optuna's figures under `study/`.
    A failure is reported, not raised: the sweep's record stands without them."""
    import optuna

    from hydra_plugins.mnist_lab_optuna_sweeper.storages import open_storage
    from mnist_lab.plots import study_figures
    from mnist_lab.study import study_name

    try:
        study = optuna.load_study(study_name=study_name(config),
                                  storage=open_storage(config.hydra.sweeper.storage))
        complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if len({tuple(sorted(t.params.items())) for t in complete}) < 2:
            return  # one point says nothing of importance
        if len(study.directions) == 1:
            for key, value in optuna.importance.get_param_importances(study).items():
                log_once(client, parent_id, f"importance/{key}", value)
        with tempfile.TemporaryDirectory() as tmp:
            study_figures(study, Path(tmp))
            client.log_artifacts(parent_id, tmp, "study")
    except Exception as err:
        print(f"the study's figures failed ({err.__class__.__name__}: {err}); the study is in "
              "its storage: mnist-lab dashboard shows it", file=sys.stderr)


def log_once(client, parent_id: str, key: str, value: float) -> None:
    """A summary metric on the parent, unless a resumed sweep's earlier summary has it already."""
    if client.get_run(parent_id).data.metrics.get(key) != value:
        client.log_metric(parent_id, key, value)


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
        accuracy = best.data.metrics.get("test/acc")
        client.set_tag(parent_id, "mlflow.note.content", (  # the parent's description
            f"{len(runs)} runs, {len(finished)} completed; best (lowest val/loss): "
            f"{best.info.run_name}" + (f", test accuracy {accuracy:.2%}" if accuracy else "")))
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
    try:
        return compare_stats(client, finished, key, out)
    except Exception as err:
        print(f"comparison failed ({err.__class__.__name__}: {err}); the runs are in the store, "
              "retry with mnist-lab compare --stats", file=sys.stderr)
        return []
