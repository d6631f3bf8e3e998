"""resume=true in a sweep: a stopped grid continues in its own parent run and folder, finished jobs
untouched, the interrupted one from its checkpoint, and every job's metrics as if never stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import ROOT, make_dataset, run_lab, tiny_overrides
from mnist_lab import sweep, sweep_resume

EPOCHS = 3
CURVES = ("train/loss", "val/loss", "val/acc")
FINAL = ("test/acc", "test/loss", "best/val_loss", "best/epoch")


def grid(data: Path, store: Path, *extra: str) -> list[str]:
    """A 4-job grid (jobs 0-3: lr 1e-3 with p 0.0, 0.2, then lr 3e-3 with both) on fixture
    data; one torch thread per job, so basic and parallel launchers compute the same floats."""
    return [*tiny_overrides(data), "tracking=local", f"tracking.uri=sqlite:///{store}",
            "tracking.log_model=false", "plots=false", "threads=1", f"train.epochs={EPOCHS}",
            f"checkpoint.dir={store.parent}/checkpoints", "optim.lr=1e-3,3e-3",
            "dropout.p=0.0,0.2", *extra]


def sweep_runs(store: Path):
    """(client, parents, children by job number) of the store's only experiment."""
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("mnist-lab")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = {int(r.data.tags["sweep.job"]): r for r in runs if r.data.tags.get("sweep.job")}
    return client, parents, children


def history(client, run_id: str) -> dict[str, list[tuple[int, float, int]]]:
    """Every logged value of a run's curves: (step, value, timestamp), so a re-log shows."""
    return {key: sorted((m.step, m.value, m.timestamp)
                        for m in client.get_metric_history(run_id, key)) for key in CURVES}


