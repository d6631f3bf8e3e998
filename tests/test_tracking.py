import csv
import math
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import mlflow
import pytest
import requests
import torch
from mlflow import MlflowClient

from helpers import compose_config, free_port, run_lab, tiny_overrides
from mnist_lab import job
from mnist_lab.queries import swept_keys
from mnist_lab.summary import seed_spread
from mnist_lab.data import load_mnist
from mnist_lab.evaluate import evaluate
from mnist_lab.stats import PREDICTIONS, read_predictions
from mnist_lab.identity import run_name
from mnist_lab.errors import TrackingError

EPOCH_METRICS = {"train/loss", "val/loss", "val/acc", "lr", "epoch_seconds", "samples_per_second",
                 "val_seconds"}
FINAL_METRICS = {"test/loss", "test/acc", "test_seconds", "best/epoch", "best/val_loss",
                 *(f"test/acc_class_{d}" for d in range(10))}
ARTIFACTS = {"config.yaml", "best.pth", "per_class.csv", "per_class.md", "report.txt",
             "loss_curves.png", "class_accuracy.png", "confusion_matrix.png",
             "test_predictions.png", "confident_mistakes.png", "test_predictions.csv"}


def store_overrides(tiny_data, tmp_path):
    return [*tiny_overrides(tiny_data), "tracking=local",
            f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db"]


def only_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    return client, runs


@pytest.mark.slow
def test_a_run_is_fully_recorded(tiny_data, tmp_path):
    # tracking.log_model as by default: a single run logs its model at its end
    cfg = compose_config([*store_overrides(tiny_data, tmp_path), "model=cnn", "train.epochs=3",
                          f"output_dir={tmp_path / 'out'}"])
    job.run(cfg)
    uri = cfg.tracking.uri
    client, runs = only_run(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "cnn-adam-lr0.001-p0.2"
    params = run.data.params
    assert params["optim.lr"] == "0.001" and params["dropout.p"] == "0.2"
    assert params["model.name"] == "cnn" and params["model.parameters"] == "942026"
    assert params["train.epochs"] == "3" and params["init.name"] == "normal"
    assert EPOCH_METRICS | FINAL_METRICS <= set(run.data.metrics)
    for name in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == [1, 2, 3], name
    tags = run.data.tags
    for tag in ("git.commit", "git.dirty", "torch", "torchvision", "python", "device", "host",
                "data.sha256.train-images-idx3-ubyte", "hydra.overrides"):
        assert tags.get(tag), tag
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= artifacts
    assert str(tmp_path / "store" / "artifacts") in run.info.artifact_uri
    # what the runs table shows: the split as the run's dataset, and a one-line description
    (split,) = run.inputs.dataset_inputs
    assert split.dataset.name == "mnist 500/100" and split.dataset.source_type == "local"
    assert tags["mlflow.note.content"] == (
        f"cnn, adam lr 0.001, dropout 0.2: test accuracy {run.data.metrics['test/acc']:.2%}, "
        f"best val/loss {run.data.metrics['best/val_loss']:.4f} at epoch "
        f"{run.data.metrics['best/epoch']:.0f}")

    # best.pth and the logged model predict like the in-memory model would
    data = load_mnist(tiny_data, 100, 0, verify=False)
    local = client.download_artifacts(run.info.run_id, "best.pth", str(tmp_path))
    model = job.build_model(cfg)
    model.load_state_dict(torch.load(local, weights_only=True))
    result = evaluate(model, data.test_images, data.test_labels)
    assert result.accuracy == pytest.approx(run.data.metrics["test/acc"])
    kept = client.download_artifacts(run.info.run_id, PREDICTIONS, str(tmp_path))
    labels, predictions = read_predictions(kept)  # the run's own predictions, image by image
    assert torch.equal(torch.from_numpy(labels), data.test_labels)
    assert torch.equal(torch.from_numpy(predictions), result.predictions)
    mlflow.set_tracking_uri(uri)
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model().net
    x = data.test_images[:37].unsqueeze(1).float() / 255
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(logged(x), model(x), atol=1e-5)


def test_tracking_off_touches_no_store(tiny_data, tmp_path):
    overrides = [*store_overrides(tiny_data, tmp_path), "tracking.enabled=false",
                 f"output_dir={tmp_path / 'out'}"]
    job.run(compose_config(overrides))
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_an_experiment_deleted_in_the_ui_is_restored_for_the_next_run(tiny_data, tmp_path,
                                                                       capsys):
    overrides = [*store_overrides(tiny_data, tmp_path), "plots=false", "tracking.log_model=false"]
    job.run(compose_config([*overrides, f"output_dir={tmp_path / 'a'}"]))
    client, (first,) = only_run(f"sqlite:///{tmp_path}/store/mlflow.db")
    client.delete_experiment(first.info.experiment_id)  # the UI's "Delete"
    capsys.readouterr()
    job.run(compose_config([*overrides, "seed=1", f"output_dir={tmp_path / 'b'}"]))
    assert "MLflow experiment 'mnist-lab' was deleted; restored it (with its runs) to record " \
           "this run" in capsys.readouterr().out
    _, runs = only_run(f"sqlite:///{tmp_path}/store/mlflow.db")
    assert client.get_experiment(first.info.experiment_id).lifecycle_stage == "active"
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_unreachable_server_fails_before_any_work(tiny_data, tmp_path):
    result = run_lab([*tiny_overrides(tiny_data), "tracking=server",
                      f"tracking.uri=http://127.0.0.1:{free_port()}", f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "tracking=off" in result.stderr
    assert "epoch" not in result.stdout
    with pytest.raises(TrackingError, match="is not a URI"):
        job.run(compose_config([*tiny_overrides(tiny_data), "tracking=local",
                                "tracking.uri=just-a-name", f"output_dir={tmp_path / 'out'}"]))


def test_a_store_that_cannot_open_fails_before_training(tiny_data, tmp_path):
    # a corrupt SQLite file: one line naming the store, exit status 2, before any training
    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"this is not an SQLite database" * 100)
    result = run_lab([*tiny_overrides(tiny_data), "tracking=local", f"tracking.uri=sqlite:///{bad}",
                      f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 2, result.stderr
    assert f"MLflow store sqlite:///{bad} is not an SQLite database" in result.stderr
    assert "epoch" not in result.stdout
    assert bad.read_bytes().startswith(b"this is not")  # left as it was


def test_a_failing_run_ends_failed_with_the_error(tiny_data, tmp_path, monkeypatch):

    def explode(*args, **kwargs):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(job, "fit", explode)
    cfg = compose_config([*store_overrides(tiny_data, tmp_path), f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(RuntimeError):
        job.run(cfg)
    _, runs = only_run(cfg.tracking.uri)
    assert runs[0].info.status == "FAILED"
    assert "boom in training" in runs[0].data.tags["error"]


@pytest.mark.slow
def test_a_sweep_nests_its_runs_under_one_parent_with_a_summary(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = run_lab(["-m", *store_overrides(tiny_data, tmp_path), "model=ffnn,cnn",
                      f"hydra.sweep.dir={tmp_path}/sweep"])
    assert result.returncode == 0, result.stderr
    client, runs = only_run(uri)
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.params["model.name"] for c in children} == {"ffnn", "cnn"}
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "model (2 runs)"  # what the sweep varies
    assert "job 1 of 2, 0:0" in result.stdout and "job 2 of 2, " in result.stdout
    assert parent.data.tags["mlflow.note.content"].startswith("2 runs, 2 completed; best")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md", "sweep_val_loss.png"} <= artifacts
    best = min(children, key=lambda c: c.data.metrics["best/val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert f"best (the lowest val/loss): {best.info.run_name}" in result.stdout
    assert f"mnist-lab compare --parent {parent.info.run_id}" in result.stdout
    assert parent.data.metrics["best/epoch"] == best.data.metrics["best/epoch"]
    assert parent.data.metrics["best/test_acc"] == best.data.metrics["test/acc"]
    # one model export per sweep: its best run's, at the end, its status and end time kept
    other = next(c for c in children if c is not best)
    assert not other.outputs.model_outputs
    exported = client.get_run(best.info.run_id)
    assert exported.outputs.model_outputs
    assert (exported.info.status, exported.info.end_time) == (best.info.status, best.info.end_time)
    # the swept value comes first in a child's name; the params are the user's knobs only
    assert sorted(c.info.run_name.split("-p0.2-")[0] for c in children) == ["cnn-adam-lr0.001",
                                                                           "ffnn-adam-lr0.001"]
    assert not [k for c in children for k in c.data.params
                if "_target_" in k or "_partial_" in k or k.startswith("tracking.")]
    summary = client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path))
    text = open(summary).read()
    assert "model.name" in text and "ffnn" in text and "cnn" in text

    compare = subprocess.run([sys.executable, "-m", "mnist_lab.compare", "--last", "--uri", uri,
                              "--output", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr
    lines = compare.stdout.splitlines()
    assert lines[0].startswith("2 runs in sweep")
    rows = lines[2:4]
    assert {row.split()[1] for row in rows} == {"ffnn", "cnn"}
    accuracies = [c.data.metrics["test/acc"] for c in children]
    assert rows[0].split()[1] == children[accuracies.index(max(accuracies))].data.params["model.name"]
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    assert (tmp_path / "cmp" / "compare_val_loss.png").is_file()


@pytest.mark.slow
def test_a_seed_sweep_puts_the_spread_of_test_accuracy_on_its_parent(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    # the experiment sweeps both models over ten seeds; the command line narrows both lists
    result = run_lab(["experiment=seeds", "model=cnn", "seed=0,1,2",
                      *store_overrides(tiny_data, tmp_path), "data.val_size=300",
                      "train.epochs=1", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert result.returncode == 0, result.stderr
    client, runs = only_run(uri)
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2"]
    assert {c.data.params["model.name"] for c in children} == {"cnn"}
    accuracies = [c.data.metrics["test/acc"] for c in children]
    assert parent.data.metrics["test/acc_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert parent.data.metrics["test/acc_std"] == pytest.approx(statistics.stdev(accuracies),
                                                                abs=1e-6)
    assert parent.data.metrics["test/acc_min"] == min(accuracies)
    assert parent.data.metrics["test/acc_max"] == max(accuracies)
    assert "test/acc over 3 seeds: mean" in result.stdout
    summary = client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path))
    rows = list(csv.DictReader(open(summary)))
    assert sorted(row["seed"] for row in rows) == ["0", "1", "2"]
    spread = client.download_artifacts(parent.info.run_id, "sweep_seed_spread.csv",
                                       str(tmp_path))
    (row,) = csv.DictReader(open(spread))
    assert row["seeds"] == "3"


def test_seed_spread_is_grouped_by_the_other_swept_keys():
    def run(model, seed, acc):
        data = SimpleNamespace(params={"model.name": model, "seed": str(seed)},
                               metrics={"test/acc": acc},
                               tags={"hydra.overrides": f"model={model} seed={seed}"})
        return SimpleNamespace(info=SimpleNamespace(status="FINISHED"), data=data)

    runs = [run("ffnn", 0, 0.97), run("ffnn", 1, 0.98), run("cnn", 0, 0.99), run("cnn", 1, 0.995)]
    swept = swept_keys(runs)
    assert swept == ["model.name", "seed"]
    rows = {row["model.name"]: row for row in seed_spread(runs, swept)}
    assert rows["ffnn"]["test/acc_mean"] == pytest.approx(0.975)
    assert rows["cnn"]["test/acc_std"] == pytest.approx(statistics.stdev([0.99, 0.995]), abs=1e-6)
    assert rows["cnn"]["seeds"] == 2
    assert seed_spread(runs[:1] + runs[2:3], ["model.name"]) == []
    (single,) = seed_spread(runs[:1], ["seed"])  # one finished seed: no spread to speak of
    assert single["seeds"] == 1 and math.isnan(single["test/acc_std"])


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up in 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_run_logged_through_a_real_server_reads_back_over_rest(tiny_data, tmp_path,
                                                                  mlflow_server):
    result = run_lab([*tiny_overrides(tiny_data), "tracking=server",
                      f"tracking.uri={mlflow_server}", f"hydra.run.dir={tmp_path}/o"])
    assert result.returncode == 0, result.stderr
    api = f"{mlflow_server}/api/2.0/mlflow"
    experiment = requests.get(f"{api}/experiments/get-by-name",
                              params={"experiment_name": "mnist-lab"}).json()["experiment"]
    runs = requests.post(f"{api}/runs/search",
                         json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert 0 <= metrics["test/acc"] <= 1 and "val/loss" in metrics
    history = requests.get(f"{api}/metrics/get-history",
                           params={"run_id": run["info"]["run_id"], "metric_key": "val/loss"})
    assert len(history.json()["metrics"]) == 2
    files = requests.get(f"{api}/artifacts/list", params={"run_id": run["info"]["run_id"]})
    assert "best.pth" in {f["path"] for f in files.json()["files"]}


def test_run_names_start_with_the_values_the_run_was_given():
    cfg = compose_config(["model=cnn", "optim.lr=3e-3", "init=xavier", "sched=none", "seed=3"])
    assert run_name(cfg, []) == "cnn-adam-lr0.003-p0.2"
    assert run_name(cfg, ["seed=3", "init=xavier", "sched=none", "tracking.uri=sqlite:///x.db"]) \
        == "seed3-xavier-no-sched-cnn-adam-lr0.003-p0.2"
    # a sweep's children: what the sweep varied first, what it fixed for all of them last
    fixed = ["train.epochs=5", "data.limit=600"]
    names = [run_name(compose_config(["model=cnn", f"optim.lr={lr}"]),
                      [*fixed, "model=cnn", f"optim.lr={lr}"],
                      fixed_keys={"train.epochs", "data.limit"}) for lr in ("1e-3", "3e-3")]
    assert names[1] == "cnn-lr0.003-adam-p0.2-epochs5-limit600"
    assert names[0][:12] != names[1][:12]
