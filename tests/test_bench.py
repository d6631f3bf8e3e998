"""The benchmark script counts FLOPs right and, in --quick mode, writes every figure it promises."""

import json

import pytest

from mnist_lab.models import CNN, FFNN


def bench_module():
    import runpy

    from conftest import ROOT

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

    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "bench.json").read_text())
    for key in ("data_load_seconds", "peak_gflops", "ffnn_bs20", "cnn_bs512", "ffnn_epoch",
                "cnn_epoch", "tracking", "startup", "speedrun"):
        assert key in figures, key
    assert figures["cnn_epoch"]["speedup"] > 1  # the lab's loop beats the per-sample pipeline
    short = figures["tracking"]["short"]
    assert short["on_seconds"] > 0 and short["ratio"] == short["on_seconds"] / short["off_seconds"]
    assert "| measurement | result |" in (tmp_path / "bench.md").read_text()
