"""Stacked trials (launcher=stacked): members of one architecture trained as one vmapped model,
each a whole run: its own hyperparameters, callbacks, checkpoint and MLflow record."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (ROOT, compose_config, make_dataset, run_lab, runs_in, store, tiny_overrides,
                     tracked)
from mnist_lab.checkpoint import TrainingState, load_last, save_every_epoch
from mnist_lab.context import JobContext


from mnist_lab.errors import DataError, TrialPruned
from mnist_lab.job import Job
from mnist_lab.loop import Recipe, fit
from mnist_lab.data import load_mnist, member_data
from mnist_lab.stacking import Member, Stack

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("stack") / "tiny")
    return root, load_mnist(root, 100, 0, verify=False)


def member(root: Path, data, *overrides: str) -> TrainingState:
    """A member's state as a job builds it: its model drawn from its own seed."""
    job = Job(compose_config([*tiny_overrides(root), *overrides]), JobContext())
    job.data, job.resume_state = data, None
    return job.build(CPU)


def recipe(epochs: int = 2) -> Recipe:
    return Recipe(epochs=epochs, batch_size=32)


def weights(state: TrainingState) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


def test_a_member_with_learning_rate_0_keeps_its_initial_weights(data):
    root, tensors = data
    frozen, moving = member(root, tensors, "seed=1"), member(root, tensors, "seed=2")
    frozen.optimizer.param_groups[0]["lr"] = 0.0  # the config refuses 0; the optimizer takes it
    before = weights(frozen), weights(moving)
    fit(Stack([Member(frozen), Member(moving)]), member_data([tensors] * 2), recipe())
    assert all(torch.equal(a, b) for a, b in zip(before[0], weights(frozen)))
    assert not any(torch.equal(a, b) for a, b in zip(before[1], weights(moving)))
    assert frozen.epoch == moving.epoch == 2


