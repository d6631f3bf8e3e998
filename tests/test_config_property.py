"""The whole config surface, drawn by Hypothesis: any override of any key either trains on fixture
data or is refused in one line that names the key (exit status 2), before any run exists.

The in-process tests go through `first_problem`, the function run.py calls before Hydra starts;
the slow ones also train what it accepts (one epoch on 64 images) and run the real command line.
"""

import math
import string

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from helpers import ROOT, compose_config, make_dataset, run_lab, tiny_overrides
from mnist_lab import job
from mnist_lab.errors import DivergedError
from mnist_lab.identity import leaves
from mnist_lab.preflight import first_problem

GROUPS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
          for group in ("model", "optim", "sched", "dropout", "init", "launcher")}
# paths, stores and devices are inputs of their own, each with its fault tests (test_inputs.py)
# (data.verify too: the fixture files are not the published MNIST, so verify=true refuses them)
OUTSIDE = ("data.root", "data.download", "data.verify", "checkpoint.", "tracking.uri",
           "tracking.enabled", "resume", "device", "output_dir")


def keys_of(overrides: list[str]) -> set[str]:
    from omegaconf import OmegaConf

    return {key for key, _ in leaves(OmegaConf.to_container(compose_config(overrides)))}


KEYS = sorted(k for k in set().union(*(keys_of([f"{g}={o}"]) for g, opts in GROUPS.items()
                                       for o in opts))
              if not k.startswith(OUTSIDE))

NUMBERS = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "1e-320", "0", "1", "-1", "2.5"]))
LISTS = st.one_of(
    st.lists(st.one_of(st.integers(-3, 300), st.sampled_from([0, 4096, 4097])), max_size=3)
    .map(lambda xs: f"[{','.join(map(str, xs))}]"),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3)
    .map(lambda xs: f"[{','.join(map(repr, xs))}]"),
    st.just(f"[{','.join(['1'] * 10_000)}]"))
WORDS = st.text(string.ascii_letters + string.digits + "_-.", max_size=12).map(lambda s: f"'{s}'")
OTHER = st.sampled_from(["abc", "true", "false", "null", "{a:1}", "[[1]]", "''", "[1,2", "a b"])
VALUES = st.one_of(NUMBERS, LISTS, WORDS, OTHER)


@st.composite
def overrides(draw, keys=KEYS):
    """A command line: maybe other options, then one override of some kind."""
    chosen = [f"{g}={draw(st.sampled_from(GROUPS[g]))}" for g in ("model", "optim", "sched")
              if draw(st.booleans())]
    key = draw(st.sampled_from(keys))
    form = draw(st.sampled_from(["set"] * 6 + ["add", "delete", "unknown", "option"]))
    if form == "set":
        last = f"{key}={draw(VALUES)}"
    elif form == "add":
        last = f"+{key}={draw(VALUES)}"
    elif form == "delete":
        last = f"~{key}"
    elif form == "unknown":
        last = f"+{key}x={draw(VALUES)}"
    else:
        group = draw(st.sampled_from(sorted(GROUPS)))
        last = f"{group}={draw(st.sampled_from([*GROUPS[group], 'resnet', 'ffnn_schema', '']))}"
    return [*chosen, last]


def named_key(override: str) -> str:
    return override.lstrip("+~").split("=")[0]


@pytest.fixture(autouse=True)
def float_draws_keep_denormals():
    # job.run (earlier tests) flushes denormal floats for the whole process; Hypothesis's float
    # strategies need them
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("property") / "tiny")


def refused_in_one_line(problem: str | None, command: list[str]) -> bool:
    """True for a refusal that is one line naming the key; False when the command was accepted."""
    if problem is None:
        return False
    assert "\n" not in problem and "Traceback" not in problem, problem
    assert named_key(command[-1]).rstrip(".") in problem or command[-1] in problem, problem
    return True


@pytest.mark.slow
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=overrides())
@example(command=["data.limit=1"])  # found by CI: the refusal named train.batch_size only
def test_any_override_is_accepted_or_refused_in_one_line_naming_the_key(command, fixture_data):
    refused_in_one_line(first_problem([*tiny_overrides(fixture_data), *command]), command)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=overrides())
