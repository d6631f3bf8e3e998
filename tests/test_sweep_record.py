"""A job that fails anywhere is a FAILED run with its reason, counted by its sweep; a finished
run is not resumed twice."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import ROOT, compose_config, runs_in, store
from helpers import tracked as tracked_in_store
from mnist_lab import job, tracking
from mnist_lab.context import JobContext
from mnist_lab.data import DataError


def tracked(tiny_data, tmp_path, *extra):
    """helpers' tracked, without the model export and figures these tests don't read."""
    return tracked_in_store(tiny_data, tmp_path, "tracking.log_model=false", "plots=false", *extra)


@pytest.mark.slow
def test_a_job_failing_before_its_run_exists_is_a_failed_run_and_fails_the_sweep(tiny_data,
                                                                                  tmp_path):
    # the second job's data folder is missing: it fails after validation and before its run
    # exists; it is a FAILED child, counted, and the sweep exits 1 after its summary (an
    # exception of any kind there is recorded too: the next test)
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *tracked(tiny_data, tmp_path),
         f"data.root={tiny_data},{missing}", f"hydra.sweep.dir={tmp_path}/s"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "sweep summary: 2 runs: 1 completed, 1 failed" in result.stdout  # before the exit status
    assert "1 job of this sweep failed" in result.stderr and "Traceback" not in result.stderr
    runs = runs_in(store(tmp_path))
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true")
    children = {r.data.params["data.root"]: r for r in runs if r is not parent}
    assert children[str(tiny_data)].info.status == "FINISHED"
    failed = children[str(missing)]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "not found" in failed.data.tags["error"]
    assert parent.data.tags["sweep.failed"] == "1" and parent.data.tags["sweep.runs"] == "2"
    assert parent.info.status == "FINISHED"


def test_an_error_before_the_run_starts_is_recorded_once(tiny_data, tmp_path):
    cfg = compose_config(tracked(tiny_data, tmp_path))
    with pytest.raises(ValueError, match="broken optimizer"):
        with tracking.open_run(cfg, JobContext()):
            raise ValueError("broken optimizer")
    (run,) = runs_in(store(tmp_path))
    assert run.info.status == "FAILED" and "broken optimizer" in run.data.tags["error"]
    assert run.data.params["optim.lr"] == "0.001"  # the config it failed with
    # bad input before the run exists is refused, not recorded (a sweep records it: policy.run_job)
    with pytest.raises(DataError):
        with tracking.open_run(cfg, JobContext()):
            raise DataError("missing file")
    assert len(runs_in(store(tmp_path))) == 1


def test_resume_of_a_finished_run_says_so_and_leaves_it_alone(tiny_data, tmp_path, capsys):
    objective = job.run(compose_config(tracked(tiny_data, tmp_path,
                                               f"output_dir={tmp_path / 'out'}")))
    (run,) = runs_in(store(tmp_path))
    # a FINISHED run leaves no resumable checkpoint behind, only a note that it is complete
    folder = Path(run.data.tags["checkpoint.path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["finished.json"]
    again = job.run(compose_config(tracked(tiny_data, tmp_path, "resume=true")))
    assert again == objective
    assert "is complete (FINISHED)" in capsys.readouterr().out
    (after,) = runs_in(store(tmp_path))
    assert after.info.status == "FINISHED" and after.info.end_time == run.info.end_time
    client = MlflowClient(store(tmp_path))
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2  # one per epoch
    assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1
    assert len(client.get_metric_history(run.info.run_id, "best/epoch")) == 1
