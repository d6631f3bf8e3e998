"""The lab's Optuna sweeper: Hydra's search syntax, pruning end to end, and one study shared by
several processes (PostgreSQL), killed and continued."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from helpers import ROOT, compose_config, run_lab, tiny_overrides
from hydra_plugins.mnist_lab_optuna_sweeper import search_space

TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


def test_search_space_reads_hydra_sweep_syntax():
    space, fixed = search_space.parse([
        "optim.lr=tag(log, interval(1e-4, 1e-2))", "dropout.p=interval(0, 0.5)",
        "train.batch_size=choice(32, 64, 128)", "train.epochs=range(2, 8, 2)",
        "data.limit=int(interval(100, 200))", "model=cnn", "+x=1", "train.epochs=3"])
    assert space == {
        "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "dropout.p": FloatDistribution(0.0, 0.5),
        "train.batch_size": CategoricalDistribution([32, 64, 128]),
        "data.limit": IntDistribution(100, 200)}
    # the later fixed train.epochs replaces the range, as on Hydra's command line
    assert fixed == ["model=cnn", "+x=1", "train.epochs=3"]
    grid, _ = search_space.parse(["train.epochs=range(2, 8, 2)"])
    # as Hydra's Optuna sweeper reads range: both ends in (Hydra's basic sweeper: 2, 4, 6)
    assert grid["train.epochs"] == IntDistribution(2, 8, step=2)
    assert search_space.as_override("a", "b c") == "a='b c'"
    assert search_space.as_override("a", 0.5) == "a=0.5"
    channels = search_space.parse(["model.channels=choice([8,16],[16,32])"])[0]["model.channels"]
    assert [search_space.as_override("model.channels", c) for c in channels.choices] == [
        "model.channels=[8,16]", "model.channels=[16,32]"]  # lists, not texts


def test_the_pruning_callback_reports_each_epoch_and_stops_when_told():
    import pickle
    from types import SimpleNamespace

    from mnist_lab.errors import TrialPruned
    from mnist_lab.pruning import ReportToTrial

    # prune any trial whose value is above 1.0 from epoch 2 on
    pruner = optuna.pruners.ThresholdPruner(upper=1.0, n_warmup_steps=2)
    study = optuna.create_study(pruner=pruner)
    hook = ReportToTrial(study.ask(), epochs=4)
    hook(SimpleNamespace(epoch=1), {"val/loss": 2.0})  # warm-up: reported, not pruned
    hook(SimpleNamespace(epoch=2), {"val/loss": 0.5})
    with pytest.raises(TrialPruned) as stopped:
        hook(SimpleNamespace(epoch=3), {"val/loss": 1.5})
    assert stopped.value.epoch == 3
    assert study.trials[0].intermediate_values == {1: 2.0, 2: 0.5, 3: 1.5}
    assert hook.tags == {"optuna.study": study.study_name, "optuna.trial": "0"}
    # the last epoch is reported and never pruned: the whole trial is trained by then
    last = ReportToTrial(study.ask(), epochs=3)
    for epoch, loss in ((1, 2.0), (2, 0.5), (3, 1.5)):  # 1.5 at epoch 3 pruned the first
        last(SimpleNamespace(epoch=epoch), {"val/loss": loss})
    assert study.trials[1].intermediate_values == {1: 2.0, 2: 0.5, 3: 1.5}
    # it travels back from joblib and submitit workers inside the JobReturn
    assert pickle.loads(pickle.dumps(stopped.value)).epoch == 3


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_on_the_studys_parent(tiny_data, tmp_path):
    """experiment=cnn_pareto: run.py returns (val/loss, parameters); the sweep folder lists the
    Pareto front and the MLflow parent draws it."""
    command = optuna_sweep(tiny_data, tmp_path, "hydra.sweeper.n_trials=4", "train.epochs=1")
    command[command.index("experiment=optuna_cnn")] = "experiment=cnn_pareto"
    command.remove("model=ffnn")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="cnn_pareto",
                              storage=f"sqlite:///{tmp_path}/store/optuna.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    front = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").solutions
    assert sorted(s.trial for s in front) == sorted(t.number for t in study.best_trials)
    for trial in study.trials:
        if "repeat_of" in trial.user_attrs:  # a small space: a repeated proposal never ran
            trial = study.trials[trial.user_attrs["repeat_of"]]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.values == [pytest.approx(run.data.metrics["best/val_loss"]),
                                float(run.data.params["model.parameters"])]
    assert study.metric_names == ["best val/loss", "parameters"]
    parent = client.get_run(client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
                            .data.tags["mlflow.parentRunId"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "study")] == [
        "study/pareto_front.png"]


@pytest.mark.slow
def test_bad_sweeper_value_stops_with_one_line_and_no_run(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = run_lab([*tiny_overrides(tiny_data), "experiment=optuna_cnn", "tracking=local",
                      f"tracking.uri={uri}", "hydra.sweeper.n_trials=0",
                      f"hydra.sweep.dir={tmp_path}/sweep"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hydra.sweeper.n_trials=0 is not allowed: at least 1" in result.stderr
    two = run_lab([*tiny_overrides(tiny_data), "experiment=cnn_pareto", "objectives=[val/loss]",
                   "tracking=local", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert two.returncode == 2 and two.stderr.count("\n") == 1
    assert "one direction per objective (objectives=['val/loss'])" in two.stderr
    assert not (tmp_path / "store" / "optuna.db").exists()
    assert not (tmp_path / "store" / "mlflow.db").exists()


def optuna_sweep(data, tmp_path, *extra):
    """The command line of an Optuna sweep on fixture data, its stores under tmp_path."""
    return [sys.executable, str(ROOT / "run.py"), *tiny_overrides(data), "experiment=optuna_cnn",
            "model=ffnn", "data.limit=null", "plots=false", "tracking=local",
            f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db", "tracking.log_model=false",
            f"hydra.sweep.dir={tmp_path}/sweep", *extra]


def load(tmp_path, storage=None):
    """(the Optuna study, MLflow client, the sweep parents, the trial runs by trial number)."""
    storage = storage or f"sqlite:///{tmp_path}/store/optuna.db"
    study = optuna.load_study(study_name="optuna_cnn", storage=storage)
    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    trials = {}
    for run in runs:
        if "optuna.trial" in run.data.tags:
            assert int(run.data.tags["optuna.trial"]) not in trials, "a trial ran twice"
            trials[int(run.data.tags["optuna.trial"])] = run
    return study, client, parents, trials


@pytest.mark.slow
def test_pruning_stops_bad_trials_and_mlflow_agrees_with_optuna(tiny_data, tmp_path):
    # learning rates up to 10 stall far above the good trials' loss (the divergence bound is
    # raised so that they are left to the pruner): the median of the earlier trials prunes them
    result = subprocess.run(
        optuna_sweep(tiny_data, tmp_path, "train.epochs=3", "hydra.sweeper.n_trials=6",
                     "optim.lr=tag(log, interval(1e-3, 10.0))", "hydra/sweeper/sampler=random",
                     "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
                     "train.divergence_loss=1e30"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study, client, parents, runs = load(tmp_path)  # the default storage: beside mlflow.db
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states) == sorted(runs) == list(range(6))
    assert "PRUNED" in states.values() and "COMPLETE" in states.values()
    for trial in study.trials:
        run = runs[trial.number]
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss"))
        assert run.info.status == "FINISHED"
        assert run.data.params["optim.lr"] == str(trial.params["optim.lr"])
        assert sorted(trial.intermediate_values) == epochs  # every epoch was reported
        if trial.state.name == "PRUNED":
            assert run.data.tags["pruned"] == "true"
            assert run.data.tags["pruned_epoch"] == str(max(epochs)) and max(epochs) < 3
            assert "test/acc" not in run.data.metrics
        else:
            assert "pruned" not in run.data.tags and epochs == [1, 2, 3]
            assert trial.value == pytest.approx(run.data.metrics["best/val_loss"])
    [parent] = parents
    counts = list(states.values())
    assert parent.info.status == "FINISHED" and parent.info.run_name == "study optuna_cnn"
    # a trial's name starts with the values searched, before what the command line fixed
    for trial in study.trials:
        searched = {f"lr{trial.params['optim.lr']:g}", f"p{trial.params['dropout.p']:g}"}
        assert set(runs[trial.number].info.run_name.split("-")[:2]) == searched
    assert parent.data.tags["sweep.pruned"] == str(counts.count("PRUNED"))
    assert parent.data.tags["sweep.completed"] == str(counts.count("COMPLETE"))
    assert parent.data.tags["sweep.failed"] == "0"
    assert f"{counts.count('PRUNED')} pruned" in result.stdout
    # compare lists every trial with its state and the lowest val/loss it reached
    table = subprocess.run([sys.executable, "-m", "mnist_lab.compare", "--parent",
                            parent.info.run_id, "--uri", f"sqlite:///{tmp_path}/store/mlflow.db",
                            "--sort", "run"], capture_output=True, text=True).stdout
    for trial in study.trials:
        row = next(line for line in table.splitlines() if runs[trial.number].info.run_name[:20]
                   in line)
        lowest = min(trial.intermediate_values.values())
        assert f"{lowest:.4g}" in row  # as the table rounds it
        if trial.state.name == "PRUNED":
            assert f"PRUNED (epoch {max(trial.intermediate_values)})" in row
    # the study on its parent, and each trial pointing at its run
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        r.info.run_id for r in runs.values()}
    assert study.metric_names == ["best val/loss"]
    importances = {k: v for k, v in parent.data.metrics.items() if k.startswith("importance/")}
    # the searched keys (the fixture's train.batch_size is fixed, so not searched)
    assert set(importances) == {"importance/optim.lr", "importance/dropout.p"}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} == {
        f"study/{name}.png" for name in ("optimization_history", "parallel_coordinates",
                                         "param_importances", "slice")}


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_and_one_parent(
        tiny_data, tmp_path, postgres):  # noqa: F811  (the fixture imported above)
    url, _ = postgres
    command = optuna_sweep(tiny_data, tmp_path, "hydra.sweeper.n_trials=5",
                           f"hydra.sweeper.storage={url}")
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    study, client, parents, runs = load(tmp_path, url)
    assert [t.number for t in study.trials] == list(range(5))  # the budget, each trial once
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert sorted(runs) == list(range(5))
    [parent] = parents
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert parent.info.status == "FINISHED", outputs[0][-2500:] + outputs[1][-2500:]
    assert parent.data.tags["sweep.runs"] == "5"
    # between them the two processes launched the budget once (alone, each would run 5)
    assert sum(out.count("Launching 1 jobs") for out in outputs) == 5


def trial_progress(db) -> list[tuple[str, int]]:
    """(state, epochs reported) per trial, read-only: opening Optuna's storage while the worker
    creates it would race it to create the tables."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute(
                "SELECT state, (SELECT COUNT(*) FROM trial_intermediate_values v "
                "WHERE v.trial_id = t.trial_id) FROM trials t ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # no database or no tables yet
        return []


