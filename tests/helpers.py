"""Helpers the tests share: tiny IDX datasets, configs composed like run.py does, run.py in a
subprocess, test stores and a PostgreSQL server. The fixtures built on them are in conftest.py."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import torch

from mnist_lab.preflight import compose_job as compose_config  # noqa: F401  for the tests

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT / "data" / "mnist"


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> Path:
    magic = 2051 if array.ndim == 3 else 2049
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.to(torch.uint8).numpy().tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def synthetic_digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable fake digits: class k lights a 6x6 block at a position that depends on k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=generator)
    for i, k in enumerate(labels.tolist()):
        row, col = 3 + 8 * (k // 4), 3 + 6 * (k % 4)
        images[i, row:row + 6, col:col + 6] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


def make_dataset(root: Path, train: int = 600, test: int = 200, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def tiny_overrides(data_root: Path) -> list[str]:
    """Seconds-long runs on fixture data; verify=false since fixture files aren't real MNIST."""
    return [f"data.root={data_root}", "data.verify=false", "data.val_size=100",
            "train.epochs=2", "train.batch_size=32", "train.progress=off", "tracking=off",
            f"checkpoint.dir={data_root.parent / 'checkpoints'}"]


def run_lab(args: list[str], cwd: Path | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a subprocess, as a user would type it."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store(tmp_path: Path) -> str:
    """The test's own MLflow store, never the project's mlruns/."""
    return f"sqlite:///{tmp_path}/store/mlflow.db"


def tracked(tiny_data: Path, tmp_path: Path, *extra: str) -> list[str]:
    """tiny_overrides with tracking on, into the test's own store."""
    return [*tiny_overrides(tiny_data), "tracking=local", f"tracking.uri={store(tmp_path)}",
            "tracking.log_model=false", *extra]  # no model export: seconds a run


def runs_in(uri: str) -> list:
    """Every run of the mnist-lab experiment in the store at `uri` (none if it has none)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def as_postgres(args, **kwargs):
    """PostgreSQL refuses to run as root; as root, run its tools as the postgres user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, **kwargs)
