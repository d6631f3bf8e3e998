"""Compare runs side by side: `mnist-lab compare [--last | --parent RUN_ID] [--sort KEY]`.

Reads the store that run.py writes to (the same default, tracking.uri or MLFLOW_TRACKING_URI)
and prints one row per training run: model, optimizer, lr, dropout, init, best val loss, test
accuracy, the weakest class and wall time. `--output DIR` also writes CSV, Markdown and a figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COLUMNS = ("run", "model", "optim", "lr", "dropout", "init", "best_val_loss", "test_acc",
           "weakest_class", "wall_s")
SORT_KEYS = ("best_val_loss", "test_acc", "wall_s", "lr", "run")


def row_for(run) -> dict:
    params, metrics = run.data.params, run.data.metrics
    per_class = {d: metrics.get(f"test/acc_class_{d}") for d in range(10)}
    per_class = {d: a for d, a in per_class.items() if a is not None}
    weakest = min(per_class, key=per_class.get) if per_class else None
    wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
    return {
        "run": run.info.run_name,
        "run_id": run.info.run_id,
        "status": run.info.status,
        "model": params.get("model.name", ""),
        "optim": params.get("optim.name", ""),
        "lr": float(params.get("optim.lr", "nan")),
        "dropout": float(params.get("dropout.p", "nan")),
        "init": params.get("init.name", ""),
        "best_val_loss": metrics.get("best/val_loss"),
        "test_acc": metrics.get("test/acc"),
        "weakest_class": f"{weakest} ({per_class[weakest]:.4f})" if weakest is not None else "",
        "wall_s": round(wall, 1) if wall is not None else None,
    }


def find_runs(client, experiment: str, parent: str | None, last: bool) -> tuple[list, str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment named {experiment!r} in this store; train a run first "
                         "(python run.py) or pass --experiment")
    ids = [exp.experiment_id]
    if last:
        sweeps = client.search_runs(ids, "tags.sweep = 'true'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not sweeps:
            raise SystemExit(f"no sweep in experiment {experiment!r}; run one with -m first")
        parent = sweeps[0].info.run_id
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


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if value < 1 or value != int(value) else f"{value:.1f}"
        return "-" if value is None else str(value)

    cells = [[cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_outputs(client, runs: list, rows: list[dict], out: Path, title: str) -> None:
    from mnist_lab import plots
    from mnist_lab.tracking import metric_curve, write_table

    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / "compare.csv", out / "compare.md")
    curves = {run.info.run_name: metric_curve(client, run.info.run_id) for run in runs}
    plots.overlay(curves, out / "compare_val_loss.png", "val/loss", title)


def compare(args: argparse.Namespace) -> int:
    from mnist_lab.tracking import client_for

    client = client_for(args.uri, args.experiment)
    runs, scope = find_runs(client, args.experiment, args.parent, args.last)
    if not runs:
        print(f"no training runs in {scope}", file=sys.stderr)
        return 1
    descending = args.sort == "test_acc" if args.descending is None else args.descending
    rows = sort_rows([row_for(r) for r in runs], args.sort, descending)
    print(f"{len(rows)} runs in {scope}, sorted by {args.sort}")
    print(format_table(rows))
    if args.output:
        write_outputs(client, runs, rows, Path(args.output), f"val/loss, {scope}")
        print(f"wrote {args.output}/compare.csv, compare.md, compare_val_loss.png")
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("compare", help="table of runs from the MLflow store",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--parent", metavar="RUN_ID", help="the runs of one sweep")
    scope.add_argument("--last", action="store_true", help="the runs of the newest sweep")
    parser.add_argument("--experiment", default="mnist-lab", help="MLflow experiment name")
    parser.add_argument("--uri", default=None,
                        help="tracking URI (default: MLFLOW_TRACKING_URI, else mlruns/mlflow.db)")
    parser.add_argument("--sort", choices=SORT_KEYS, default="test_acc")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--descending", action="store_true", default=None)
    order.add_argument("--ascending", dest="descending", action="store_false")
    parser.add_argument("--output", metavar="DIR", help="write compare.csv/.md and a figure")
    parser.set_defaults(handler=compare)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m mnist_lab.compare", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(cli)
    arguments = cli.parse_args()
    sys.exit(arguments.handler(arguments))
