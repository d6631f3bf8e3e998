"""The training loop: plain PyTorch over batches sliced from in-memory uint8 tensors."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mnist_lab.augment import random_affine
from mnist_lab.checkpoint import TrainingState
from mnist_lab.data import MnistTensors, batches
from mnist_lab.errors import DivergedError
from mnist_lab.evaluate import evaluate
from mnist_lab.schema import EvalConf


@dataclass
class Recipe:
    """How to train, from `train.*`, `data.augment*`, and `eval.batch_size`."""

    epochs: int
    batch_size: int
    sched_interval: str = "epoch"  # scheduler.step() after each "epoch" or each "step"
    eval_batch_size: int = EvalConf.batch_size
    label_smoothing: float = 0.0
    divergence_loss: float = math.inf  # a step's loss above this (or non-finite) stops training
    augment: tuple[float, float] | None = None  # (max rotation degrees, max shift pixels)
    progress: str = "off"

    @classmethod
    def from_config(cls, cfg) -> "Recipe":
        augment = (cfg.data.rotate_degrees, cfg.data.shift_pixels) if cfg.data.augment else None
        return cls(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                   sched_interval=cfg.train.sched_interval, eval_batch_size=cfg.eval.batch_size,
                   label_smoothing=cfg.train.label_smoothing,
                   divergence_loss=cfg.train.divergence_loss, augment=augment,
                   progress=cfg.train.progress)


def show_progress(mode: str) -> bool:
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


def train_epoch(model: nn.Module, data: MnistTensors, optimizer: torch.optim.Optimizer, scheduler,
                recipe: Recipe, generator: torch.Generator, epoch: int) -> float:
    """One pass over the training part; returns the sample-weighted mean loss."""
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    step_scheduler = scheduler is not None and recipe.sched_interval == "step"
    device = data.train_images.device
    # Summed on the device and read once per epoch: a .item() per step would stall a GPU on
    # every batch. The first diverged step (a loss that is non-finite or far above chance
    # level) and its loss are tracked the same way, without a host sync.
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bad_loss = torch.zeros((), device=device)
    steps = batches(data.train_images, data.train_labels, recipe.batch_size, generator)
    bar = None
    if show_progress(recipe.progress):
        from tqdm import tqdm

        steps = bar = tqdm(steps, total=math.ceil(len(data.train_images) / recipe.batch_size),
                           desc=f"epoch {epoch}/{recipe.epochs}", leave=False, file=sys.stderr)
    seen = 0
    for step, (x, y) in enumerate(steps, start=1):
        if recipe.augment is not None:
            x = random_affine(x, *recipe.augment, generator=generator)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler:
            scheduler.step()
        loss = loss.detach()
        loss_sum += loss * len(y)
        diverged = (first_bad < 0) & ~(loss <= recipe.divergence_loss)  # NaN compares false
        first_bad = torch.where(diverged, step, first_bad)
        bad_loss = torch.where(diverged, loss, bad_loss)
        seen += len(y)
        if bar is not None and step % 50 == 0:  # the running loss: a host sync, so not per step
            bar.set_postfix_str(f"train/loss {loss_sum.item() / seen:.4f}")  # shown at once
    bad_step = int(first_bad)
    if bad_step >= 0:
        value = float(bad_loss)
        what = ("non-finite" if not math.isfinite(value) else
                f"{value:.3g}, above train.divergence_loss={recipe.divergence_loss:g}")
        raise DivergedError(f"training loss became {what} in epoch {epoch} at step {bad_step}; "
                            "lower optim.lr (or try another init) and run again")
    return loss_sum.item() / len(data.train_images)


EpochCallback = Callable[[TrainingState, dict[str, float]], None]


def fit(state: TrainingState, data: MnistTensors, recipe: Recipe,
        callbacks: Sequence[EpochCallback] = ()) -> TrainingState:
    """Train from `state.epoch` to `recipe.epochs`, keeping the state with the lowest validation
    loss (ties: the later epoch).

    After each epoch every callback, in order, sees the state and the epoch's `train/loss`,
    `val/loss`, `val/acc`, `lr`, `epoch_seconds` (the training steps), `samples_per_second` and
    `val_seconds` (the validation pass): the job's callbacks
    checkpoint, log to MLflow, print the epoch's line, honour stop signals and report to a
    pruner. A callback stops
    training by raising. A restored state continues as an uninterrupted run would.
    """
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    for epoch in range(state.epoch + 1, recipe.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss = train_epoch(model, data, optimizer, scheduler, recipe, state.generator, epoch)
        seconds = time.perf_counter() - start
        if scheduler is not None and recipe.sched_interval == "epoch":
            scheduler.step()
        val = evaluate(model, data.val_images, data.val_labels, recipe.eval_batch_size)
        metrics = {"train/loss": train_loss, "val/loss": val.loss, "val/acc": val.accuracy,
                   "lr": lr, "epoch_seconds": seconds,
                   "samples_per_second": len(data.train_images) / seconds,
                   "val_seconds": val.seconds}
        for key, value in metrics.items():
            state.history.setdefault(key, []).append(value)
        if val.loss <= state.best_val_loss:
            state.best_val_loss, state.best_epoch = val.loss, epoch
            state.best_state = copy.deepcopy(model.state_dict())
        state.epoch = epoch
        for callback in callbacks:
            callback(state, metrics)
    return state


def print_epoch(epochs: int) -> EpochCallback:
    """The epoch callback that prints one line per epoch; `*` marks a new best val/loss."""
    def show(state: TrainingState, metrics: dict[str, float]) -> None:
        marker = " *" if state.best_epoch == state.epoch else ""
        print(f"epoch {state.epoch:>3}/{epochs}  train/loss {metrics['train/loss']:.4f}  "
              f"val/loss {metrics['val/loss']:.4f}  val/acc {metrics['val/acc']:.4f}  "
              f"train {metrics['epoch_seconds']:.1f}s{marker}", flush=True)

    return show
