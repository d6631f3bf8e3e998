"""The training loop: plain PyTorch over batches sliced from in-memory uint8 tensors."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mnist_lab.augment import random_affine
from mnist_lab.checkpoint import restore_rng, rng_state, save_atomic
from mnist_lab.data import MNIST, batches
from mnist_lab.evaluate import evaluate


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Recipe:
    """How to train, from `train.*`, `data.augment*` and `sched.interval`."""

    epochs: int
    batch_size: int
    seed: int = 0
    sched_interval: str = "epoch"  # scheduler.step() after each "epoch" or each "step"
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    augment: tuple[float, float] | None = None  # (max rotation degrees, max shift pixels)
    progress: str = "off"

    @classmethod
    def from_config(cls, cfg) -> "Recipe":
        augment = (cfg.data.rotate_degrees, cfg.data.shift_pixels) if cfg.data.augment else None
        return cls(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, seed=cfg.seed,
                   sched_interval=cfg.sched.interval, eval_batch_size=cfg.eval.batch_size,
                   label_smoothing=cfg.train.label_smoothing, augment=augment,
                   progress=cfg.train.progress)


@dataclass
class FitResult:
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0  # 1-based
    best_val_loss: float = math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0  # last completed epoch


def show_progress(mode: str) -> bool:
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


def train_epoch(model: nn.Module, data: MNIST, optimizer: torch.optim.Optimizer, scheduler,
                recipe: Recipe, generator: torch.Generator, epoch: int) -> float:
    """One pass over the training part; returns the sample-weighted mean loss."""
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    step_scheduler = scheduler is not None and recipe.sched_interval == "step"
    device = data.train_images.device
    # Summed on the device and read once per epoch: a .item() per step would stall a GPU on
    # every batch. The first non-finite step is tracked the same way, without a host sync.
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    steps = batches(data.train_images, data.train_labels, recipe.batch_size, generator)
    if show_progress(recipe.progress):
        from tqdm import tqdm

        steps = tqdm(steps, total=math.ceil(len(data.train_images) / recipe.batch_size),
                     desc=f"epoch {epoch}", leave=False, file=sys.stderr)
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
        first_bad = torch.where((first_bad < 0) & ~loss.isfinite(), step, first_bad)
    bad_step = int(first_bad)
    if bad_step >= 0:
        raise DivergedError(f"training loss became non-finite in epoch {epoch} at step "
                            f"{bad_step}; lower optim.lr or check the data")
    return loss_sum.item() / len(data.train_images)


def fit(model: nn.Module, data: MNIST, optimizer: torch.optim.Optimizer, scheduler,
        recipe: Recipe, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        checkpoint: Path | None = None, resume_from: dict | None = None,
        checkpoint_extra: dict | None = None) -> FitResult:
    """Train to `recipe.epochs`, keep the state with the lowest validation loss (ties: the later epoch).

    After each epoch the full training state goes to `checkpoint` (atomically), then
    `on_epoch(epoch, metrics)` sees `train/loss`, `val/loss`, `val/acc`, `lr`, `epoch_seconds`
    and `samples_per_second`. `resume_from` (a loaded checkpoint) continues after its epoch,
    with every RNG restored, so the result is the one an uninterrupted run gives.
    """
    generator = torch.Generator().manual_seed(recipe.seed)
    result = FitResult()
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume_from["scheduler"])
        restore_rng(resume_from["rng"], generator)
        result = FitResult(history=resume_from["history"], best_epoch=resume_from["best_epoch"],
                           best_val_loss=resume_from["best_val_loss"],
                           best_state=resume_from["best_state"], epoch=resume_from["epoch"])
    epochs = recipe.epochs
    for epoch in range(result.epoch + 1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss = train_epoch(model, data, optimizer, scheduler, recipe, generator, epoch)
        seconds = time.perf_counter() - start
        if scheduler is not None and recipe.sched_interval == "epoch":
            scheduler.step()
        val = evaluate(model, data.val_images, data.val_labels, recipe.eval_batch_size)
        metrics = {"train/loss": train_loss, "val/loss": val.loss, "val/acc": val.accuracy,
                   "lr": lr, "epoch_seconds": seconds,
                   "samples_per_second": len(data.train_images) / seconds}
        for key, value in metrics.items():
            result.history.setdefault(key, []).append(value)
        if val.loss <= result.best_val_loss:
            result.best_val_loss, result.best_epoch = val.loss, epoch
            result.best_state = copy.deepcopy(model.state_dict())
        result.epoch = epoch
        if checkpoint is not None:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler is not None else {},
                         "rng": rng_state(generator), "epoch": epoch, "history": result.history,
                         "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                         "best_state": result.best_state, **(checkpoint_extra or {})},
                        checkpoint)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        marker = " *" if result.best_epoch == epoch else ""
        print(f"epoch {epoch:>3}/{epochs}  train/loss {train_loss:.4f}  val/loss {val.loss:.4f}  "
              f"val/acc {val.accuracy:.4f}  {seconds:.1f}s{marker}", flush=True)
    return result
