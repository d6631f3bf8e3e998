"""Is the difference between two configurations real? Intervals and tests for groups of runs.

Torch-free: it works on the metrics a run logs and on its `test_predictions.csv`. The statistics
are SciPy's (t-intervals from `ttest_rel`/`ttest_ind`, `bootstrap`, `binomtest`); this module
only picks the one that fits the runs at hand and says which it picked.
"""

from __future__ import annotations

import csv
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREDICTIONS = "test_predictions.csv"  # in each run's folder: index,label,prediction per image
CONFIDENCE = 0.95
CLASSES = 10
METRICS = ("test/acc", *(f"test/acc_class_{d}" for d in range(CLASSES)), "best/val_loss")
BOOTSTRAP_RESAMPLES = 2000  # percentile ends move by < 0.01 points between reseeded runs


def write_predictions(path: Path, labels, predictions) -> None:
    """One row per test image: its index, true label and predicted class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "prediction"])
        writer.writerows(zip(range(len(labels)), labels, predictions))


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) from a `write_predictions` file."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[:, 1], table[:, 2]


@dataclass
class RunRecord:
    """What a comparison needs of one run: its seed, final metrics and test predictions."""

    name: str
    seed: int
    metrics: dict[str, float]
    labels: np.ndarray | None = None  # None: the run kept no predictions
    predictions: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


@dataclass
class Difference:
    """`other - baseline` of one metric, with its 95% interval (NaN ends: none to be had)."""

    metric: str
    baseline: float  # the baseline group's mean
    other: float
    low: float
    high: float
    method: str
    p_value: float = math.nan  # the t-test's, where the interval came from one

    @property
    def difference(self) -> float:
        return self.other - self.baseline


@dataclass
class McNemar:
    """Two runs on the same test images: how many only one of them gets right, and the exact
    McNemar p-value (a two-sided binomial test of those counts against a fair coin)."""

    pair: str
    baseline_accuracy: float
    other_accuracy: float
    only_baseline: int
    only_other: int
    p_value: float


@dataclass
class Comparison:
    key: str
    baseline: str  # the value of `key` for each group
    other: str
    differences: list[Difference]
    mcnemar: McNemar | None


def seed_difference(metric: str, baseline: list[tuple[int, float]],
                    other: list[tuple[int, float]]) -> Difference:
    """Over seeds: a paired t-interval when both groups ran the same seeds once each (each
    pair shares split, initialisation draw and batch order), else Welch's."""
    from scipy import stats

    a, b = dict(baseline), dict(other)
    mean_a = statistics.fmean(v for _, v in baseline)
    mean_b = statistics.fmean(v for _, v in other)
    with warnings.catch_warnings():  # identical values: SciPy warns, the interval is a point
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(a) == len(baseline) == len(b) == len(other) > 1 and a.keys() == b.keys():
            seeds = sorted(a)
            test = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
            method = f"paired t over {len(seeds)} seeds"
        elif len(baseline) > 1 and len(other) > 1:
            test = stats.ttest_ind([v for _, v in other], [v for _, v in baseline],
                                   equal_var=False)
            method = f"Welch t over {len(other)} and {len(baseline)} runs (not paired by seed)"
        else:
            return Difference(metric, mean_a, mean_b, math.nan, math.nan,
                              "no interval: a group has one run")
        interval = test.confidence_interval(CONFIDENCE)
    return Difference(metric, mean_a, mean_b, float(interval.low), float(interval.high),
                      method, float(test.pvalue))


def image_difference(metric: str, baseline: np.ndarray, other: np.ndarray) -> Difference:
    """One run each, on the same images (`baseline`, `other`: right or wrong per image): a
    percentile bootstrap over the images. It covers which images the test set happens to
    hold, not the seed's luck."""
    from scipy import stats

    change = other.astype(float) - baseline.astype(float)
    if len(change) < 2:
        return Difference(metric, float(baseline.mean()), float(other.mean()), math.nan,
                          math.nan, "no interval: under two test images")
    interval = stats.bootstrap((change,), np.mean, confidence_level=CONFIDENCE,
                               n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                               batch=100, rng=np.random.default_rng(0)).confidence_interval
    return Difference(metric, float(baseline.mean()), float(other.mean()), float(interval.low),
                      float(interval.high), "bootstrap over test images (one run each)")


def mcnemar(pair: str, baseline: np.ndarray, other: np.ndarray) -> McNemar:
    """Exact McNemar test: under "equally accurate", each image only one run gets right is as
    likely to favour either run."""
    from scipy import stats

    only_baseline = int(np.sum(baseline & ~other))
    only_other = int(np.sum(other & ~baseline))
    discordant = only_baseline + only_other
    p_value = stats.binomtest(only_other, discordant, 0.5).pvalue if discordant else 1.0
    return McNemar(pair, float(baseline.mean()), float(other.mean()), only_baseline, only_other,
                   float(p_value))


def same_images(runs: list[RunRecord]) -> bool:
    return all(r.labels is not None for r in runs) and all(
        np.array_equal(r.labels, runs[0].labels) for r in runs)