def results(store: Path) -> dict[int, dict]:
    """Per job number: its curves' values by step and its final metrics."""
    client, _, children = sweep_runs(store)
    return {job: {**{key: [(s, v) for s, v, _ in curve]
                      for key, curve in history(client, run.info.run_id).items()},
                  **{key: run.data.metrics[key] for key in FINAL}}
            for job, run in children.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, dict]:
    """The grid run once, never stopped: what every resumed sweep must end with."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    data = make_dataset(tmp / "tiny")
    store = tmp / "store" / "mlflow.db"
    done = run_lab(["-m", *grid(data, store)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return results(store)


def kill_in_job(args: list[str], cwd: Path, epoch_lines: int) -> str:
    """Start the sweep in its own process group and SIGKILL the whole group (launcher and
    workers) once `epoch_lines` "epoch 1/N" lines have been printed; returns its output."""
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *args], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True)
    seen, lines = 0, []
    for line in process.stdout:
        lines.append(line)
        seen += f"epoch   1/{EPOCHS}" in line
        if seen == epoch_lines:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert seen == epoch_lines, "".join(lines)[-3000:]
    return "".join(lines)


def sweep_folders(cwd: Path) -> list[Path]:
    return [p.parent for p in cwd.glob("multirun/*/*/mlflow_parent_run_id")]


def resume_and_check(args: list[str], cwd: Path, store: Path, uninterrupted: dict):
    """Resume the killed sweep; check it ended whole, as one sweep, with the uninterrupted
    sweep's metrics. Returns what the store held before the resume, by job number, and what the
    resume printed."""
    client, (parent,), before = sweep_runs(store)
    assert parent.info.status != "FINISHED"
    curves = {job: history(client, run.info.run_id) for job, run in before.items()}
    (folder,) = sweep_folders(cwd)
    # a job's report is written once its run is FINISHED, so a report on disk means a finished
    # job (a job killed between the two has no report yet: the resume restores it from the run)
    outputs = {p: p.stat().st_mtime_ns for p in folder.glob("*/report.txt")}
    for report in outputs:
        assert before[int(report.parent.name)].info.status == "FINISHED", report

    resumed = run_lab(["-m", *args, "resume=true"], cwd=cwd)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    client, parents, after = sweep_runs(store)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # one sweep, reopened
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.resumes"] == "1"
    assert parent.data.tags["sweep.runs"] == "4" and parent.data.tags["sweep.failed"] == "0"
    assert sorted(after) == [0, 1, 2, 3]
    assert all(run.info.status == "FINISHED" for run in after.values())
    for job, run in before.items():
        if run.info.status == "FINISHED":  # untouched: the same run, not one new value
            assert after[job].info.run_id == run.info.run_id
            assert history(client, run.info.run_id) == curves[job]
        elif run.info.status in ("KILLED", "RUNNING") and curves[job]["val/loss"]:
            # continued in the same run from its checkpoint: its logged epochs kept as they were
            assert after[job].info.run_id == run.info.run_id
            done = len(curves[job]["val/loss"])
            assert f"continuing run {run.info.run_id}" in resumed.stdout
            for key in CURVES:
                assert history(client, run.info.run_id)[key][:done] == curves[job][key]
    assert results(store) == uninterrupted  # every job, every epoch, every final figure
    # the same folder and job numbering; no finished job's outputs written again
    assert sweep_folders(cwd) == [folder]
    assert sorted(p.name for p in folder.glob("*/report.txt") for p in [p.parent]) == \
        ["0", "1", "2", "3"]
    for report, mtime in outputs.items():
        assert report.stat().st_mtime_ns == mtime
    compare = subprocess.run([sys.executable, "-m", "mnist_lab.compare", "--last", "--uri",
                              f"sqlite:///{store}"], capture_output=True, text=True)
    assert compare.stdout.startswith(f"4 runs in sweep {parent.info.run_id}"), compare.stderr
    return before, resumed.stdout


@pytest.mark.slow
def test_a_sweep_killed_in_job_3_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    data, store = make_dataset(tmp_path / "tiny"), tmp_path / "store" / "mlflow.db"
    args = grid(data, store)
    kill_in_job(args, tmp_path, epoch_lines=3)  # job 3 (number 2) has one epoch done

    # a changed command is refused in one line, and creates nothing
    runs_before = len(MlflowClient(f"sqlite:///{store}").search_runs(["0", "1"]))
    changed = run_lab(["-m", *grid(data, store, "train.label_smoothing=0.1"), "resume=true"],
                      cwd=tmp_path)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [changed.stderr.strip()]
    assert "train.label_smoothing=0.1 is new" in changed.stderr
    assert len(MlflowClient(f"sqlite:///{store}").search_runs(["0", "1"])) == runs_before
    assert len(sweep_folders(tmp_path)) == 1

    before, output = resume_and_check(args, tmp_path, store, uninterrupted)
    assert [before[job].info.status for job in (0, 1)] == ["FINISHED", "FINISHED"]
    assert before[2].info.status in ("KILLED", "RUNNING") and 3 not in before
    assert f"job 2: continuing run {before[2].info.run_id}" in output


@pytest.mark.slow
def test_a_parallel_sweep_with_both_workers_killed_resumes(tmp_path, uninterrupted):
    data, store = make_dataset(tmp_path / "tiny"), tmp_path / "store" / "mlflow.db"
    args = grid(data, store, "launcher=parallel", "launcher.n_jobs=2")
    kill_in_job(args, tmp_path, epoch_lines=3)
    before, output = resume_and_check(args, tmp_path, store, uninterrupted)
    assert "continuing run" in output  # a killed worker's job, from its checkpoint


KILL_AFTER = """
import os, signal
job, step = os.environ.get("KILL_AFTER", ":").split(":")
if job:  # SIGKILL the sweep's process group once that job's step is done
    import mnist_lab.job as lab_job
    import mnist_lab.tracking as lab_tracking
    def die_after(done, folder_of):
        def then_die(*args, **kwargs):
            done(*args, **kwargs)
            if folder_of(*args).name == job:
                os.killpg(os.getpgid(0), signal.SIGKILL)
        return then_die
    if step == "outputs":
        lab_job.write_outputs = die_after(lab_job.write_outputs, lambda out, *_: out)
    else:  # the record: the run FINISHED, its report.txt not yet on disk
        lab_tracking.MlflowRun.finish = die_after(lab_tracking.MlflowRun.finish,
                                                  lambda run, state, test, out, *_: out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("step, status", [("outputs", "RUNNING"), ("record", "FINISHED")])
def test_a_job_killed_between_its_last_steps_resumes_whole(tmp_path, uninterrupted, step, status):
    """The window of issue 27, made exact: a worker dies after writing its job's outputs and
    before its run is FINISHED, or after that and before its report.txt. The resume redoes
    the first job's last steps (its run is not complete) and keeps the second, restoring its
    report from the run's record; nothing complete is written twice."""
    data, store = make_dataset(tmp_path / "tiny"), tmp_path / "store" / "mlflow.db"
    args = grid(data, store, "launcher=parallel", "launcher.n_jobs=2")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER)
    env = {**os.environ, "KILL_AFTER": f"1:{step}",
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, start_new_session=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    (folder,) = sweep_folders(tmp_path)
    assert (folder / "1" / "best.pth").is_file() and not (folder / "1" / "report.txt").exists()
    _, _, before = sweep_runs(store)
    assert before[1].info.status == status  # its process died first

    before, output = resume_and_check(args, tmp_path, store, uninterrupted)
    if status == "RUNNING":
        assert f"job 1: continuing run {before[1].info.run_id}" in output
    else:
        assert f"job 1: run {before[1].info.run_id} FINISHED already" in output


@pytest.mark.slow
def test_a_job_that_failed_before_the_kill_runs_again_and_succeeds(tmp_path):
    good, flaky = make_dataset(tmp_path / "good"), make_dataset(tmp_path / "flaky")
    store = tmp_path / "store" / "mlflow.db"
    # jobs 0-3: lr 1e-3 on good then flaky data, then lr 3e-3 on both; the flaky copy's images
    # are missing at first, so jobs 1 and 3 fail; the kill comes in job 2
    args = [a for a in grid(good, store) if not a.startswith(("data.root=", "dropout.p="))]
    args += [f"data.root={good},{flaky}"]
    images = flaky / "train-images-idx3-ubyte.gz"
    images.rename(flaky / "hidden.gz")
    output = kill_in_job(args, tmp_path, epoch_lines=2)
    assert "job failed" in output
    client, _, before = sweep_runs(store)
    assert before[1].info.status == "FAILED" and 3 not in before
    (flaky / "hidden.gz").rename(images)

    # another launcher is still the same sweep: it changes where jobs run, not what they compute
    resumed = run_lab(["-m", *args, "launcher=parallel", "launcher.n_jobs=2", "resume=true"],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, (parent,), after = sweep_runs(store)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed"] == "0"
    assert all(run.info.status == "FINISHED" for run in after.values()) and len(after) == 4
    assert after[0].info.run_id == before[0].info.run_id
    assert after[2].info.run_id == before[2].info.run_id  # continued
    assert after[1].info.run_id != before[1].info.run_id  # afresh, the failed run to the trash
    assert client.get_run(before[1].info.run_id).info.lifecycle_stage == "deleted"
    # the same data under another name: the retried jobs compute what their twins did
    got = results(store)
    assert got[1] == got[0] and got[3] == got[2]


def multirun_config(overrides: list[str]):
    """The config a sweep's callback gets: composed in MULTIRUN mode, Hydra's node included."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return GlobalHydra.instance().hydra.compose_config(
            "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False)


def test_a_sweep_is_known_by_what_its_jobs_compute():
    def key(*overrides):
        return sweep_resume.sweep_key(multirun_config(list(overrides)))

    base = key("optim.lr=1e-3,1e-4", "dropout.p=0.0,0.2")
    # where it runs, how it is tracked and resume itself don't change what the jobs compute
    assert key("optim.lr=1e-3,1e-4", "dropout.p=0.0,0.2", "launcher=parallel", "resume=true",
               "tracking.uri=sqlite:///elsewhere.db", "threads=1",
               "output_dir=/elsewhere") == base
    assert key("optim.lr=1e-3,1e-5", "dropout.p=0.0,0.2") != base  # other swept values
    assert key("optim.lr=1e-3,1e-4", "dropout.p=0.0,0.2", "train.epochs=3") != base
    assert key("dropout.p=0.0,0.2", "optim.lr=1e-3,1e-4") != base  # renumbers the jobs
    assert key("experiment=lr_dropout") != key("experiment=seeds")


@pytest.mark.slow
def test_resume_finds_the_sweep_it_names_and_refuses_any_other(tmp_path):
    """find_sweep on a store holding parents only (no training): the callback's choice."""
    from mnist_lab.errors import ConfigError

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("mnist-lab")
    swept = ["optim.lr=1e-3,1e-4", "dropout.p=0.0,0.2"]

    def parent(status, overrides=swept, **tags):
        made = multirun_config(overrides)
        run = client.create_run(experiment, tags={
            "sweep": "true", "sweep.dir": str(tmp_path / "s"), "hydra.overrides": " ".join(
                overrides), **sweep_resume.new_sweep_tags(made), **tags})
        client.set_terminated(run.info.run_id, status)
        time.sleep(0.01)  # newest first goes by start time, in milliseconds
        return run.info.run_id

    other = parent("KILLED", ["optim.lr=1e-3,1e-5", "dropout.p=0.0,0.2"])
    resume = multirun_config([*swept, "resume=true"])
    with pytest.raises(ConfigError, match=f"the latest one \\({other}\\) differs: "
                       r"optim.lr=1e-3,1e-5 is now optim.lr=1e-3,1e-4$"):
        sweep_resume.find_sweep(client, experiment, resume)
    done = parent("FINISHED", **{"sweep.failed": "0"})
    with pytest.raises(sweep_resume.NothingToResume, match=done):
        sweep_resume.find_sweep(client, experiment, resume)
    killed = parent("KILLED")
    assert sweep_resume.find_sweep(client, experiment, resume).info.run_id == killed
    with_failures = parent("FINISHED", **{"sweep.failed": "1"})  # unfinished: a job failed
    assert sweep_resume.find_sweep(client, experiment, resume).info.run_id == with_failures

    named = multirun_config([*swept, f"resume={killed}"])
    assert sweep_resume.find_sweep(client, experiment, named).info.run_id == killed
    with pytest.raises(sweep_resume.NothingToResume, match=f"sweep {done} finished"):
        sweep_resume.find_sweep(client, experiment, multirun_config([*swept, f"resume={done}"]))
    with pytest.raises(ConfigError, match=f"resume={other}: that sweep ran another configuration"):
        sweep_resume.find_sweep(client, experiment, multirun_config([*swept, f"resume={other}"]))
    single = client.create_run(experiment).info.run_id
    with pytest.raises(ConfigError, match="that run is not a sweep's parent"):
        sweep_resume.find_sweep(client, experiment, multirun_config([*swept, f"resume={single}"]))

    from mnist_lab.liveness import process_tags

    alive = parent("FINISHED", **process_tags())
    client.update_run(alive, status="RUNNING")  # this test's own process runs it
    with pytest.raises(ConfigError, match=f"sweep {alive} is still running \\(process "
                       f"{os.getpid()} on "):
        sweep_resume.find_sweep(client, experiment, resume)
    client.set_terminated(alive, "KILLED")

    sweep.reopen(client, client.get_run(killed), named)
    assert named.hydra.sweep.dir == str(tmp_path / "s")
    assert named.hydra.overrides.hydra[-1] == f'hydra.sweep.dir="{tmp_path / "s"}"'
    assert client.get_run(killed).data.tags["sweep.resumes"] == "1"
    assert client.get_run(killed).info.status == "RUNNING"
    # the resumed sweep is now the newest: compare --last, and the next resume=true, take it
    from mnist_lab.compare import find_runs

    assert find_runs(client, "mnist-lab", None, last=True)[1] == f"sweep {killed}"
    client.set_terminated(killed, "KILLED")  # stopped again
    assert sweep_resume.find_sweep(client, experiment, resume).info.run_id == killed


@pytest.mark.slow
def test_an_optuna_sweep_resumes_its_own_study_under_its_one_parent(tmp_path):
    """A study per sweep folder (no study_name): resume=true finds the folder, so the study
    goes on toward n_trials in total under the same parent, the lost trial tried again."""
    import optuna

    store = tmp_path / "store"
    args = [*tiny_overrides(make_dataset(tmp_path / "tiny")), "experiment=optuna_cnn",
            "model=ffnn", "data.limit=null", "plots=false", "tracking=local",
            f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.log_model=false",
            f"train.epochs={EPOCHS}", "hydra.sweeper.study_name=null", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    kill_in_job(args, tmp_path, epoch_lines=2)  # trial 1 has one epoch done
    time.sleep(4)  # past grace_period: the killed trial is stale

    resumed = run_lab(["-m", *args, "resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    (folder,) = sweep_folders(tmp_path)
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{store}/optuna.db")
    assert summary.study_name == f"sweep:{folder.relative_to(tmp_path)}"
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{store}/optuna.db")
    trials = study.trials
    assert [t.state.name for t in trials][1] == "FAIL" and len(trials) == 3
    assert trials[2].params == trials[1].params  # the lost trial's configuration, tried again
    assert trials[2].state.name in ("COMPLETE", "PRUNED")
    client, (parent,), runs = sweep_runs(store / "mlflow.db")
    assert "trying again trial 1 " in resumed.stdout, resumed.stdout[-3000:]
    assert sorted(runs) == [0, 2], [(r.info.status, r.data.tags) for r in runs.values()]
    assert parent.data.tags["sweep.resumes"] == "1" and parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.failed"] == "0"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
