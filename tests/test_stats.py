"""Is the difference real? The statistics on synthetic runs whose answer is known, and the
whole path through a small seed sweep and `mnist-lab compare --stats`."""

import csv
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from helpers import ROOT, run_lab, tiny_overrides
from mnist_lab.stats import (PREDICTIONS, RunRecord, compare_groups, read_predictions,
                             seed_difference, summary_lines, write_predictions)

LABELS = np.arange(1000) % 10  # 100 images of each digit


def kept_run(tmp_path, name, predictions, seed=0, **metrics):
    """A run as `compare` sees it: its predictions read back from the file a run writes."""
    path = tmp_path / f"{name}-{seed}.csv"
    write_predictions(path, LABELS.tolist(), predictions.tolist())
    labels, predicted = read_predictions(path)
    accuracy = float(np.mean(predicted == labels))
    return RunRecord(name, seed, {"test/acc": accuracy, "best/val_loss": 0.1, **metrics},
                     labels, predicted)


def wrong_on(indices):
    """Predictions right everywhere except `indices`."""
    predictions = LABELS.copy()
    predictions[indices] = (LABELS[indices] + 1) % 10
    return predictions


def exact_mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar by hand: twice the binomial(n, 1/2) tail at the smaller count."""
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_identical_runs_differ_by_nothing(tmp_path):
    predictions = wrong_on([3, 50, 400])
    a = kept_run(tmp_path, "ffnn", predictions)
    b = kept_run(tmp_path, "cnn", predictions)
    result = compare_groups("model.name", "ffnn", [a], "cnn", [b])
    overall = result.differences[0]
    assert overall.metric == "test/acc"
    assert overall.difference == 0 and overall.low == 0 and overall.high == 0
    assert (result.mcnemar.only_baseline, result.mcnemar.only_other) == (0, 0)
    assert result.mcnemar.p_value == 1


@pytest.mark.parametrize("only_ffnn, only_cnn", [(0, 6), (2, 7), (9, 30)])
def test_mcnemar_counts_the_images_only_one_run_gets_right(tmp_path, only_ffnn, only_cnn):
    both_wrong = [990, 991]
    cnn_wrong = list(range(0, only_ffnn)) + both_wrong
    ffnn_wrong = list(range(100, 100 + only_cnn)) + both_wrong
    a = kept_run(tmp_path, "ffnn", wrong_on(ffnn_wrong))
    b = kept_run(tmp_path, "cnn", wrong_on(cnn_wrong))
    result = compare_groups("model.name", "ffnn", [a], "cnn", [b])
    assert (result.mcnemar.only_baseline, result.mcnemar.only_other) == (only_ffnn, only_cnn)
    assert result.mcnemar.p_value == pytest.approx(exact_mcnemar_p(only_ffnn, only_cnn),
                                                   rel=1e-9)
    overall = result.differences[0]
    assert overall.difference == pytest.approx((only_cnn - only_ffnn) / len(LABELS))
    assert overall.low <= overall.difference <= overall.high
    assert "bootstrap over test images" in overall.method
    # the images the FFNN alone misses are digits 0-9 from 100 on: per class, the CNN gains there
    per_class = {d.metric: d for d in result.differences}
    gained = np.bincount(LABELS[100:100 + only_cnn], minlength=10)
    lost = np.bincount(LABELS[:only_ffnn], minlength=10)
    for digit in range(10):
        change = per_class[f"test/acc_class_{digit}"].difference
        assert change == pytest.approx((gained[digit] - lost[digit]) / 100)


def test_paired_interval_over_seeds_is_the_t_interval_of_the_differences():
    ffnn = [(0, 0.978), (1, 0.975), (2, 0.981), (3, 0.972), (4, 0.979)]
    change = {0: 0.014, 1: 0.015, 2: 0.013, 3: 0.016, 4: 0.012}  # steadier than the seeds
    cnn = [(seed, acc + change[seed]) for seed, acc in reversed(ffnn)]  # order does not matter
    result = seed_difference("test/acc", ffnn, cnn)
    d = list(change.values())
    half = scipy_stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    assert result.difference == pytest.approx(statistics.fmean(d))
    assert (result.low, result.high) == pytest.approx((statistics.fmean(d) - half,
                                                       statistics.fmean(d) + half))
    assert result.method == "paired t over 5 seeds"
    # other seeds in one group: no pairs, Welch's interval, wider than the paired one here
    welch = seed_difference("test/acc", ffnn, [(s + 10, v) for s, v in cnn])
    assert welch.method.startswith("Welch t")
    assert welch.difference == pytest.approx(result.difference)
    assert welch.high - welch.low > result.high - result.low
    single = seed_difference("test/acc", ffnn[:1], cnn[:1])
    assert math.isnan(single.low) and "one run" in single.method


def test_groups_over_seeds_pair_by_seed_and_name_the_digits_that_move():
    jitter = [0.010, -0.010, 0.012, -0.012]  # per seed, mean 0: only digit 3 moves for sure

    def runs(name, gain):
        return [RunRecord(name, seed, {
            "test/acc": 0.97 + 0.001 * seed + gain * (1 + jitter[seed]),
            "best/val_loss": 0.09 + 0.001 * seed - gain / 10,
            **{f"test/acc_class_{d}": 0.97 + 0.001 * d + jitter[seed] * gain * 50
               + 1.5 * gain * (d == 3) for d in range(10)}}) for seed in range(4)]

    result = compare_groups("model.name", "ffnn", runs("ffnn", 0.0), "cnn", runs("cnn", 0.02))
    assert result.mcnemar is None  # these runs kept no predictions
    lines = summary_lines(result)
    assert lines[0] == "cnn vs ffnn (model.name), difference = cnn - ffnn:"
    assert "+2.00 pp" in lines[1] and "paired t over 4 seeds" in lines[1]
    assert "per class: cnn better on 3; worse on none; interval spans 0 on 0 1 2 4 5" in lines[2]
    assert "best/val_loss" in lines[3] and "-0.0020" in lines[3]


def sweep_lines(stdout: str) -> list[str]:
    """The comparison block the sweep prints: its header and the indented lines after it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cnn vs ffnn"))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


