"""A stopped sweep leaves a true record: {basic, parallel} x {SIGINT, SIGTERM} x {during a job,
between jobs}. No run stays RUNNING, no worker outlives the launcher, exit 130 or 143 with one
line saying how to continue."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from mlflow import MlflowClient

from helpers import ROOT, make_dataset, tiny_overrides

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
LAUNCHERS = {"basic": ["seed=1,2"], "parallel": ["launcher=parallel", "launcher.n_jobs=2",
                                                 "seed=1,2,3"]}
# the line a job prints once its first epoch is done, and once its run is FINISHED
MOMENTS = {"during a job": "epoch   1/", "between jobs": "files: "}


class Sweep:
    """`run.py -m` in its own process group, watched: its output lines and every process it
    ever started (sampled), so the test can tell whether any outlives it."""

    def __init__(self, tmp_path, args):
        self.uri = f"sqlite:///{tmp_path}/store/mlflow.db"
        data = make_dataset(tmp_path / "data", train=1500, test=200)
        command = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(data),
                   "train.epochs=3", "plots=false", "tracking=local", f"tracking.uri={self.uri}",
                   "tracking.log_model=false", f"hydra.sweep.dir={tmp_path}/sweep", *args]
        # SIGINT at its default, as a terminal's foreground job has it (pytest may ignore it)
        self.process = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.started: dict[int, psutil.Process] = {}
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr),
                         daemon=True).start()

    def watch_children(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.started.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            self.watch_children()
            line = self.process.stdout.readline()
            seen.append(line)
            if text in line:
                return
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        raise AssertionError(f"never saw {text!r}: {''.join(seen)}{''.join(self.stderr)}")

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.watch_children()
            time.sleep(0.1)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError("the launcher did not exit after the stop signal: "
                                 + "".join(self.stderr)[-4000:])
        self.process.stdout.read()
        return self.process.returncode

    def left_behind(self) -> list[psutil.Process]:
        time.sleep(0.5)
        return [p for p in self.started.values()  # a zombie has ended, only not been reaped
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def runs(self):
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("mnist-lab")
        return client.search_runs([experiment.experiment_id])


def assert_stopped_cleanly(sweep: Sweep, signum: int) -> list:
    code = sweep.finish()
    err = "".join(sweep.stderr)
    leftovers = sweep.left_behind()
    for process in leftovers:
        process.kill()
    assert code == EXIT_STATUS[signum], err
    assert leftovers == []
    assert "Traceback" not in err, err
    hints = [line for line in err.splitlines() if "continue the sweep with" in line]
    assert len(hints) == 1 and "resume=true" in hints[0] and "-m" in hints[0], err
    assert "hydra.sweep.dir=" in hints[0] and "hydra.mode" not in hints[0]  # Hydra's own, kept
    runs = sweep.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "KILLED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}, \
        [(c.info.run_name, c.info.status) for c in children]
    return children


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_stop_signal_to_the_launcher_stops_the_sweep_on_record(tmp_path, launcher, signum,
                                                                 moment):
    sweep = Sweep(tmp_path, LAUNCHERS[launcher])
    sweep.wait_for(MOMENTS[moment])
    sweep.process.send_signal(signum)
    children = assert_stopped_cleanly(sweep, signum)
    if moment == "between jobs":  # the job that had finished stays FINISHED
        assert "FINISHED" in {c.info.status for c in children}
    else:
        assert "KILLED" in {c.info.status for c in children}


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_stops_a_parallel_sweep_on_record(tmp_path):
    """A terminal sends SIGINT to the whole foreground group: launcher and workers at once."""
    sweep = Sweep(tmp_path, LAUNCHERS["parallel"])
    sweep.wait_for(MOMENTS["during a job"])
    os.killpg(sweep.process.pid, signal.SIGINT)
    assert_stopped_cleanly(sweep, signal.SIGINT)
