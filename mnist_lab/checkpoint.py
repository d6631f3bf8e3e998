"""Per-epoch checkpoints, written atomically, and the resume lookup.

A run's checkpoint folder holds `last.ckpt` (everything needed to continue: model, optimizer,
scheduler, RNG states, epoch, best-so-far state, metric history, MLflow run id). Each write goes
to a temporary file first and replaces the old one with `os.replace`, so a kill at any moment
leaves the previous complete checkpoint. Every load uses `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.errors import CheckpointError

LAST = "last.ckpt"
# Keys that don't change what a run computes, so they don't change which checkpoint it resumes.
NOT_IDENTITY = ("resume", "tracking", "train.progress", "checkpoint", "launcher", "threads",
                "eval")


def config_key(cfg: DictConfig) -> str:
    """A short hash of what the run computes: same config (and seed) -> same checkpoint folder."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NOT_IDENTITY:
        node = container
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha256(repr(sorted(_flat(container))).encode()).hexdigest()[:16]


def _flat(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", repr(value)


def folder_for(cfg: DictConfig) -> Path:
    return Path(cfg.checkpoint.dir) / f"{cfg.model.name}-{config_key(cfg)}"


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
    """torch.load with weights_only=True; a file that carries pickled objects is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused to load: it is not a plain tensor checkpoint "
                              f"({first}). Only files of tensors and plain values load; a file "
                              "that needs arbitrary pickled objects may run code, so it is "
                              "never unpickled") from None


def rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
