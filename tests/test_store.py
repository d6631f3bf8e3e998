"""The MLflow store under concurrency and after crashes: creation races, dead runs reconciled."""

import multiprocessing
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from helpers import ROOT, compose_config, make_dataset, tiny_overrides
from mnist_lab import tracking
from mnist_lab.cli import main
from mnist_lab.liveness import reconcile
from mnist_lab.store import connect, runs_table


def connect_when_told(uri, go, results):
    import mlflow  # noqa: F401  imported before the start signal, so the connects overlap

    go.wait()
    try:
        connect(OmegaConf.create({"uri": uri, "experiment": "mnist-lab"}))
        results.put("ok")
    except Exception as err:  # noqa: BLE001  the test reports whatever a process hit
        results.put(f"{type(err).__name__}: {err}")


def test_the_experiment_opens_on_the_labs_runs_view_and_keeps_a_users_changes(tmp_path):
    import json

    tracking_cfg = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/mlflow.db",
                                     "experiment": "mnist-lab"})
    client, experiment_id = connect(tracking_cfg)
    key = "mlflow.sharedViewState.lab"
    view = json.loads(client.get_experiment(experiment_id).tags[key])
    assert view["orderByKey"] == "metrics.`test/acc`" and not view["orderByAsc"]
    assert "metrics.`test/acc`" in view["selectedColumns"]
    assert runs_table(experiment_id) == f"experiments/{experiment_id}/runs?viewStateShareKey=lab"
    client.set_experiment_tag(experiment_id, key, '{"selectedColumns": []}')  # changed in the UI
    assert connect(tracking_cfg)[1] == experiment_id
    assert client.get_experiment(experiment_id).tags[key] == '{"selectedColumns": []}'


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