def test_what_is_accepted_trains(command, fixture_data, tmp_path):
    argv = [*tiny_overrides(fixture_data), "plots=false", f"output_dir={tmp_path / 'out'}",
            *command]
    if refused_in_one_line(first_problem(argv), command):
        return
    cfg = compose_config(argv)
    cfg.train.epochs = 1  # a valid epoch count trains as long as asked; one shows it trains
    cfg.data.limit = min(cfg.data.limit or 64, 64)
    threads = torch.get_num_threads()
    try:
        assert math.isfinite(job.run(cfg))
    except DivergedError:
        pass  # accepted values that make training diverge: reported in one line, run FAILED
    finally:  # job.run sets both for the process; flushed denormals would break float draws
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


FAST_KEYS = [k for k in KEYS if not k.startswith(("train.epochs", "sched.epochs", "sched.T_max",
                                                  "data.limit", "launcher"))]


@pytest.mark.slow
@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=overrides(keys=FAST_KEYS))
def test_the_real_command_trains_or_exits_2_in_one_line_creating_no_run(command, fixture_data,
                                                                         tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmd")
    uri = f"sqlite:///{folder}/store/mlflow.db"
    result = run_lab([*tiny_overrides(fixture_data), "train.epochs=1", "plots=false",
                      "tracking=local", f"tracking.uri={uri}", "tracking.log_model=false",
                      *command], cwd=folder)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
        assert result.stderr.count("\n") == 1 and named_key(command[-1]).rstrip(".") in (
            result.stderr), result.stderr
        assert not (folder / "store").exists() and not (folder / "outputs").exists()
    else:
        assert result.returncode in (0, 1), result.stderr  # 1: diverged, in one line
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("mnist-lab").experiment_id])
        assert run.info.status == ("FINISHED" if result.returncode == 0 else "FAILED")


SEARCHED = {"dropout.p": (0.0, 1.0, True), "optim.lr": (0.0, math.inf, True),
            "train.epochs": (1, math.inf, False)}  # the lab's bounds: low, high, high excluded


def search_spaces():
    bound = st.one_of(st.floats(-2, 3, allow_nan=False, allow_subnormal=False),
                      st.sampled_from([0.0, 1.0, 1e-4]))
    return st.tuples(st.sampled_from(sorted(SEARCHED)), bound, bound, st.booleans())


@pytest.mark.slow
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(space=search_spaces())
@example(space=("dropout.p", 1.0, 2.0, False))  # every trial used to run to FAILED
@example(space=("optim.lr", 0.0, 0.1, True))  # a log interval from 0
@example(space=("dropout.p", 0.5, 0.1, False))  # reversed
def test_any_search_space_is_taken_whole_or_refused_in_one_line(space, tmp_path):
    """Before Hydra starts: a space reaching outside what its key takes, or one Optuna cannot
    sample, is refused in one line naming the key; what is accepted lies within the key's
    bounds. Nothing is written either way (first_problem composes only)."""
    key, low, high, log = space
    interval = f"interval({low!r}, {high!r})"
    if key == "train.epochs":
        interval = f"int({interval})"
    searched = f"{key}=tag(log, {interval})" if log else f"{key}={interval}"
    problem = first_problem(["experiment=optuna_cnn", searched,
                             f"hydra.sweep.dir={tmp_path}/sweep"])
    least, most, open_top = SEARCHED[key]
    if key == "train.epochs":
        low, high = int(low), int(high)  # what int(interval) draws: its bounds made int
    valid = low <= high and (not log or low > 0) and least <= low and (
        high < most or (high == most and not open_top)) and not (key == "optim.lr" and low <= 0)
    if valid:
        assert problem is None, problem
    else:
        assert problem and "\n" not in problem and "Traceback" not in problem, problem
        assert key in problem or "hydra.sweeper.params" in problem, problem
    assert not (tmp_path / "sweep").exists()
