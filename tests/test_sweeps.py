"""Sweeps beyond the basic launcher: parallel jobs on one SQLite store, submitit, Optuna."""

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.slow  # each test runs a sweep of run.py in a subprocess


def sweep(args, tmp_path, timeout=600):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *args, "tracking=local",
         f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children, result


def assert_complete(client, parent, children, count):
    assert len(children) == count
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.runs"] == str(count) and parent.data.tags["sweep.failed"] == "0"
    for child in children:
        assert child.info.status == "FINISHED"
        assert "test/acc" in child.data.metrics
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/loss")]
        assert sorted(steps) == [1, 2]
        assert "best.pth" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_six_parallel_jobs_on_two_workers_lose_nothing_in_one_sqlite_store(tiny_data, tmp_path):
    client, parent, children, _ = sweep(
        [*tiny_overrides(tiny_data), "launcher=parallel", "launcher.n_jobs=2",
         "optim.lr=1e-3,3e-3", "dropout.p=0.0,0.2,0.4", "tracking.log_model=false"], tmp_path)
    assert_complete(client, parent, children, 6)
    swept = {(c.data.params["optim.lr"], c.data.params["dropout.p"]) for c in children}
    assert len(swept) == 6
    # jobs x threads stays within the cores: each of the 2 workers ran cores // 2 threads
    import os

    share = str(max(1, os.cpu_count() // 2))
    assert {c.data.tags["torch.threads"] for c in children} == {share}


def test_submitit_launcher_runs_nested_jobs(tiny_data, tmp_path):
    client, parent, children, _ = sweep(
        [*tiny_overrides(tiny_data), "launcher=submitit_local", "model=ffnn,cnn",
         "tracking.log_model=false"], tmp_path)
    assert_complete(client, parent, children, 2)
    assert (tmp_path / "sweep" / ".submitit").is_dir()


def test_optuna_sweep_reports_its_best_trial(tiny_data, tmp_path):
    import optuna
    from omegaconf import OmegaConf

    client, parent, children, result = sweep(
        [*tiny_overrides(tiny_data), "experiment=optuna_cnn", "hydra.sweeper.n_trials=3",
         "data.limit=null", "train.epochs=1", "tracking.log_model=false"], tmp_path)
    assert len(children) == 3
    assert "Best value" in result.stdout
    best = min(children, key=lambda c: c.data.metrics["best/val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert len({c.data.params["optim.lr"] for c in children}) == 3
    # the study is kept beside the MLflow store, its trials tagged on their runs
    study = optuna.load_study(study_name="optuna_cnn",
                              storage=f"sqlite:///{tmp_path}/store/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1", "2"]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == study.best_value == best.data.metrics["best/val_loss"]
    assert results.best_trial == int(best.data.tags["optuna.trial"])