def compare_groups(key: str, baseline_name: str, baseline: list[RunRecord], other_name: str,
                   other: list[RunRecord]) -> Comparison:
    """Test accuracy, per-class accuracy and best validation loss of `other` against
    `baseline`, and McNemar's test for one pair of runs: the lowest seed both groups ran, or
    the two runs when each group has one."""
    single = len(baseline) == len(other) == 1
    common = sorted({r.seed for r in baseline} & {r.seed for r in other})
    pair = None
    if common:
        seed = common[0]
        pair = (f"seed {seed} pair", next(r for r in baseline if r.seed == seed),
                next(r for r in other if r.seed == seed))
    elif single:
        pair = (f"runs {baseline[0].name} and {other[0].name}", baseline[0], other[0])
    comparable = pair is not None and same_images([pair[1], pair[2]])
    if single and comparable:
        a, b, labels = baseline[0].correct, other[0].correct, baseline[0].labels
        differences = [image_difference("test/acc", a, b)]
        differences += [image_difference(f"test/acc_class_{d}", a[labels == d], b[labels == d])
                        for d in range(CLASSES)]
        metrics = ["best/val_loss"]
    else:
        differences, metrics = [], METRICS
    differences += [seed_difference(m, *pairs(m, baseline, other)) for m in metrics
                    if all(m in r.metrics for r in baseline + other)]
    test = mcnemar(pair[0], pair[1].correct, pair[2].correct) if comparable else None
    return Comparison(key, baseline_name, other_name, differences, test)


def pairs(metric: str, baseline: list[RunRecord], other: list[RunRecord]) -> tuple[list, list]:
    return ([(r.seed, r.metrics[metric]) for r in baseline],
            [(r.seed, r.metrics[metric]) for r in other])


# --- reporting ---------------------------------------------------------------------------------
def points(value: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * value:+.2f} pp"


def interval_text(d: Difference, fmt) -> str:
    if math.isnan(d.low):
        return d.method
    p = f", p = {d.p_value:.2g}" if not math.isnan(d.p_value) else ""
    return f"95% CI {fmt(d.low)} to {fmt(d.high)}; {d.method}{p}"


def summary_lines(c: Comparison) -> list[str]:
    """The answer in a few lines: overall, per class, validation loss, McNemar."""
    by_metric = {d.metric: d for d in c.differences}
    lines = [f"{c.other} vs {c.baseline} ({c.key}), difference = {c.other} - {c.baseline}:"]
    if "test/acc" in by_metric:
        acc = by_metric["test/acc"]
        lines.append(f"  test/acc {acc.other:.2%} vs {acc.baseline:.2%}: "
                     f"{points(acc.difference)} ({interval_text(acc, points)})")
    classes = [by_metric[f"test/acc_class_{d}"] for d in range(CLASSES)
               if f"test/acc_class_{d}" in by_metric]
    if classes and not all(math.isnan(d.low) for d in classes):
        def digits(test) -> str:
            chosen = [d.metric.rsplit("_", 1)[1] for d in classes if test(d)]
            return " ".join(chosen) or "none"

        lines.append(f"  per class: {c.other} better on {digits(lambda d: d.low > 0)}; worse on "
                     f"{digits(lambda d: d.high < 0)}; interval spans 0 on "
                     f"{digits(lambda d: not d.low > 0 and not d.high < 0)}")
    if "best/val_loss" in by_metric:
        loss = by_metric["best/val_loss"]
        lines.append(f"  best/val_loss {loss.other:.4f} vs {loss.baseline:.4f}: "
                     f"{loss.difference:+.4f} ({interval_text(loss, lambda v: f'{v:+.4f}')})")
    if c.mcnemar:
        m = c.mcnemar
        lines.append(f"  {m.pair} ({m.other_accuracy:.2%} vs {m.baseline_accuracy:.2%}): only "
                     f"{c.other} right on {m.only_other} test images, only {c.baseline} on "
                     f"{m.only_baseline}; McNemar exact p = {m.p_value:.3g}")
    return lines


def table_rows(c: Comparison) -> list[dict]:
    """comparison.csv's rows: one per metric, then McNemar's."""
    rows = [{"baseline": c.baseline, "other": c.other, "metric": d.metric,
             "baseline_value": round(d.baseline, 6), "other_value": round(d.other, 6),
             "difference": round(d.difference, 6), "ci_low": round(d.low, 6),
             "ci_high": round(d.high, 6), "p_value": float(f"{d.p_value:.4g}"),
             "method": d.method} for d in c.differences]
    if c.mcnemar:
        m = c.mcnemar
        rows.append({"baseline": c.baseline, "other": c.other, "metric": f"test/acc, {m.pair}",
                     "baseline_value": round(m.baseline_accuracy, 6),
                     "other_value": round(m.other_accuracy, 6),
                     "difference": round(m.other_accuracy - m.baseline_accuracy, 6),
                     "p_value": float(f"{m.p_value:.4g}"),
                     "method": "McNemar exact (binomial test on images only one run gets right)",
                     "only_baseline_right": m.only_baseline, "only_other_right": m.only_other})
    return rows


def figure_panels(comparisons: list[Comparison]) -> dict[str, list[tuple]]:
    """Per comparison: (label, difference, low, high) in points for accuracy, overall first."""
    panels = {}
    for c in comparisons:
        rows = [d for d in c.differences if d.metric.startswith("test/acc")]
        method = rows[0].method if rows else ""
        panels[f"{c.other} - {c.baseline}: test accuracy ({method})"] = [
            ("overall" if d.metric == "test/acc" else f"digit {d.metric.rsplit('_', 1)[1]}",
             100 * d.difference, 100 * d.low, 100 * d.high) for d in rows]
    return panels
