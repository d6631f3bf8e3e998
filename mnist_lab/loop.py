"""The training loop: plain PyTorch over batches sliced from in-memory uint8 tensors."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.augment import random_affine
from mnist_lab.checkpoint import TrainingState
from mnist_lab.data import MnistTensors, batches
from mnist_lab.errors import DivergedError
from mnist_lab.evaluate import evaluate_members
from mnist_lab.schema import EvalConf
from mnist_lab.stacking import EpochCallback, Member, Stack


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
                recipe: Recipe, generator, epoch: int) -> tuple[list[float], list]:
    """One pass over the training part: each member's sample-weighted mean loss, and for each
    a DivergedError if its loss diverged (else None). One model is one member; a stack
    (stacking.Stack) has a generator per member, and its loss is the sum of the members' mean
    losses, so each member's gradient is the one it would get alone."""
    model.train()
    step_scheduler = scheduler is not None and recipe.sched_interval == "step"
    device = data.train_images.device
    members = len(generator) if isinstance(generator, list) else None
    # Summed on the device and read once per epoch: a .item() per step would stall a GPU on
    # every batch. The first diverged step (a loss that is non-finite or far above chance
    # level) and its loss are tracked the same way, without a host sync.
    shape = (members,) if members else ()
    loss_sum = torch.zeros(shape, device=device)
    first_bad = torch.full(shape, -1, dtype=torch.long, device=device)
    bad_loss = torch.zeros(shape, device=device)
    steps = batches(data.train_images, data.train_labels, recipe.batch_size, generator)
    n = data.train_images.shape[-3]
    bar = None
    if show_progress(recipe.progress):
        from tqdm import tqdm

        steps = bar = tqdm(steps, total=math.ceil(n / recipe.batch_size),
                           desc=f"epoch {epoch}/{recipe.epochs}", leave=False, file=sys.stderr)
    seen = 0
    for step, (x, y) in enumerate(steps, start=1):
        if recipe.augment is not None:
            x = random_affine(x, *recipe.augment, generator=generator)
        loss = member_losses(model(x), y, recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        if step_scheduler:
            scheduler.step()
        loss = loss.detach()
        loss_sum += loss * y.shape[-1]
        diverged = (first_bad < 0) & ~(loss <= recipe.divergence_loss)  # NaN compares false
        first_bad = torch.where(diverged, step, first_bad)
        bad_loss = torch.where(diverged, loss, bad_loss)
        seen += y.shape[-1]
        if bar is not None and step % 50 == 0:  # the running loss: a host sync, so not per step
            bar.set_postfix_str(f"train/loss {loss_sum.mean().item() / seen:.4f}")
    faults = [divergence(int(s), float(v), epoch, recipe) if s >= 0 else None
              for s, v in zip(first_bad.reshape(-1).tolist(), bad_loss.reshape(-1).tolist())]
    return (loss_sum / n).reshape(-1).tolist(), faults


def member_losses(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the batch: a scalar for one model, (members,) for a stack."""
    losses = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none",
                             label_smoothing=smoothing)
    return losses.view(labels.shape).mean(dim=-1)


def divergence(step: int, value: float, epoch: int, recipe: Recipe) -> DivergedError:
    what = ("non-finite" if not math.isfinite(value) else
            f"{value:.3g}, above train.divergence_loss={recipe.divergence_loss:g}")
    return DivergedError(f"training loss became {what} in epoch {epoch} at step {step}; "
                         "lower optim.lr (or try another init) and run again")


class Solo:
    """One run, trained as `fit` trains a stack of one (stacking.Stack): a member that fails
    takes the run with it."""

    def __init__(self, state: TrainingState, callbacks: Sequence[EpochCallback]):
        self.model, self.optimizer, self.scheduler = state.model, state.optimizer, state.scheduler
        self.generator, self.members = state.generator, [Member(state, callbacks)]

    def data_for(self, data: MnistTensors) -> MnistTensors:
        return data

    def sync(self) -> None:
        """Nothing to copy: the run's model is its own."""

    def drop(self, member: Member, error: BaseException) -> None:
        raise error


def fit(state: TrainingState | Stack, data: MnistTensors, recipe: Recipe,
        callbacks: Sequence[EpochCallback] = ()) -> TrainingState | Stack:
    """Train from `state.epoch` to `recipe.epochs`, keeping the state with the lowest validation
    loss (ties: the later epoch).

    After each epoch every callback, in order, sees the state and the epoch's `train/loss`,
    `val/loss`, `val/acc`, `lr`, `epoch_seconds` (the training steps), `samples_per_second` and
    `val_seconds` (the validation pass): the job's callbacks
    checkpoint, log to MLflow, print the epoch's line, honour stop signals and report to a
    pruner. A callback stops
    training by raising. A restored state continues as an uninterrupted run would.

    A `Stack` trains all its members at once, each with its own callbacks, and each member's
    state and metrics are exactly what its callbacks would see alone; a member whose loss
    diverges or whose callback raises leaves the stack (`Member.error`), the others go on.
    """
    run = state if isinstance(state, Stack) else Solo(state, callbacks)
    for epoch in range(run.members[0].state.epoch + 1, recipe.epochs + 1):
        lrs = [m.state.optimizer.param_groups[0]["lr"] for m in run.members]
        members = list(run.members)
        start = time.perf_counter()
        train_losses, faults = train_epoch(run.model, run.data_for(data), run.optimizer,
                                           run.scheduler, recipe, run.generator, epoch)
        seconds = time.perf_counter() - start
        for member, fault in zip(members, faults):
            if fault is not None:
                run.drop(member, fault)
        if not run.members:
            break
        if run.scheduler is not None and recipe.sched_interval == "epoch":
            run.scheduler.step()
        now = run.data_for(data)
        vals = evaluate_members(run.model, now.val_images, now.val_labels,
                                recipe.eval_batch_size)
        run.sync()  # each member's own model and optimizer now hold its part of the stack
        kept = [(m, loss, lr) for m, loss, lr, f in zip(members, train_losses, lrs, faults)
                if f is None]
        for (member, train_loss, lr), val in zip(kept, vals):
            member_epoch(run, member, epoch, {
                "train/loss": train_loss, "val/loss": val.loss, "val/acc": val.accuracy,
                "lr": lr, "epoch_seconds": seconds,
                "samples_per_second": data.train_images.shape[-3] / seconds,  # each member's
                "val_seconds": val.seconds})
        if not run.members:
            break
    return state


def member_epoch(run, member: Member, epoch: int, metrics: dict[str, float]) -> None:
    """A member's epoch after training: its history, best state and callbacks."""
    state = member.state
    for key, value in metrics.items():
        state.history.setdefault(key, []).append(value)
    if metrics["val/loss"] <= state.best_val_loss:
        state.best_val_loss, state.best_epoch = metrics["val/loss"], epoch
        state.best_state = copy.deepcopy(state.model.state_dict())
    state.epoch = epoch
    try:
        for callback in member.callbacks:
            callback(state, metrics)
    except Exception as err:  # a stop signal (KeyboardInterrupt) ends the whole stack
        run.drop(member, err)


def print_epoch(epochs: int, label: str = "") -> EpochCallback:
    """The epoch callback that prints one line per epoch; `*` marks a new best val/loss.
    `label` starts the line (a stack's member: its job number)."""
    def show(state: TrainingState, metrics: dict[str, float]) -> None:
        marker = " *" if state.best_epoch == state.epoch else ""
        print(f"{label}epoch {state.epoch:>3}/{epochs}  train/loss {metrics['train/loss']:.4f}  "
              f"val/loss {metrics['val/loss']:.4f}  val/acc {metrics['val/acc']:.4f}  "
              f"train {metrics['epoch_seconds']:.1f}s{marker}", flush=True)

    return show
