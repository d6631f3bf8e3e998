"""The MLflow store under concurrency and after crashes: creation races, dead runs reconciled."""

import multiprocessing

import pytest

from omegaconf import OmegaConf

from mnist_lab.tracking import connect


def connect_when_told(uri, go, results):
    import mlflow  # noqa: F401  imported before the start signal, so the connects overlap

    go.wait()
    try:
        connect(OmegaConf.create({"uri": uri, "experiment": "mnist-lab"}))
        results.put("ok")
    except Exception as err:  # noqa: BLE001  the test reports whatever a process hit
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.slow
def test_processes_started_together_on_a_fresh_sqlite_store_all_connect(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    spawn = multiprocessing.get_context("spawn")
    go, results = spawn.Event(), spawn.Queue()
    processes = [spawn.Process(target=connect_when_told, args=(uri, go, results))
                 for _ in range(4)]
    for p in processes:
        p.start()
    go.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert outcomes == ["ok"] * 4
