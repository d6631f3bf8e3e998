"""Fixtures shared by the test modules (their plain helpers are in helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import PG_BIN, as_postgres, free_port, make_dataset


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def postgres():
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing; .ci/run should install them")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-pg-"))
    folder.chmod(0o777)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = free_port()
    data = folder / "data"
    as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow"])
    as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w",
                 "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"])
    try:
        as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
                     "mlflow"])
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow", folder
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
