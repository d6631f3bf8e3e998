"""The training state, saved after every epoch atomically, and loaded safely to resume.

A run's checkpoint folder holds `last.ckpt` (everything needed to continue: model, optimizer,
scheduler, RNG states, epoch, best-so-far state, metric history, MLflow run id). Each write goes
to a temporary file first and replaces the old one with `os.replace`, so a kill at any moment
leaves the previous complete checkpoint. Every load uses `weights_only=True`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mnist_lab.errors import CheckpointError
from mnist_lab.identity import config_key

LAST = "last.ckpt"
FINISHED = "finished.json"  # in place of last.ckpt once the run completed
IDENTITY_KEYS = ("run_id", "config_key", "overrides")  # which run a checkpoint belongs to
RESUME_KEYS = {"model", "optimizer", "scheduler", "rng", "epoch", "history", "best_epoch",
               "best_val_loss", "best_state"}  # what TrainingState.restore reads
ZIP_MAGIC = b"PK"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80\x02"  # the legacy format: a protocol-2 pickle


def folder_for(cfg: DictConfig) -> Path:
    return Path(cfg.checkpoint.dir) / f"{cfg.choices.model}-{config_key(cfg)}"


@dataclass
class TrainingState:
    """Everything training needs to continue where it stopped; `last.ckpt` holds it by name.

    `fit` advances it one epoch at a time and hands it to the epoch callbacks; `save` and
    `restore` are the only writer and reader of the checkpoint format.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None
    generator: torch.Generator  # batch order and augmentation draws
    epoch: int = 0  # last completed epoch, 1-based
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per epoch
    best_epoch: int = 0  # lowest val/loss so far (ties: the later epoch)
    best_val_loss: float = math.inf
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the model at best_epoch
    identity: dict[str, str] = field(default_factory=dict)  # run_id, config_key, overrides

    @classmethod
    def fresh(cls, model: nn.Module, optimizer, scheduler, seed: int) -> "TrainingState":
        return cls(model, optimizer, scheduler, torch.Generator().manual_seed(seed))

    def save(self, path: Path) -> None:
        rng = {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict() if self.scheduler else {},
                     "rng": rng, "epoch": self.epoch, "history": self.history,
                     "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                     "best_state": self.best_state, **self.identity}, path)

    def restore(self, saved: dict) -> None:
        """Continue from a loaded `last.ckpt` (see `load_safely`), every RNG included."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.generator.set_state(saved["rng"]["shuffle"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        self.epoch, self.history = saved["epoch"], saved["history"]
        self.best_epoch, self.best_val_loss = saved["best_epoch"], saved["best_val_loss"]
        self.best_state = saved["best_state"]
        self.identity = {key: saved[key] for key in IDENTITY_KEYS if key in saved}


def save_every_epoch(path: Path):
    """The epoch callback that keeps `path` at the latest complete epoch."""
    def save(state: TrainingState, metrics: dict[str, float]) -> None:
        state.save(path)

    return save


def save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_safely(path: Path, map_location="cpu") -> dict:
    """torch.load with weights_only=True; a file that carries pickled objects is refused.

    What a file is gets checked first, so each fault has its own line: missing, unreadable, not
    a PyTorch file at all (text, /etc/passwd), a zip archive cut short, or unsafe pickles.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err.strerror})") from None
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or incomplete (its zip archive has no end); "
                              "the write was cut short: use an earlier copy or train again")
    if head not in (ZIP_MAGIC, PICKLE_MAGIC):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip archive "
                              "torch.save writes nor a legacy pickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused to load: it is not a plain tensor checkpoint "
                              f"({first}). Only files of tensors and plain values load; a file "
                              "that needs arbitrary pickled objects may run code, so it is "
                              "never unpickled") from None
    except Exception as err:  # torch's readers raise RuntimeError, KeyError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: corrupt, cannot be loaded ({type(err).__name__}: "
                              f"{first[:200]})") from None


def load_last(path: Path) -> dict:
    """A `last.ckpt` to resume from: loaded safely and holding everything `restore` reads."""
    state = load_safely(path)
    missing = RESUME_KEYS - set(state) if isinstance(state, dict) else RESUME_KEYS
    if missing:
        raise CheckpointError(f"{path}: not a resumable checkpoint (it lacks "
                              f"{', '.join(sorted(missing))}); resume=false starts afresh")
    return state


def mark_finished(folder: Path, state: TrainingState) -> None:
    """A run that completed keeps no `last.ckpt` (its best weights are in its folder and in
    MLflow): a small `finished.json` takes its place, so `resume=true` says it is complete."""
    marker = {**state.identity, "best_val_loss": state.best_val_loss, "epoch": state.epoch,
              "history": state.history}
    write_atomic(folder / FINISHED, json.dumps(marker))
    (folder / LAST).unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` whole or not at all: written beside it, then renamed over it."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def finished_marker(folder: Path) -> dict | None:
    """What `mark_finished` left in `folder`, or None."""
    path = folder / FINISHED
    return json.loads(path.read_text()) if path.is_file() else None

