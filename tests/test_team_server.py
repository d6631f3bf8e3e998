"""A team's setup for real: PostgreSQL + `mlflow server` with proxied artifacts, on 127.0.0.1.

Needs PostgreSQL's server binaries (Debian: `apt-get install postgresql`, which .ci/run does).
Where they are missing the test skips, except under CI, where it fails.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from helpers import ROOT, free_port, tiny_overrides

@pytest.fixture
def team_server(postgres, tmp_path):
    backend, _ = postgres
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "2"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("mlflow server did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.5)
        yield url, tmp_path / "artifacts"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _healthy(url):
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_parallel_sweep_against_postgres_backed_server(tiny_data, tmp_path, team_server):
    url, artifact_root = team_server
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(tiny_data), "tracking=server",
         f"tracking.uri={url}", "launcher=parallel", "launcher.n_jobs=2", "model=ffnn,cnn",
         f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    api = f"{url}/api/2.0/mlflow"
    experiment = requests.get(f"{api}/experiments/get-by-name",
                              params={"experiment_name": "mnist-lab"}).json()["experiment"]
    runs = requests.post(f"{api}/runs/search",
                         json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("sweep") == "true"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    client = MlflowClient(url)
    for child in children:
        run_id = child["info"]["run_id"]
        history = client.get_metric_history(run_id, "val/loss")
        assert sorted(m.step for m in history) == [1, 2]
        local = client.download_artifacts(run_id, "best.pth", str(tmp_path))
        assert Path(local).stat().st_size > 1000
    assert {"sweep_summary.csv", "sweep_val_loss.png"} <= {
        a.path for a in client.list_artifacts(parent_id)}
    # artifacts went through the server to its own store, not to the client's folders
    assert any(artifact_root.rglob("best.pth"))
