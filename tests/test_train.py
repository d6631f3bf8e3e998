import math

import pytest
import torch

from conftest import compose_config, run_lab, tiny_overrides
from mnist_lab import job
from mnist_lab.data import load_mnist
from mnist_lab.evaluate import evaluate
from mnist_lab.train import Recipe, fit


def test_training_on_fixture_data_lowers_the_loss_and_learns(tiny_data):
    cfg = compose_config([*tiny_overrides(tiny_data), "train.epochs=4", "model=cnn"])
    torch.manual_seed(0)
    data = load_mnist(tiny_data, 100, 0, verify=False)
    model = job.build_model(cfg)
    optimizer, scheduler = job.build_optimizer(cfg, model, 16)
    before = evaluate(model, data.val_images, data.val_labels)
    result = fit(model, data, optimizer, scheduler, Recipe(epochs=4, batch_size=32))
    history = result.history
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert min(history["val/loss"]) < before.loss
    assert set(history) == {"train/loss", "val/loss", "val/acc", "lr", "epoch_seconds",
                            "samples_per_second"}
    assert all(len(v) == 4 for v in history.values())
    # the kept state is the one with the lowest validation loss, and it reproduces that loss
    assert result.best_val_loss == min(history["val/loss"])
    assert history["val/loss"][result.best_epoch - 1] == result.best_val_loss
    model.load_state_dict(result.best_state)
    again = evaluate(model, data.val_images, data.val_labels)
    assert again.loss == pytest.approx(result.best_val_loss, rel=1e-6)
    assert again.accuracy > 0.5


def test_validation_ties_go_to_the_later_epoch(tiny_data, monkeypatch):
    data = load_mnist(tiny_data, 100, 0, verify=False)
    cfg = compose_config(tiny_overrides(tiny_data))
    model = job.build_model(cfg)
    optimizer, _ = job.build_optimizer(cfg, model, 16)
    fixed = evaluate(model, data.val_images, data.val_labels)
    monkeypatch.setattr("mnist_lab.train.evaluate", lambda *a, **k: fixed)
    result = fit(model, data, optimizer, None, Recipe(epochs=3, batch_size=64))
    assert result.best_epoch == 3


def test_step_and_epoch_schedulers_change_the_lr(tiny_data):
    for sched, check in (("step", lambda lrs: lrs[2] == pytest.approx(lrs[0] * 0.1)),
                         ("cosine", lambda lrs: lrs[0] > lrs[1] > lrs[2]),
                         ("onecycle", lambda lrs: lrs[1] > lrs[0])):
        overrides = [*tiny_overrides(tiny_data), f"sched={sched}", "train.epochs=3"]
        if sched == "step":
            overrides.append("sched.step_size=2")
        cfg = compose_config(overrides)
        data = load_mnist(tiny_data, 100, 0, verify=False)
        model = job.build_model(cfg)
        optimizer, scheduler = job.build_optimizer(cfg, model, math.ceil(500 / 32))
        result = fit(model, data, optimizer, scheduler, Recipe.from_config(cfg))
        assert check(result.history["lr"]), (sched, result.history["lr"])


def test_run_returns_best_val_loss_and_writes_outputs(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "output_dir", lambda: tmp_path / "out")
    objective = job.run(compose_config(tiny_overrides(tiny_data)))
    assert math.isfinite(objective) and objective > 0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.yaml", "best.pth", "per_class.csv", "per_class.md", "report.txt",
            "loss_curves.png", "class_accuracy.png", "confusion_matrix.png",
            "test_predictions.png", "confident_mistakes.png"} <= files
    state = torch.load(tmp_path / "out" / "best.pth", weights_only=True)
    job.build_model(compose_config(tiny_overrides(tiny_data))).load_state_dict(state)


def test_same_seed_gives_bit_identical_metrics(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setattr(job, "output_dir", lambda: tmp_path)
    cfg = compose_config([*tiny_overrides(tiny_data), "model=cnn"])
    assert job.run(cfg) == job.run(cfg)
    other = compose_config([*tiny_overrides(tiny_data), "model=cnn", "seed=1"])
    assert job.run(other) != job.run(cfg)


def test_end_to_end_run_py(tiny_data, tmp_path):
    result = run_lab([*tiny_overrides(tiny_data), "model=cnn", f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 0, result.stderr
    assert "942,026 parameters" in result.stdout
    assert "epoch   2/2" in result.stdout and "overall:" in result.stdout
    assert (tmp_path / "o" / "best.pth").is_file()


def test_missing_data_fails_with_a_clear_message(tmp_path):
    result = run_lab([f"data.root={tmp_path}/nowhere", "tracking=off",
                      f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 2
    assert "train-images-idx3-ubyte(.gz) not found" in result.stderr
    assert "data.download=true" in result.stderr
