"""A stopped sweep leaves a true record: {basic, parallel} x {SIGINT, SIGTERM} x {during a job,
between jobs}. No run stays RUNNING, no worker outlives the launcher, exit 130 or 143 with one
line saying how to continue."""

import os
import shlex
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
        self.command = command = [
            sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(data), "train.epochs=3",
            "plots=false", "tracking=local", f"tracking.uri={self.uri}", "tracking.log_model=false",
            f"hydra.sweep.dir={tmp_path}/sweep", *args]
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


def assert_stopped_cleanly(sweep: Sweep, signum: int, parent_status=("KILLED",)) -> list:
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
    assert parent.info.status in parent_status
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


# an Optuna study of 3 trials of 3 epochs, no pruning (every trial runs its epochs)
STUDY = ["experiment=optuna_cnn", "model=ffnn", "data.limit=null", "hydra/sweeper/pruner=none",
         "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1"]
STUDY_LAUNCHERS = {"basic": [], "parallel": ["launcher=parallel", "launcher.n_jobs=2",
                                              "hydra.sweeper.n_jobs=2"]}
STUDY_CASES = [(launcher, signum, moment) for launcher in STUDY_LAUNCHERS
               for signum, moment in [(signal.SIGINT, "during a job"),
                                      (signal.SIGINT, "between jobs"),
                                      (signal.SIGTERM, "during a job"),
                                      (signal.SIGTERM, "between jobs"),
                                      (signal.SIGKILL, "during a job")]]


def settled_study(tmp_path, uri: str) -> list:
    """The study's trials, once nothing is RUNNING in it or in MLflow; every trial that ran
    (not a repeat, not a retry of a lost one) with parameters of its own."""
    import optuna

    study = optuna.load_study(study_name="optuna_cnn",
                              storage=f"sqlite:///{tmp_path}/store/optuna.db")
    trials = study.get_trials()
    assert "RUNNING" not in {t.state.name for t in trials}, [t.state.name for t in trials]
    ran = [tuple(sorted(t.params.items())) for t in trials
           if not {"repeat_of", "retry_of"} & set(t.user_attrs)]
    assert len(set(ran)) == len(ran), ran
    runs = MlflowClient(uri).search_runs(["1"])
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status)
                                                            for r in runs]
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("launcher, signum, moment", STUDY_CASES,
                         ids=[f"{l}-{s.name}-{m.split()[0]}" for l, s, m in STUDY_CASES])
def test_a_stopped_study_leaves_a_true_record_and_its_command_finishes_it(tmp_path, launcher,
                                                                          signum, moment):
    """SIGINT and SIGTERM print the command that continues the study; after SIGKILL (a crash)
    the same command continues it, and the killed trial's process is known to be gone."""
    sweep = Sweep(tmp_path, [*STUDY, *STUDY_LAUNCHERS[launcher]])
    sweep.wait_for(MOMENTS[moment])
    if signum == signal.SIGKILL:
        os.killpg(sweep.process.pid, signal.SIGKILL)
        sweep.process.wait()
        again = sweep.command
    else:
        sweep.process.send_signal(signum)
        assert_stopped_cleanly(sweep, signum, parent_status={"KILLED"})
        hint = next(line for line in "".join(sweep.stderr).splitlines()
                    if "continue the sweep with" in line)
        again = shlex.split(hint.split("continue the sweep with ", 1)[1].split(" (finished")[0])
        assert again[:3] == ["python", "run.py", "-m"]
        again = [sys.executable, str(ROOT / "run.py"), *again[2:]]
    result = subprocess.run(again, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = settled_study(tmp_path, sweep.uri)
    # the budget counts the stopped trials (FAIL): what is left of it completes
    assert len(trials) >= 3 and "COMPLETE" in {t.state.name for t in trials}


@pytest.mark.slow
def test_a_worker_killed_beside_another_on_one_study_is_settled_and_repeats_nothing(tmp_path):
    first = Sweep(tmp_path, [*STUDY[:-2], "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1"])
    second = subprocess.Popen(first.command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    first.wait_for(MOMENTS["during a job"])
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    assert second.wait(timeout=600) == 0, second.stderr.read()[-2000:]
    result = subprocess.run(first.command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = settled_study(tmp_path, first.uri)
    assert len(trials) == 4 and "FAIL" in {t.state.name for t in trials}


def test_an_interrupt_lost_in_a_weakref_callback_is_recorded_without_a_traceback():
    """Python swallows an exception raised in a weakref callback (SQLAlchemy's, while MLflow
    works) and prints "Exception ignored" with a traceback; the signal is recorded instead, and
    the run stops at its epoch's end (job.stop_check). In a process of its own: pytest takes
    such exceptions over."""
    script = """
import gc, signal, weakref
from mnist_lab.stopping import stop_signals

class Mapped:
    pass

with stop_signals() as got:
    mapped = Mapped()
    ref = weakref.ref(mapped, lambda _: signal.raise_signal(signal.SIGTERM))
    del mapped
    gc.collect()
print(got, ref())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.strip() == f"[{int(signal.SIGTERM)}] None", done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