@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd", "rmsprop"])
def test_each_member_trains_with_its_own_hyperparameters_as_it_would_alone(data, optim):
    """Without dropout (whose masks a stack draws for all members at once) a member follows
    its solo run up to float rounding: its own lr, weight decay, seed and batch order."""
    root, tensors = data
    settings = [("seed=3", "optim.lr=1e-3", "optim.weight_decay=0.0"),
                ("seed=4", "optim.lr=3e-3", "optim.weight_decay=0.05")]
    stacked = [member(root, tensors, f"optim={optim}", "dropout.p=0.0", *s) for s in settings]
    fit(Stack([Member(s) for s in stacked]), member_data([tensors] * 2), recipe())
    for own, state in zip(settings, stacked):
        alone = member(root, tensors, f"optim={optim}", "dropout.p=0.0", *own)
        fit(alone, tensors, recipe())
        assert state.history["train/loss"] == pytest.approx(alone.history["train/loss"],
                                                             rel=1e-4)
        for a, b in zip(weights(state), weights(alone)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        assert state.optimizer.state_dict()["param_groups"][0]["lr"] == \
            alone.optimizer.state_dict()["param_groups"][0]["lr"]
    assert stacked[0].history["train/loss"] != stacked[1].history["train/loss"]


def test_a_stack_is_bit_identical_when_rerun(data):
    root, tensors = data
    finals = []
    for _ in range(2):
        states = [member(root, tensors, f"seed={s}", f"dropout.p={p}", "model=cnn")
                  for s, p in ((5, 0.2), (6, 0.5), (7, 0.0))]
        torch.manual_seed(0)
        fit(Stack([Member(s) for s in states]), member_data([tensors] * 3), recipe(1))
        finals.append([weights(s) for s in states])
    for first, second in zip(*finals):
        assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_pruned_member_leaves_and_the_others_finish(data):
    root, tensors = data
    states = [member(root, tensors, f"seed={s}") for s in (1, 2, 3)]

    def prune(state, metrics):
        if state.epoch == 1:
            raise TrialPruned(1)

    members = [Member(states[0]), Member(states[1], [prune]), Member(states[2])]
    stack = Stack(list(members))
    fit(stack, member_data([tensors] * 3), recipe(3))
    assert isinstance(members[1].error, TrialPruned)
    assert states[1].epoch == 1 and len(states[1].history["val/loss"]) == 1
    assert states[0].epoch == states[2].epoch == 3 and members[0].error is None
    assert [m.state for m in stack.members] == [states[0], states[2]]


def test_a_members_checkpoint_resumes_alone(data, tmp_path):
    root, tensors = data
    states = [member(root, tensors, f"seed={s}", "dropout.p=0.0") for s in (1, 2)]
    saves = [save_every_epoch(tmp_path / f"{i}.ckpt") for i in range(2)]
    stack = Stack([Member(s, [save]) for s, save in zip(states, saves)])
    fit(stack, member_data([tensors] * 2), recipe(1))
    saved = load_last(tmp_path / "1.ckpt")
    assert saved["epoch"] == 1 and set(saved["model"]) == set(states[1].model.state_dict())
    alone = member(root, tensors, "seed=2", "dropout.p=0.0")
    alone.restore(saved)
    fit(alone, tensors, recipe(2))  # a solo run from the member's epoch 1
    fit(stack, member_data([tensors] * 2), recipe(2))  # the stack from the same epoch
    assert alone.history["val/loss"] == pytest.approx(states[1].history["val/loss"], rel=1e-4)


def test_members_with_their_own_data_splits_train_on_them(tmp_path):
    """`seed` also draws a run's train/validation split (unless data.split_seed is set)."""
    root = make_dataset(tmp_path / "tiny")
    splits = [load_mnist(root, 100, seed, verify=False) for seed in (1, 2)]
    states = [member(root, d, f"seed={s}", "dropout.p=0.0") for s, d in zip((1, 2), splits)]
    fit(Stack([Member(s) for s in states]), member_data(splits), recipe(1))
    alone = member(root, splits[1], "seed=2", "dropout.p=0.0")
    fit(alone, splits[1], recipe(1))
    assert states[1].history["val/loss"] == pytest.approx(alone.history["val/loss"], rel=1e-4)


def mlflow_record(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-lab")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, [r for r in runs if r.data.tags.get("sweep") == "true"], children


def record_form(client, run) -> tuple:
    """What a run's record holds, by name: params, metrics, tags and artifacts."""
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    tags = {k for k in run.data.tags if not k.startswith(("mlflow.", "process.", "host"))}
    return set(run.data.params), set(run.data.metrics), tags, artifacts


@pytest.mark.slow
def test_a_stacked_sweep_records_each_member_as_a_solo_run(tmp_path):
    root = make_dataset(tmp_path / "tiny")
    grid = ["optim.lr=1e-3,3e-3", "dropout.p=0.0,0.2"]
    stacked = run_lab(["-m", "launcher=stacked", *tracked(root, tmp_path), *grid], cwd=tmp_path)
    assert stacked.returncode == 0, stacked.stdout[-3000:] + stacked.stderr[-3000:]
    assert "Launching 4 jobs as 1 stack" in stacked.stderr + stacked.stdout
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client, (parent,), members = mlflow_record(uri)
    assert len(members) == 4 and {r.info.status for r in members} == {"FINISHED"}
    assert {r.data.tags["stack"] for r in members} == {"jobs 0,1,2,3 (4 members)"}
    assert sorted(r.data.params["optim.lr"] for r in members) == ["0.001", "0.001", "0.003",
                                                                  "0.003"]
    assert parent.data.tags["sweep.runs"] == "4" and parent.data.tags["sweep.failed"] == "0"
    solo_dir = tmp_path / "solo"
    solo_dir.mkdir()
    alone = run_lab(["-m", *tracked(root, solo_dir), "optim.lr=1e-3", "dropout.p=0.2"],
                    cwd=solo_dir)
    assert alone.returncode == 0, alone.stderr[-3000:]
    solo_client, _, (solo,) = mlflow_record(f"sqlite:///{solo_dir}/store/mlflow.db")
    params, metrics, tags, artifacts = record_form(solo_client, solo)
    for run in members:
        got = record_form(client, run)
        assert (got[0], got[1], got[3]) == (params, metrics, artifacts)
        assert got[2] == tags | {"stack"}
    for job in range(4):  # each member's folder as a solo job's
        folder = next(tmp_path.glob(f"multirun/*/*/{job}"))
        assert {"best.pth", "report.txt", "config.yaml", ".hydra"} <= {
            p.name for p in folder.iterdir()}
    compare = subprocess.run([sys.executable, "-m", "mnist_lab.compare", "--last", "--stats",
                              "--by", "dropout.p",
                              "--uri", uri], capture_output=True, text=True, cwd=tmp_path)
    assert compare.returncode == 0 and compare.stdout.startswith("4 runs in sweep"), \
        compare.stdout + compare.stderr


@pytest.mark.slow
def test_jobs_that_differ_in_architecture_or_batch_size_train_in_separate_stacks(tmp_path):
    root = make_dataset(tmp_path / "tiny")
    done = run_lab(["-m", "launcher=stacked", *tiny_overrides(root), "train.epochs=1",
                    "model=ffnn,cnn", "train.batch_size=16,32", "seed=0,1"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Launching 8 jobs as 4 stacks" in done.stdout + done.stderr


@pytest.mark.slow
def test_an_optuna_batch_trains_as_a_stack(tmp_path):
    root = make_dataset(tmp_path / "tiny")
    done = run_lab(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
                    "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.seed=0",
                    "launcher=stacked", *tracked(root, tmp_path),
                    "optim.lr=tag(log, interval(1e-4, 1e-2))"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, _, members = mlflow_record(f"sqlite:///{tmp_path}/store/mlflow.db")
    assert sorted(r.data.tags["stack"] for r in members) == \
        ["jobs 0,1 (2 members)"] * 2 + ["jobs 2,3 (2 members)"] * 2
    assert sorted(r.data.tags["optuna.trial"] for r in members) == ["0", "1", "2", "3"]


EPOCHS = 3


def stacked_grid(root: Path, store: Path) -> list[str]:
    return [*tiny_overrides(root), "launcher=stacked", "tracking=local",
            f"tracking.uri=sqlite:///{store}", "tracking.log_model=false", "plots=false",
            "threads=1", f"train.epochs={EPOCHS}", f"checkpoint.dir={store.parent}/checkpoints",
            "optim.lr=1e-3,3e-3", "dropout.p=0.0,0.2"]


@pytest.mark.slow
def test_a_stacked_sweep_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    from test_sweep_resume import resume_and_check, results

    whole = tmp_path / "whole"
    whole.mkdir()
    root = make_dataset(tmp_path / "tiny")
    done = run_lab(["-m", *stacked_grid(root, whole / "store" / "mlflow.db")], cwd=whole)
    assert done.returncode == 0, done.stderr[-3000:]
    uninterrupted = results(whole / "store" / "mlflow.db")

    store = tmp_path / "store" / "mlflow.db"
    args = stacked_grid(root, store)
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True)
    seen = 0
    for line in process.stdout:  # every member's epoch 2 saved and printed, epoch 3 under way
        seen += f"epoch   2/{EPOCHS}" in line
        if seen == 4:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert seen == 4
    resume_and_check(args, tmp_path, store, uninterrupted)


def test_a_stack_holds_as_many_members_as_the_setting_and_the_device_memory_allow():
    from mnist_lab.models import FFNN
    from mnist_lab.stack_job import member_bytes, most_members

    data_bytes = 48_000 * 784
    per = member_bytes(FFNN(), 20, data_bytes)
    assert per > 5 * 4 * 535_818 + data_bytes  # weights, gradients, moments, a copy, its data
    assert member_bytes(FFNN(), 200, data_bytes) > per  # activations grow with the batch
    assert most_members(free_bytes=10 * per, per_member=per, cap=16) == 8  # 80% of the free
    assert most_members(free_bytes=100 * per, per_member=per, cap=16) == 16  # the setting
    assert most_members(free_bytes=per // 2, per_member=per, cap=16) == 1  # one runs as ever


def test_compare_groups_runs_by_whether_they_trained_in_a_stack():
    from types import SimpleNamespace

    from mnist_lab.comparison import group_by

    def run(name, tags):
        return SimpleNamespace(info=SimpleNamespace(run_name=name),
                               data=SimpleNamespace(params={"seed": "0"}, tags=tags))

    runs = [run("a", {}), run("b", {"stack": "jobs 0,1 (2 members)"}), run("c", {})]
    groups = group_by(runs, "stack")
    assert list(groups) == ["alone", "stacked"]
    assert [r.info.run_name for r in groups["alone"]] == ["a", "c"]


@pytest.mark.slow
def test_a_stop_signal_ends_a_stacked_sweep_on_record_with_the_command_that_continues_it(
        tmp_path):
    from test_sweep_resume import sweep_runs

    root = make_dataset(tmp_path / "tiny")
    store = tmp_path / "store" / "mlflow.db"
    args = [*stacked_grid(root, store), "train.epochs=500"]
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               start_new_session=True)
    for line in process.stdout:
        if line.startswith("#3 epoch   2/"):
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM: continue the sweep with" in err and "resume=true" in err
    assert "Traceback" not in err, err[-3000:]
    _, (parent,), children = sweep_runs(store)
    assert parent.info.status == "KILLED" and len(children) == 4
    assert {run.info.status for run in children.values()} == {"KILLED"}
    assert len(list((tmp_path / "store" / "checkpoints").glob("*/last.ckpt"))) == 4


@pytest.mark.parametrize("where, fault", [("fit", RuntimeError("CUDA out of memory")),
                                          ("member_data", RuntimeError("CUDA out of memory")),
                                          ("member_data", DataError("data.root: not readable"))])
def test_a_fault_of_the_whole_stack_fails_every_member_on_record(tmp_path, monkeypatch, where,
                                                                 fault):
    """What fails the stack as a whole (device memory, say), while it trains or before any
    member's record exists, fails each member, and each has a FAILED run saying why, as if it
    had failed alone."""
    from mnist_lab import stack_job
    from mnist_lab.policy import settle

    root = make_dataset(tmp_path / "tiny")
    ctx = JobContext(multirun=True)
    members = [(compose_config(tracked(root, tmp_path, f"seed={s}", "plots=false",
                                       f"output_dir={tmp_path}/out{s}")), ctx) for s in (1, 2, 3)]

    def fails(*args, **kwargs):
        raise fault

    monkeypatch.setattr(stack_job, where, fails)
    outcomes = stack_job.run_stack(members)
    assert [type(o) for o in outcomes] == [type(fault)] * 3
    for (cfg, _), outcome in zip(members, outcomes):
        settle(cfg, ctx, outcome)  # as policy.run_stack settles each member
    runs = runs_in(store(tmp_path))
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}
    assert all(str(fault) in r.data.tags["error"] for r in runs)


def test_a_member_augments_its_batches_with_the_draws_it_would_make_alone(data):
    root, tensors = data
    augmenting = Recipe(epochs=1, batch_size=32, augment=(15.0, 2.0))
    stacked = [member(root, tensors, f"seed={s}", "dropout.p=0.0") for s in (1, 2)]
    fit(Stack([Member(s) for s in stacked]), member_data([tensors] * 2), augmenting)
    alone = member(root, tensors, "seed=2", "dropout.p=0.0")
    fit(alone, tensors, augmenting)
    assert stacked[1].history["train/loss"] == pytest.approx(alone.history["train/loss"],
                                                             rel=1e-4)
    assert stacked[1].generator.get_state().equal(alone.generator.get_state())
