"""Real-data checks on the bundled MNIST (about a minute on 2 cores): `pytest -m slow`."""

import pytest

from helpers import compose_config
from mnist_lab import job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, floor", [("cnn", 0.98), ("ffnn", 0.95)])
def test_one_epoch_on_real_mnist_reaches_the_floor(model, floor, tmp_path, capsys):
    cfg = compose_config([f"model={model}", "train.epochs=1", "tracking=off",
                          "train.progress=off", f"output_dir={tmp_path}"])
    job.run(cfg)
    report = (tmp_path / "report.txt").read_text()
    overall = float(report.split("overall:")[1].split("%")[0]) / 100
    assert overall >= floor, report