@pytest.mark.slow
@pytest.mark.parametrize("grace_period, wait", [(3, 4), (120, 0)])
def test_a_killed_worker_is_continued_by_the_same_command(tiny_data, tmp_path, grace_period,
                                                          wait):
    """Past the grace period the lost trial is stale; within it, its process is known to be
    gone on this machine (it used to stay RUNNING for good, and its parent with it)."""
    # 12 epochs: trial 1 is killed after its first, far from its end however loaded the machine
    command = optuna_sweep(tiny_data, tmp_path, "train.epochs=12", "hydra.sweeper.n_trials=3",
                           "hydra.sweeper.heartbeat_interval=1",
                           f"hydra.sweeper.grace_period={grace_period}")
    log = tmp_path / "first.log"
    worker = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    storage = f"sqlite:///{tmp_path}/store/optuna.db"
    deadline = time.monotonic() + 300
    while True:  # wait until trial 1 is mid-training, then kill its process outright
        assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
        trials = trial_progress(tmp_path / "store" / "optuna.db")
        if len(trials) == 2 and trials[1][1]:
            assert trials[1][0] == "RUNNING"
            break
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(wait)  # past grace_period, the killed trial is stale; within it, its process gone

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study, client, parents, runs = load(tmp_path)
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and states[1] == "FAIL", again.stdout[-3000:]  # lost, counted once
    assert states[0] in TRIAL_STATES[:2] and states[2] in TRIAL_STATES[:2]
    assert sorted(runs) == [0, 1, 2]
    # its process is gone: KILLED in MLflow (interrupted, as liveness marks any such run),
    # which does not fail the command that continued the study
    assert runs[1].info.status == "KILLED" and "killed_because" in runs[1].data.tags
    [parent] = parents
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed"] == "0"
    assert parent.data.tags["sweep.killed"] == "1"
    # a third start finds the budget spent and leaves at once
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "Launching" not in third.stdout
    after = client.get_run(parent.info.run_id)  # the FINISHED parent is left as it was
    assert (after.info.status, after.info.end_time) == ("FINISHED", parent.info.end_time)
    assert len(optuna.load_study(study_name="optuna_cnn", storage=storage).trials) == 3


