"""Is the difference real? Groups of runs compared with intervals and tests, for
`mnist-lab compare --stats` and a sweep's summary.

The runs are grouped by a key (default: the one key the sweep varied besides seed, else
model.name), and each group is compared with the first (the sweep's first value): test accuracy,
per class and best val loss, with 95% intervals (paired by seed where both groups ran the same
seeds), and McNemar's test on one pair of runs. Reads the store; writes only into `out`.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mnist_lab.errors import ConfigError
from mnist_lab.queries import STACK_TAG, finished_with_test, swept_keys


def group_by(runs: list, key: str) -> dict[str, list]:
    """Runs by their value of `key` (a param; `run`: each run alone; `stack`: trained alone or
    in a stack, launcher=stacked); groups in the order of their first run, so the first is the
    baseline."""
    groups: dict[str, list] = {}
    for run in runs:
        value = group_of(run, key)
        if value is not None:
            groups.setdefault(value, []).append(run)
    return groups


def group_of(run, key: str) -> str | None:
    if key == "run":
        return run.info.run_name
    if key == STACK_TAG:
        return "stacked" if STACK_TAG in run.data.tags else "alone"
    return run.data.params.get(key)


def stats_key(runs: list, by: str | None, by_id: bool) -> str:
    """The key to group `runs` (finished) by: `by`, else the one key their overrides vary
    besides seed, else model.name; each run alone when ids were given and nothing else splits
    them. ConfigError when the key leaves fewer than two groups."""
    if not runs:
        raise ConfigError("--stats: no finished run with a test accuracy to compare")
    varied = [k for k in swept_keys(runs) if k != "seed"]
    key = by or (varied[0] if len(varied) == 1 else "model.name")
    if by is None and by_id and len(group_by(runs, key)) < 2:
        key = "run"
    groups = group_by(runs, key)
    if len(groups) < 2:
        params = set().union(*(r.data.params for r in runs))
        differ = sorted(k for k in params if len({r.data.params.get(k) for r in runs}) > 1)
        found = f"all {len(runs)} finished runs have {key}={next(iter(groups))}" if groups else (
            f"no finished run has the param {key}")
        raise ConfigError(f"--by {key}: {found}, so there is nothing to compare; params that "
                          f"differ between these runs: {', '.join(differ) or 'none'}")
    return key


def run_record(client, run, folder: Path):
    """A run's seed, metrics and test predictions (None when it kept none) for `stats`."""
    from mnist_lab.stats import PREDICTIONS, RunRecord, read_predictions

    labels = predictions = None
    into = folder / run.info.run_id
    into.mkdir(parents=True)
    try:
        path = client.download_artifacts(run.info.run_id, PREDICTIONS, str(into))
        labels, predictions = read_predictions(path)
    except Exception:  # a run from before predictions were kept: its metrics still compare
        pass
    return RunRecord(run.info.run_name, int(run.data.params.get("seed", -1)),
                     dict(run.data.metrics), labels, predictions)


@contextmanager
def quiet_downloads():
    """No MLflow progress bar per downloaded file (one per run would bury the answer)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as bar

    before = os.environ.get(bar.name)
    os.environ[bar.name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(bar.name)
        else:
            os.environ[bar.name] = before


def compare_stats(client, runs: list, key: str, out: Path | None = None) -> list[str]:
    """Each group of finished `runs` by `key` against the first; returns the lines to print,
    and writes comparison.csv/.md and comparison.png into `out` when given."""
    from mnist_lab import stats
    groups = group_by(finished_with_test(runs), key)
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        records = {value: [run_record(client, r, Path(tmp)) for r in members]
                   for value, members in groups.items()}
    (baseline, baseline_runs), *others = records.items()
    comparisons = [stats.compare_groups(key, baseline, baseline_runs, value, members)
                   for value, members in others]
    lines = [line for c in comparisons for line in stats.summary_lines(c)]
    mixed = [k for k in swept_keys(finished_with_test(runs)) if k not in (key, "seed")]
    if mixed and key != "run":
        lines.append(f"  note: the runs also differ in {', '.join(mixed)}; each group mixes them")
    labelled = [r for members in records.values() for r in members if r.labels is not None]
    if labelled and not stats.same_images(labelled):
        sets = {r.labels.tobytes() for r in labelled}
        lines.append(f"  the runs were tested on {len(sets)} different test sets (another "
                     "data.root?): no image-level test between runs of different sets")
    without = [r.name for members in records.values() for r in members if r.labels is None]
    if without:
        lines.append(f"  no {stats.PREDICTIONS} on {len(without)} run(s) (logged before runs "
                     f"kept them): no image-level test for those")
    if out is not None:
        write_comparison(comparisons, lines, out)
    return lines


def write_comparison(comparisons: list, lines: list[str], out: Path) -> None:
    from mnist_lab import plots, stats
    from mnist_lab.tables import write_table

    out.mkdir(parents=True, exist_ok=True)
    rows = [row for c in comparisons for row in stats.table_rows(c)]
    write_table(rows, out / "comparison.csv", out / "comparison.md")
    table = (out / "comparison.md").read_text()
    (out / "comparison.md").write_text("# Is the difference real?\n\n```\n" + "\n".join(lines)
                                       + "\n```\n\n" + table)
    plots.intervals(stats.figure_panels(comparisons), out / "comparison.png",
                    "difference in test accuracy (percentage points), 95% interval")