@pytest.mark.slow
def test_a_model_by_seed_sweep_ends_with_the_comparison_and_compare_repeats_it(tiny_data,
                                                                               tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    sweep = run_lab(["-m", "model=ffnn,cnn", "seed=0,1,2", *tiny_overrides(tiny_data),
                     "tracking=local", f"tracking.uri={uri}", "tracking.log_model=false",
                     "plots=false", "train.epochs=1", "data.limit=32", "optim.lr=3e-4",
                     f"hydra.sweep.dir={tmp_path}/sweep"])  # one step: runs that disagree
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    printed = sweep_lines(sweep.stdout)
    assert "paired t over 3 seeds" in printed[1]
    assert any("seed 0 pair" in line and "McNemar exact p" in line for line in printed)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab").experiment_id
    (parent,) = client.search_runs([experiment], "tags.sweep = 'true'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = "
                                                f"'{parent.info.run_id}'")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.md", "comparison.png"} <= artifacts
    table = client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path))
    rows = {row["metric"]: row for row in csv.DictReader(open(table))}
    accuracy = {(c.data.params["model.name"], c.data.params["seed"]): c.data.metrics["test/acc"]
                for c in children}
    change = [accuracy["cnn", s] - accuracy["ffnn", s] for s in "012"]
    assert float(rows["test/acc"]["difference"]) == pytest.approx(statistics.fmean(change),
                                                                 abs=1e-6)
    assert rows["test/acc"]["method"] == "paired t over 3 seeds"
    assert {f"test/acc_class_{d}" for d in range(10)} | {"best/val_loss"} <= set(rows)
    # McNemar's counts are those of the two seed-0 runs' kept predictions
    kept = {}
    for child in children:
        if child.data.params["seed"] == "0":
            folder = tmp_path / child.info.run_id
            folder.mkdir()
            labels, predicted = read_predictions(
                client.download_artifacts(child.info.run_id, PREDICTIONS, str(folder)))
            kept[child.data.params["model.name"]] = predicted == labels
    mcnemar = rows["test/acc, seed 0 pair"]
    assert np.any(kept["cnn"] != kept["ffnn"])
    assert float(mcnemar["difference"]) == pytest.approx(accuracy["cnn", "0"]
                                                         - accuracy["ffnn", "0"], abs=1e-6)
    assert int(mcnemar["only_other_right"]) == int(np.sum(kept["cnn"] & ~kept["ffnn"]))
    assert int(mcnemar["only_baseline_right"]) == int(np.sum(kept["ffnn"] & ~kept["cnn"]))
    md = client.download_artifacts(parent.info.run_id, "comparison.md", str(tmp_path))
    assert printed[1] in open(md).read()

    def compare(*args):
        return subprocess.run([sys.executable, "-m", "mnist_lab.compare", "--uri", uri, *args],
                              capture_output=True, text=True, cwd=ROOT)

    again = compare("--stats", "--last", "--output", str(tmp_path / "cmp"))
    assert again.returncode == 0, again.stderr
    assert sweep_lines(again.stdout) == printed
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    by_seed = compare("--stats", "--last", "--by", "nonexistent.key")
    assert by_seed.returncode == 2
    assert by_seed.stderr.startswith("error: --by nonexistent.key: no finished run has")
    assert len(by_seed.stderr.strip().splitlines()) == 1


def fake_finished_run(name: str, overrides: str, **params):
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(run_name=name, run_id=name, status="FINISHED"),
                           data=SimpleNamespace(params={"seed": "0", **params},
                                                metrics={"test/acc": 0.9, "best/val_loss": 0.1},
                                                tags={"hydra.overrides": overrides}))


def test_resume_is_never_taken_for_a_swept_key():
    """A resumed sweep's jobs carry resume=true, the earlier ones not."""
    from mnist_lab.comparison import stats_key
    from mnist_lab.queries import swept_keys

    runs = [fake_finished_run("a", "optim.lr=0.001 resume=true", **{"optim.lr": "0.001"}),
            fake_finished_run("b", "optim.lr=0.0001", **{"optim.lr": "0.0001"}),
            fake_finished_run("c", "optim.lr=0.01 resume=true output_dir=x",
                              **{"optim.lr": "0.01"})]
    assert swept_keys(runs) == ["optim.lr"]
    assert stats_key(runs, None, False) == "optim.lr"


def test_runs_tested_on_different_test_sets_are_said_to_be(monkeypatch):
    from mnist_lab import comparison

    def record(client, run, folder):
        labels = LABELS if run.info.run_name == "a" else np.roll(LABELS, 1)
        return RunRecord(run.info.run_name, 0, dict(run.data.metrics), labels, labels.copy())

    monkeypatch.setattr(comparison, "run_record", record)
    runs = [fake_finished_run("a", "model=ffnn", **{"model.name": "ffnn"}),
            fake_finished_run("b", "model=cnn", **{"model.name": "cnn"})]
    lines = comparison.compare_stats(None, runs, "model.name")
    assert "  the runs were tested on 2 different test sets (another data.root?): no image-level " \
           "test between runs of different sets" in lines
    assert not any("McNemar" in line for line in lines)