@pytest.mark.slow
def test_dashboard_serves_the_study_storage(tmp_path):
    from helpers import free_port

    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="optuna_cnn", storage=storage).enqueue_trial({"x": 1.0})
    port = free_port()
    board = subprocess.Popen([sys.executable, "-m", "mnist_lab.cli", "dashboard", "--storage",
                              storage, "--port", str(port)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            assert board.poll() is None and time.monotonic() < deadline
            try:
                studies = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["optuna_cnn"]
    finally:
        board.terminate()
        board.wait(timeout=30)


@pytest.mark.parametrize("pruner", ["none", "median", "percentile", "successive_halving",
                                    "hyperband"])
def test_optuna_cnn_takes_every_pruner(pruner):
    """Each pruner option, as the experiment configures it, stops a trial whose curve is far
    worse than every earlier trial's (within its epochs), and lets a good one finish; `none`
    stops nothing."""
    from hydra.utils import instantiate

    cfg = compose_config(["experiment=optuna_cnn", f"hydra/sweeper/pruner={pruner}"],
                         return_hydra_config=True)
    epochs = cfg.train.epochs
    # named: Hyperband puts trials in brackets by a hash of the study's name, and an unnamed
    # study gets a random one (this test failed now and then)
    study = optuna.create_study(pruner=instantiate(cfg.hydra.sweeper.pruner), study_name="cnn",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def stopped_at(curve) -> int | None:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        for epoch, loss in enumerate(curve, start=1):
            trial.report(loss, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return epoch
        study.tell(trial, curve[-1])
        return None

    good = [stopped_at([1.0 / epoch for epoch in range(1, epochs + 1)]) for _ in range(10)]
    bad = stopped_at([10.0] * epochs)
    assert good[0] is None  # the first trial has nothing to be compared with
    assert (bad is None) == (pruner == "none"), bad
    if pruner == "successive_halving":  # the experiment's default, as measured in the README
        assert bad == 1


@pytest.mark.slow
def test_a_study_with_other_settings_is_never_joined_and_the_old_one_is_untouched(tiny_data,
                                                                                  tmp_path):
    """experiment=optuna_cnn with smaller settings used to join the real study: its trials
    counted against the budget and guided the sampler."""
    first = subprocess.run(optuna_sweep(tiny_data, tmp_path, "hydra.sweeper.n_trials=2",
                                        "train.epochs=2"), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    study, client, (parent,), _ = load(tmp_path)
    before = [(t.number, t.state, t.params) for t in study.trials]
    smaller = optuna_sweep(tiny_data, tmp_path, "hydra.sweeper.n_trials=2", "train.epochs=1")
    smaller[smaller.index(f"hydra.sweep.dir={tmp_path}/sweep")] = f"hydra.sweep.dir={tmp_path}/s2"
    other = subprocess.run(smaller, capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stderr[-3000:]
    assert ("study 'optuna_cnn' was made with other settings (train.epochs: 1 here, 2 in the "
            "study): this sweep works on study 'optuna_cnn-") in other.stdout
    refused = subprocess.run([*smaller, "hydra.sweeper.study_name=optuna_cnn"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: hydra.sweeper.study_name=optuna_cnn is not allowed: study 'optuna_cnn' in "
        f"sqlite:///{tmp_path}/store/optuna.db was made with other settings (train.epochs: 1 "
        "here, 2 in the study); give the same settings to continue it, or another study_name"]
    study = optuna.load_study(study_name="optuna_cnn",
                              storage=f"sqlite:///{tmp_path}/store/optuna.db")
    assert [(t.number, t.state, t.params) for t in study.trials] == before
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    parents = client.search_runs(["1"], "tags.sweep = 'true'")
    assert sorted(p.data.tags["optuna.study"] for p in parents) == [
        "optuna_cnn", next(n for n in (s.study_name for s in optuna.get_all_study_summaries(
            f"sqlite:///{tmp_path}/store/optuna.db")) if n != "optuna_cnn")]


@pytest.mark.slow
def test_a_finished_studys_parent_keeps_its_record_and_any_name_works(tiny_data, tmp_path):
    """A name with a quote, a slash and non-ASCII letters; a start with the budget spent
    changes nothing; a continuation with a larger budget gets a parent of its own."""
    name = "hydra.sweeper.study_name=\"lab's ünï/study\""
    first = subprocess.run(optuna_sweep(tiny_data, tmp_path, name, "hydra.sweeper.n_trials=2"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")

    def parents():
        return client.search_runs(["1"], "tags.sweep = 'true'",
                                  order_by=["attributes.start_time ASC"])

    (finished,) = parents()
    assert finished.info.status == "FINISHED" and finished.info.run_name == "study lab's ünï/study"
    spent = subprocess.run(optuna_sweep(tiny_data, tmp_path, name, "hydra.sweeper.n_trials=2"),
                           capture_output=True, text=True, timeout=600)
    assert spent.returncode == 0 and "has had its 2 trials" in spent.stdout, spent.stderr[-2000:]
    more = subprocess.run(optuna_sweep(tiny_data, tmp_path, name, "hydra.sweeper.n_trials=3"),
                          capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-3000:]
    old, new = parents()
    assert (old.info.status, old.info.end_time) == ("FINISHED", finished.info.end_time)
    assert new.info.run_name == "study lab's ünï/study (continued)"
    assert new.data.tags["optuna.continues"] == old.info.run_id
    assert new.info.status == "FINISHED" and new.data.tags["sweep.runs"] == "1"


@pytest.mark.slow
def test_a_sweep_whose_parent_cannot_be_made_runs_no_job(tiny_data, tmp_path):
    """Hydra turns a callback's exception into a warning: the jobs used to run unrecorded and
    the command exited 0."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import mlflow.tracking\n"
        "def refuse(*args, **kwargs):\n"
        "    raise RuntimeError('the store said no')\n"
        "mlflow.tracking.MlflowClient.create_run = refuse\n")
    study = optuna_sweep(tiny_data, tmp_path, "hydra.sweeper.n_trials=2")
    grid = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides(tiny_data), "tracking=local",
            "plots=false",
            f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db", "optim.lr=1e-3,1e-4",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    for command in (study, grid):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(hook)})
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            "error: the sweep could not start: RuntimeError: the store said no")
        assert "Launching" not in result.stdout and not list(tmp_path.glob("sweep/*/report.txt"))
