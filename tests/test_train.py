import math

import pytest
import torch

from helpers import compose_config, run_lab, tiny_overrides
from mnist_lab import job
from mnist_lab.data import load_mnist
from mnist_lab.evaluate import evaluate
from mnist_lab.checkpoint import TrainingState, load_safely, save_every_epoch
from mnist_lab.loop import Recipe, fit


@pytest.mark.slow
def test_training_on_fixture_data_lowers_the_loss_and_learns(tiny_data):
    cfg = compose_config([*tiny_overrides(tiny_data), "train.epochs=4", "model=cnn"])
    torch.manual_seed(0)
    data = load_mnist(tiny_data, 100, 0, verify=False)
    model = job.build_model(cfg)
    optimizer, scheduler = job.build_optimizer(cfg, model, 16)
    before = evaluate(model, data.val_images, data.val_labels)
    result = fit(TrainingState.fresh(model, optimizer, scheduler, 0), data,
                 Recipe(epochs=4, batch_size=32))
    history = result.history
    assert history["train/loss"][-1] < history["train/loss"][0]
    assert min(history["val/loss"]) < before.loss
    assert set(history) == {"train/loss", "val/loss", "val/acc", "lr", "epoch_seconds",
                            "samples_per_second", "val_seconds"}
    assert all(len(v) == 4 for v in history.values())
    # the kept state is the one with the lowest validation loss, and it reproduces that loss
    assert result.best_val_loss == min(history["val/loss"])
    assert history["val/loss"][result.best_epoch - 1] == result.best_val_loss
    model.load_state_dict(result.best_state)
    again = evaluate(model, data.val_images, data.val_labels)
    assert again.loss == pytest.approx(result.best_val_loss, rel=1e-6)
    assert again.accuracy > 0.5


@pytest.mark.slow
def test_validation_ties_go_to_the_later_epoch(tiny_data, monkeypatch):
    data = load_mnist(tiny_data, 100, 0, verify=False)
    cfg = compose_config(tiny_overrides(tiny_data))
    model = job.build_model(cfg)
    optimizer, _ = job.build_optimizer(cfg, model, 16)
    fixed = evaluate(model, data.val_images, data.val_labels)
    monkeypatch.setattr("mnist_lab.loop.evaluate_members", lambda *a, **k: [fixed])
    result = fit(TrainingState.fresh(model, optimizer, None, 0), data,
                 Recipe(epochs=3, batch_size=64))
    assert result.best_epoch == 3


def fresh_state(cfg, seed: int = 0) -> TrainingState:
    torch.manual_seed(seed)
    model = job.build_model(cfg)
    return TrainingState.fresh(model, *job.build_optimizer(cfg, model, 16), seed)


@pytest.mark.slow
def test_epoch_callbacks_see_every_epoch_in_order_and_can_stop_training(tiny_data):
    cfg = compose_config(tiny_overrides(tiny_data))
    data = load_mnist(tiny_data, 100, 0, verify=False)
    seen = []

    def record(state, metrics):
        seen.append(("record", state.epoch, metrics["val/loss"]))

    def stop_after_two(state, metrics):
        seen.append(("stop", state.epoch))
        if state.epoch == 2:
            raise KeyboardInterrupt

    state = fresh_state(cfg)
    with pytest.raises(KeyboardInterrupt):
        fit(state, data, Recipe(epochs=5, batch_size=32), [record, stop_after_two])
    assert [s[:2] for s in seen] == [("record", 1), ("stop", 1), ("record", 2), ("stop", 2)]
    assert state.epoch == 2 and [s[2] for s in seen[::2]] == state.history["val/loss"]


@pytest.mark.slow
def test_a_saved_state_continues_as_the_uninterrupted_run(tiny_data, tmp_path):
    """What resume relies on: save after epoch 2, restore into a new state, train on."""
    cfg = compose_config([*tiny_overrides(tiny_data), "model=cnn", "data.augment=true"])
    data = load_mnist(tiny_data, 100, 0, verify=False)
    recipe = Recipe.from_config(cfg)
    recipe.epochs = 3
    whole = fit(fresh_state(cfg), data, recipe)
    recipe.epochs = 2
    fit(fresh_state(cfg), data, recipe, [save_every_epoch(tmp_path / "last.ckpt")])
    recipe.epochs = 3
    continued = fresh_state(cfg, seed=1)  # other weights and RNG: all replaced by the restore
    continued.restore(load_safely(tmp_path / "last.ckpt"))
    assert continued.epoch == 2
    fit(continued, data, recipe)
    assert continued.history["val/loss"] == whole.history["val/loss"]
    assert continued.best_epoch == whole.best_epoch
    for key, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, continued.model.state_dict()[key]), key


@pytest.mark.slow
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
        result = fit(TrainingState.fresh(model, optimizer, scheduler, 0), data,
                     Recipe.from_config(cfg))
        assert check(result.history["lr"]), (sched, result.history["lr"])


def test_run_returns_best_val_loss_and_writes_outputs(tiny_data, tmp_path):
    objective = job.run(compose_config([*tiny_overrides(tiny_data),
                                        f"output_dir={tmp_path / 'out'}"]))
    assert math.isfinite(objective) and objective > 0
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.yaml", "best.pth", "per_class.csv", "per_class.md", "report.txt",
            "loss_curves.png", "class_accuracy.png", "confusion_matrix.png",
            "test_predictions.png", "confident_mistakes.png"} <= files
    state = torch.load(tmp_path / "out" / "best.pth", weights_only=True)
    job.build_model(compose_config(tiny_overrides(tiny_data))).load_state_dict(state)


@pytest.mark.slow
def test_same_seed_gives_bit_identical_metrics(tiny_data, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_data), "model=cnn", f"output_dir={tmp_path}"])
    assert job.run(cfg) == job.run(cfg)
    other = compose_config([*tiny_overrides(tiny_data), "model=cnn", "seed=1",
                            f"output_dir={tmp_path}"])
    assert job.run(other) != job.run(cfg)


@pytest.mark.slow
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
