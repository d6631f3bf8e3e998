"""Compare runs side by side: `mnist-lab compare [--last | --parent RUN_ID | RUN_ID ...]`.

Reads run.py's store (tracking.uri or MLFLOW_TRACKING_URI) and prints a row per training run:
its settings, best val loss, test accuracy, weakest class and wall time (`--output DIR`: files).

`--stats` then asks whether the difference is real: the runs are grouped by `--by KEY` (default:
the one key the sweep varied besides seed, else model.name), and each group is compared with the
first (the sweep's first value): test accuracy, per class and best val loss, with 95% intervals
(paired by seed where both groups ran the same seeds), and McNemar's test on one pair of runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_lab.comparison import compare_stats, stats_key
from mnist_lab.errors import ConfigError
from mnist_lab.queries import finished_with_test, metric_curve, sweeps

COLUMNS = ("run", "model", "optim", "lr", "dropout", "init", "best_val_loss", "test_acc",
           "weakest_class", "wall_s")
# shown after `init` when they differ between the listed runs (status: when one is not FINISHED)
VARYING = {"epochs": "train.epochs", "batch_size": "train.batch_size", "limit": "data.limit",
           "seed": "seed", "sched": "sched.name"}
SORT_KEYS = ("best_val_loss", "test_acc", "wall_s", "lr", "run")


def row_for(run, client=None) -> dict:
    """A run's row; with a client, a run that stopped early (pruned, killed, failed) shows the
    lowest val/loss its epochs reached."""
    params, metrics = run.data.params, run.data.metrics
    per_class = {d: metrics.get(f"test/acc_class_{d}") for d in range(10)}
    per_class = {d: a for d, a in per_class.items() if a is not None}
    weakest = min(per_class, key=per_class.get) if per_class else None
    wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    return {
        "run": run.info.run_name,
        "run_id": run.info.run_id,
        "status": (f"PRUNED (epoch {run.data.tags.get('pruned_epoch', '?')})"
                   if run.data.tags.get("pruned") == "true" else run.info.status),
        "model": params.get("model.name", ""),
        "optim": params.get("optim.name", ""),
        "lr": float(params.get("optim.lr", "nan")),
        "dropout": float(params.get("dropout.p", "nan")),
        "init": params.get("init.name", ""),
        **{column: None if params.get(key) in (None, "None") else params[key]
           for column, key in VARYING.items()},  # data.limit=None is logged as "None"
        "best_val_loss": (metrics["best/val_loss"] if "best/val_loss" in metrics
                          else lowest_val_loss(client, run)),
        "test_acc": metrics.get("test/acc"),
        "weakest_class": f"{weakest} ({per_class[weakest]:.4f})" if weakest is not None else "",
        "wall_s": round(wall, 1) if wall is not None else None,
    }


def lowest_val_loss(client, run) -> float | None:
    """The lowest val/loss a run logged (one that stopped early has no best/val_loss)."""
    if client is None or "val/loss" not in run.data.metrics:
        return None
    return min(metric_curve(client, run.info.run_id))


def find_runs(client, experiment: str, parent: str | None, last: bool,
              run_ids: list[str] = ()) -> tuple[list, str]:
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception:
                raise ConfigError(f"run {run_id} is not in this store; pass ids that "
                                  "`mnist-lab compare` or the MLflow UI shows") from None
        return runs, f"runs {', '.join(run_ids)}"
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no experiment named {experiment!r} in this store; train a run first "
                          "(python run.py) or pass --experiment")
    ids = [exp.experiment_id]
    if last:
        found = sweeps(client, ids)  # a resumed sweep counts from its resume
        if not found:
            raise ConfigError(f"no sweep in experiment {experiment!r}; run one with -m first")
        parent = found[0].info.run_id
    if parent:
        runs = client.search_runs(ids, f"tags.`mlflow.parentRunId` = '{parent}'",
                                  max_results=10000)
        return list(runs), f"sweep {parent}"
    runs = client.search_runs(ids, max_results=10000)
    return [r for r in runs if r.data.tags.get("sweep") != "true"], f"experiment {experiment}"


def sort_rows(rows: list[dict], key: str, descending: bool) -> list[dict]:
    present = [r for r in rows if r[key] is not None]
    missing = [r for r in rows if r[key] is None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing


def columns_for(rows: list[dict]) -> list[str]:
    """COLUMNS, with the VARYING settings that differ between these runs, and their status
    when one did not finish (a KILLED run's metrics are blank: the status says why)."""
    varying = [c for c in VARYING if len({r[c] for r in rows}) > 1]
    if any(r["status"] != "FINISHED" for r in rows):
        varying.append("status")
    at = COLUMNS.index("init") + 1
    return [*COLUMNS[:at], *varying, *COLUMNS[at:]]


def format_table(rows: list[dict]) -> str:
    from mnist_lab.tables import text_table

    return text_table(rows, columns_for(rows))


def write_outputs(client, runs: list, rows: list[dict], out: Path, title: str) -> None:
    from mnist_lab import plots
    from mnist_lab.tables import write_table

    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / "compare.csv", out / "compare.md")
    curves = {run.info.run_name: metric_curve(client, run.info.run_id) for run in runs}
    plots.overlay(curves, out / "compare_val_loss.png", "val/loss", title)


