"""The benchmark script counts FLOPs right and, in --quick mode, writes every figure it promises."""

import json
import time

import pytest

from mnist_lab.models import CNN, FFNN


def bench_module():
    import runpy

    from helpers import ROOT

    return runpy.run_path(str(ROOT / "benchmarks" / "bench.py"))


def test_flop_counts_match_the_architectures():
    bench = bench_module()
    # FFNN: 784*512 + 512*256 + 256*10 multiply-adds
    assert bench["forward_flops"](FFNN()) == 2 * (784 * 512 + 512 * 256 + 256 * 10)
    # CNN: conv1 28x28x16x9, conv2 14x14x32x16x9, then 1568-512-256-10
    macs = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 1568 * 512 + 512 * 256 + 256 * 10
    assert bench["forward_flops"](CNN()) == 2 * macs
    assert bench["training_flops"](CNN()) == 3 * 2 * macs


@pytest.mark.slow
def test_quick_benchmark_writes_its_figures(tmp_path):
    from mnist_lab.cli import main

    started = time.perf_counter()
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - started
    figures = json.loads((tmp_path / "bench.json").read_text())
    for key in ("data_load_seconds", "peak_gflops", "ffnn_bs20", "cnn_bs512", "ffnn_epoch",
                "cnn_epoch", "tracking", "study", "sweep", "startup", "speedrun"):
        assert key in figures, key
    assert figures["machine"]["device"] == "cpu" and figures["machine"]["quick"]
    # figures are measured, not asserted: each is a time of the promised kind, taken within
    # this benchmark's own run (none longer than the whole, none zero or made up)
    study = figures["study"]
    timings = [figures["data_load_seconds"], figures["cnn_epoch"]["lab_seconds"],
               figures["cnn_epoch"]["notebook_seconds"], figures["tracking"]["on_seconds"],
               figures["tracking"]["off_seconds"], figures["tracking"]["eager_export_seconds"],
               figures["speedrun"]["mean_seconds"], figures["sweep"]["wall_seconds"],
               study["notebook"]["wall_seconds"], study["lab"]["wall_seconds"]]
    assert all(0 < t < elapsed for t in timings), (timings, elapsed)
    # the sweep's time inside training is read from its runs' metrics: some, and not all of it
    assert figures["sweep"]["runs"] == 2 and 0 < figures["sweep"]["fraction"] < 1
    assert [t["target"][0] for t in figures["targets"]] == ["1", "2", "3", "4", "5"]
    assert 0 < figures["ffnn_bs20"]["share_of_peak"] and figures["peak_gflops"] > 0
    assert 0.5 < figures["speedrun"]["mean_test_acc"] <= 1  # a real training run, not a stub
    table = (tmp_path / "bench.md").read_text()
    assert "| measurement | result |" in table and "speedrun, 1 seed(s)" in table


def test_a_study_is_scaled_from_its_own_epoch_times():
    scale = bench_module()["scaled"]
    # two models in turn, 2 epochs each: 3 + 3 s and 10 + 12 s of 40 s, so 12 s fixed and
    # 3 + 11 = 14 s an epoch: 12 + 20 * 14 = 292 s for 20 epochs
    fit = scale(40.0, [[3.0, 3.0], [10.0, 12.0]], concurrent=False)
    assert (fit["fixed_seconds"], fit["epoch_seconds"], fit["scaled_20_epochs_seconds"]) == (
        12.0, 14.0, 292.0)
    # side by side the slower model sets the pace: 40 - 22 = 18 s fixed, 18 + 20 * 11 = 238 s
    fit = scale(40.0, [[3.0, 3.0], [10.0, 12.0]], concurrent=True)
    assert (fit["fixed_seconds"], fit["epoch_seconds"], fit["scaled_20_epochs_seconds"]) == (
        18.0, 11.0, 238.0)


@pytest.mark.slow
def test_the_stacking_benchmark_writes_its_figures(tmp_path):
    import runpy

    from helpers import ROOT

    bench = runpy.run_path(str(ROOT / "benchmarks" / "stacked.py"))
    assert bench["main"](["--models", "ffnn", "--configs", "3", "--limit", "300",
                          "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "stacked.json").read_text())
    ffnn = figures["loop"]["ffnn"]
    assert ffnn["configs"] == 3 and ffnn["alone_epochs_per_s"] > 0
    assert ffnn["speedup"] == pytest.approx(ffnn["alone_seconds"] / ffnn["stacked_seconds"])
    assert "| ffnn | 3 x 1 |" in (tmp_path / "stacked.md").read_text()