def dead_process() -> psutil.Process:
    """A process that ran on this host and has ended (its pid and start time are known)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process = psutil.Process(child.pid)
    process.create_time()  # cached now, as a run's tags would hold it
    child.kill()
    child.wait()
    return process


def running_run(client, experiment_id, **tags):
    tags = {key.replace("_", "."): str(value) for key, value in tags.items()}
    return client.create_run(experiment_id, tags=tags).info.run_id


def status(client, run_id):
    return client.get_run(run_id).info.status


def test_dead_runs_are_reconciled_killed_and_live_ones_left_alone(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("mnist-lab")
    me, gone = psutil.Process(), dead_process()
    now = time.time()
    alive = running_run(client, experiment, host=socket.gethostname(), pid=me.pid,
                        pid_started=me.create_time(), heartbeat=int(now) - 86400)
    dead = running_run(client, experiment, host=socket.gethostname(), pid=gone.pid,
                       pid_started=gone.create_time(), heartbeat=int(now))
    recycled = running_run(client, experiment, host=socket.gethostname(), pid=me.pid,
                           pid_started=me.create_time() - 1000, heartbeat=int(now))
    elsewhere_live = running_run(client, experiment, host="gpu-node-7", pid=1, pid_started=0,
                                 heartbeat=int(now) - 60)
    elsewhere_silent = running_run(client, experiment, host="gpu-node-8", pid=1, pid_started=0,
                                   heartbeat=int(now) - 2 * 3600)
    unknown = running_run(client, experiment)  # made before runs recorded their process

    dead_ids = {run_id for run_id, _, _ in reconcile(client)}
    assert dead_ids == {dead, recycled, elsewhere_silent}
    for run_id in dead_ids:
        assert status(client, run_id) == "KILLED"
    assert "is gone" in client.get_run(dead).data.tags["killed_because"]
    assert "no heartbeat from gpu-node-8" in client.get_run(elsewhere_silent).data.tags[
        "killed_because"]
    for run_id in (alive, elsewhere_live, unknown):
        assert status(client, run_id) == "RUNNING"
    # a sweep's parent on another host lives while a child of it beats
    parent = running_run(client, experiment, host="login-1", pid=1, pid_started=0,
                         heartbeat=int(now) - 5 * 3600)
    running_run(client, experiment, host="gpu-node-9", pid=1, pid_started=0,
                heartbeat=int(now), mlflow_parentRunId=parent)
    assert reconcile(client) == [] and status(client, parent) == "RUNNING"


def test_a_run_being_resumed_is_not_reconciled(tiny_data, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_data), "tracking=local",
                          f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    client, experiment = connect(cfg.tracking)
    gone = dead_process()
    run_id = running_run(client, experiment, host=socket.gethostname(), pid=gone.pid,
                         pid_started=gone.create_time(), heartbeat=int(time.time()))
    resuming = tracking.MlflowRun(cfg)  # opening the store reconciles: the dead run is KILLED
    assert status(client, run_id) == "KILLED"
    assert resuming._reopen(run_id)  # this process takes it over, then marks it RUNNING
    assert reconcile(client) == [] and status(client, run_id) == "RUNNING"
    assert client.get_run(run_id).data.tags["pid"] == str(os.getpid())


@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_marked_killed_by_the_next_run_and_on_demand(tiny_data,
                                                                                    tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = make_dataset(tmp_path / "bigger", train=3000, test=200)
    args = [*tiny_overrides(data), "tracking=local", f"tracking.uri={uri}", "train.epochs=20",
            "plots=false", "tracking.log_model=false", f"hydra.run.dir={tmp_path}/o"]
    for _ in range(2):
        process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args],
                                   stdout=subprocess.PIPE, text=True)
        while "epoch   1/20" not in process.stdout.readline():
            assert process.poll() is None
        process.kill()
        process.wait()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab").experiment_id
    first, second = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    assert first.info.status == "KILLED"  # the second run reconciled it when it started
    assert second.info.status == "RUNNING" and "heartbeat" in second.data.tags
    assert main(["reconcile", "--uri", uri, "--dry-run"]) == 0
    assert status(client, second.info.run_id) == "RUNNING"
    assert main(["reconcile", "--uri", uri]) == 0
    assert status(client, second.info.run_id) == "KILLED"


@pytest.mark.slow
def test_a_run_waits_while_another_process_holds_the_store_locked(tmp_path):
    """A backup or the UI holding the SQLite file for 30 s used to fail the run ("database is
    locked" after MLflow's 20 s): the run waits and finishes."""
    import sqlite3

    data = make_dataset(tmp_path / "data", train=1500, test=200)
    db = tmp_path / "store" / "mlflow.db"
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *tiny_overrides(data), "train.epochs=6",
         "tracking=local", f"tracking.uri=sqlite:///{db}", "plots=false",
         "tracking.log_model=false", "train.progress=lines", f"hydra.run.dir={tmp_path}/out"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in run.stdout:  # the run is training: hold the store from here
        lines.append(line)
        if line.startswith("epoch   1/6"):
            break
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(30)
    holder.execute("ROLLBACK")
    holder.close()
    lines += run.stdout.readlines()
    assert run.wait(timeout=300) == 0, "".join(lines)[-3000:]
    (finished,) = MlflowClient(f"sqlite:///{db}").search_runs(["1"])
    assert finished.info.status == "FINISHED" and finished.data.metrics["best/epoch"] >= 1
    assert "locked" not in "".join(lines)


@pytest.mark.slow
def test_a_store_locked_past_the_wait_is_one_line_without_sql(tmp_path, monkeypatch):
    import sqlite3

    from mnist_lab import store
    from mnist_lab.errors import TrackingError

    monkeypatch.setattr(store, "BUSY_SECONDS", 0)
    tracking_cfg = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/mlflow.db",
                                     "experiment": "mnist-lab"})
    client, experiment_id = connect(tracking_cfg)
    run_id = client.create_run(experiment_id).info.run_id
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TrackingError) as refused:
            client.set_tag(run_id, "a", "b")
    finally:
        holder.execute("ROLLBACK")
    message = str(refused.value)
    assert message.startswith(f"MLflow store sqlite:///{tmp_path}/mlflow.db stayed locked by "
                              "another process for over 0 s ((sqlite3.OperationalError) database "
                              "is locked)")
    assert "\n" not in message and "SELECT" not in message


def test_reconcile_fails_the_trial_of_a_run_it_marks_killed(tmp_path):
    """`mnist-lab reconcile` settles the study too: a trial whose run's process is gone would
    otherwise stay RUNNING in Optuna after its run is KILLED in MLflow."""
    import optuna

    from hydra_plugins.mnist_lab_optuna_sweeper.storages import open_storage
    from mnist_lab.liveness import settle_trials

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    done, lost = study.ask(), study.ask()
    study.tell(done, 1.0)
    client, experiment_id = connect(OmegaConf.create({"uri": f"sqlite:///{tmp_path}/mlflow.db",
                                                      "experiment": "mnist-lab"}))
    parent = client.create_run(experiment_id, tags={"optuna.storage": url}).info.run_id
    runs = [client.create_run(experiment_id, tags={
        "mlflow.parentRunId": parent, "optuna.study": "s", "optuna.trial": str(t.number)})
        .info.run_id for t in (done, lost)]
    assert settle_trials(client, runs, dry_run=True) == [("s", lost.number)]
    assert study.trials[lost.number].state.name == "RUNNING"  # a dry run changes nothing
    assert settle_trials(client, runs, dry_run=False) == [("s", lost.number)]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