def compare(args: argparse.Namespace) -> int:
    from mnist_lab.store import client_for

    if args.run_ids and (args.last or args.parent):
        print("error: pass run ids, --last or --parent, not several", file=sys.stderr)
        return 2
    if args.by and not args.stats:
        print(f"error: --by {args.by} groups runs for --stats; add --stats", file=sys.stderr)
        return 2
    if args.output and (problem := unwritable(Path(args.output))):
        print(f"error: --output {args.output}: {problem}", file=sys.stderr)
        return 2
    client = client_for(args.uri)
    try:
        runs, scope = find_runs(client, args.experiment, args.parent, args.last, args.run_ids)
        key = (stats_key(finished_with_test(runs), args.by, bool(args.run_ids)) if args.stats
               else None)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"no training runs in {scope}", file=sys.stderr)
        return 1
    descending = args.sort == "test_acc" if args.descending is None else args.descending
    rows = sort_rows([row_for(r, client) for r in runs], args.sort, descending)
    print(f"{len(rows)} runs in {scope}, sorted by {args.sort}")
    print(format_table(rows))
    if args.output:
        write_outputs(client, runs, rows, Path(args.output), f"val/loss, {scope}")
        print(f"wrote {args.output}/compare.csv, compare.md, compare_val_loss.png")
    if key:
        print()
        out = Path(args.output) if args.output else None
        if not args.run_ids:  # oldest first: a sweep's first value is the baseline
            runs = sorted(runs, key=lambda r: r.info.start_time or 0)
        print("\n".join(compare_stats(client, runs, key, out)))
        if out:
            print(f"wrote {out}/comparison.csv, comparison.md, comparison.png")
    return 0


def unwritable(folder: Path) -> str | None:
    """Why files can't be written into `folder` (made if missing), or None; checked before the
    store is read, so a bad path costs nothing."""
    import os

    if folder.exists() and not folder.is_dir():
        return "a file, not a folder"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not a writable folder"
    return None


def add_parser(commands) -> None:
    parser = commands.add_parser("compare", help="table of runs from the MLflow store",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--parent", metavar="RUN_ID", help="the runs of one sweep")
    scope.add_argument("--last", action="store_true", help="the runs of the newest sweep")
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="these runs only")
    parser.add_argument("--experiment", default="mnist-lab", help="MLflow experiment name")
    parser.add_argument("--uri", default=None,
                        help="tracking URI (default: MLFLOW_TRACKING_URI, else mlruns/mlflow.db)")
    parser.add_argument("--sort", choices=SORT_KEYS, default="test_acc")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--descending", action="store_true", default=None)
    order.add_argument("--ascending", dest="descending", action="store_false")
    parser.add_argument("--output", metavar="DIR", help="write compare.csv/.md and a figure "
                        "(with --stats also comparison.csv/.md/.png)")
    parser.add_argument("--stats", action="store_true",
                        help="is the difference real? intervals and tests between groups of runs")
    parser.add_argument("--by", metavar="KEY", help="--stats groups runs by this param "
                        "(default: the one swept key besides seed, else model.name; run: each run; "
                        "stack: trained alone or stacked)")
    parser.set_defaults(handler=compare)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m mnist_lab.compare", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(cli)
    arguments = cli.parse_args()
    sys.exit(arguments.handler(arguments))
