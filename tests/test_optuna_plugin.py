"""The Optuna sweeper as a Hydra plugin for any app: the example apps in examples/optuna (which
know nothing of the lab) swept as Hydra's own plugin's tests sweep its examples, and the grammar
mapped case by case as Hydra's plugin maps it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from helpers import ROOT
from hydra_plugins.mnist_lab_optuna_sweeper import search_space

EXAMPLES = ROOT / "examples" / "optuna"


def sweep(app: str, tmp_path: Path, *overrides: str, config_dir: Path | None = None,
          ok: bool = True) -> subprocess.CompletedProcess:
    """`python examples/optuna/APP.py -m OVERRIDES` into tmp_path/sweep, from tmp_path."""
    extra = [f"--config-dir={config_dir}"] if config_dir else []
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{app}.py"), "-m", *extra,
                             f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def results(tmp_path: Path):
    return OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")


def study(tmp_path: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'sweep'}/optuna.db")


@pytest.mark.parametrize("given, expected", [
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", CategoricalDistribution((1, 2))),
    ("key=range(1,3)", IntDistribution(1, 3)),  # Hydra's basic sweeper: 1, 2
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
])
def test_the_grammar_maps_to_the_distributions_hydras_plugin_builds(given, expected):
    actual = search_space.distribution(OverridesParser.create().parse_overrides([given])[0])
    if isinstance(expected, CategoricalDistribution):  # shuffle orders the choices at random
        assert isinstance(actual, CategoricalDistribution)
        assert set(actual.choices) == set(expected.choices)
    else:
        assert actual == expected


def test_fixed_values_and_deletions_pass_through_unswept():
    space, fixed = search_space.parse(["key1=choice(1,2)", "key2=5", "~z", "~w=10"])
    assert space == {"key1": CategoricalDistribution([1, 2])}
    assert fixed == ["key2=5", "~z", "~w=10"]


def test_the_deprecated_search_space_is_read_in_its_old_form():
    space = search_space.from_search_space({
        "x": {"type": "float", "low": 0.0, "high": 1.0, "log": False},
        "n": {"type": "int", "low": 1, "high": 9, "step": 2},
        "c": {"type": "categorical", "choices": ["a", "b"]}})
    assert space == {"x": FloatDistribution(0.0, 1.0), "n": IntDistribution(1, 9, step=2),
                     "c": CategoricalDistribution(["a", "b"])}


@pytest.mark.slow
@pytest.mark.parametrize("with_command_line", [True, False])
def test_the_sphere_example_writes_the_studys_best(tmp_path, with_command_line):
    extra = ["x=choice(0, 1, 2)", "y=0"] if with_command_line else []
    sweep("sphere", tmp_path, "hydra.sweeper.n_trials=20", "hydra.sweeper.sampler.seed=123",
          "~z", *extra)
    found, best = results(tmp_path), study(tmp_path, "sphere").best_trial
    assert found.name == "optuna" and found.best_value == best.value
    assert dict(found.best_params) == best.params
    assert ("y" in best.params) != with_command_line  # a fixed value is not searched
    assert found.best_value <= 2.27  # Hydra's test's bound for TPE with 20 trials


@pytest.mark.slow
def test_the_grid_sampler_covers_its_grid(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "grid.yaml").write_text(
        "defaults:\n  - override hydra/sweeper: optuna\n  - override hydra/sweeper/sampler: grid\n"
        "hydra:\n  sweeper:\n    study_name: grid\n    n_trials: 20\n    n_jobs: 1\n"
        "    params:\n      x: choice(-1, 1)\n      y: range(-1.0, 1.0, step=1)\n"
        "      z: choice(\"foo\", \"bar\")\nx: 1\ny: 1\nz: foo\n")
    sweep("sphere", tmp_path, "--config-name=grid", config_dir=conf)
    trials = study(tmp_path, "grid").trials
    assert len(trials) == 8  # n_trials is cut to the grid's size
    assert {(t.params["x"], t.params["y"], t.params["z"]) for t in trials} == {
        (x, y, z) for x in (-1, 1) for y in (-1.0, 0.0) for z in ("foo", "bar")}
    found = results(tmp_path)
    assert found.best_value == 1 and abs(found.best_params.x) == 1 and found.best_params.y == 0


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("with_command_line", [True, False])
def test_two_objectives_give_the_pareto_front(tmp_path, with_command_line):
    extra = ["x=range(0, 5)", "y=range(0, 3)"] if with_command_line else []
    sweep("two_objectives", tmp_path, "hydra/sweeper/sampler=random", *extra)
    solutions = results(tmp_path).solutions
    front = study(tmp_path, "two-objectives").best_trials
    assert sorted(s.trial for s in solutions) == sorted(t.number for t in front)
    for a in solutions:
        step = 1 if with_command_line else 0.5
        assert a.params.x % step == 0 and a.params.y % step == 0
        assert not any(dominates(list(b["values"]), list(a["values"])) for b in solutions)
    assert study(tmp_path, "two-objectives").metric_names == ["f1", "f2"]


@pytest.mark.slow
def test_a_custom_search_space_beside_the_app(tmp_path):
    sweep("custom_space", tmp_path, "hydra/sweeper/sampler=random", "max_z_difference_from_x=0.3")
    best = results(tmp_path).best_params
    assert abs(best.x - best.z) <= 0.3 and 0 <= best["+w"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_max_failure_rate_stops_the_sweep_only_above_it(tmp_path, max_failure_rate):
    result = sweep("sphere", tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
                   "hydra/sweeper/sampler=random", "error=true",
                   f"hydra.sweeper.max_failure_rate={max_failure_rate}", ok=False)
    stopped = "RuntimeError: cfg.error is True" in result.stderr
    assert stopped == (max_failure_rate < 1.0) and (result.returncode != 0) == stopped
    trials = study(tmp_path, "sphere").trials
    assert len(trials) == (2 if stopped else 6)  # stopped after its first batch
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsgaii", "qmc", "gp", "grid"])
def test_every_sampler_sweeps(tmp_path, sampler):
    space = ["x=choice(-1, 0, 1)", "y=choice(-5, 0)"] if sampler == "grid" else []
    sweep("sphere", tmp_path, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=4",
          *space)
    trials = study(tmp_path, "sphere").trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert results(tmp_path).best_value == min(t.value for t in trials)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_a_task_function_reports_and_is_pruned_through_the_public_api(tmp_path, launcher):
    sweep("pruned", tmp_path, f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2")
    trials = study(tmp_path, "pruned").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and complete and len(pruned) + len(complete) == 12
    assert all(t.intermediate_values for t in trials)  # every job found its own trial
    assert all(t.user_attrs == {"steps": 10} for t in complete)
    assert all(abs(t.params["x"] - 2) > min(abs(c.params["x"] - 2) for c in complete)
               for t in pruned)  # the pruner stopped worse trials than the best


@pytest.mark.slow
def test_enqueued_settings_run_first_and_the_timeout_stops_new_trials(tmp_path):
    sweep("sphere", tmp_path, "hydra.sweeper.n_trials=5", "hydra.sweeper.enqueue=[{x: 0.5, y: 0}]")
    assert study(tmp_path, "sphere").trials[0].params == {"x": 0.5, "y": 0}
    sweep("sphere", tmp_path, "hydra.sweeper.study_name=timed", "hydra.sweeper.n_trials=50",
          "hydra.sweeper.timeout=0.000001")
    assert len(study(tmp_path, "timed").trials) == 0


@pytest.mark.parametrize("override, says", [
    ("+hydra.sweeper.colour=red", "hydra.sweeper.colour='red' is not allowed: not a key"),
    ("hydra.sweeper.direction=[minimize,up]", "hydra.sweeper.direction=['minimize', 'up']"),
    ("hydra.sweeper.max_failure_rate=1.5", "a share of a batch, from 0 to 1"),
    ("hydra.sweeper.custom_search_space=nowhere.configure", "custom_search_space='nowhere"),
    ("hydra/sweeper/pruner=successive_halving hydra.sweeper.pruner.reduction_factor=1",
     "Optuna refuses it: The value of `reduction_factor` is 1, but must be"),
    ("hydra/sweeper/pruner=percentile hydra.sweeper.pruner.percentile=150",
     "Optuna refuses it: Percentile must be between 0 and 100"),
    ("hydra.sweeper.storage=file:///tmp/study", "file:// is not a storage this sweeper opens"),
    ("hydra.sweeper.storage=grpc://127.0.0.1:1", "grpc:// is not a storage this sweeper opens"),
    ("hydra.sweeper.storage=sqlite:////tmp", "/tmp is a folder, not a file"),
    ("hydra.sweeper.storage=sqlite://", "an in-memory database"),
    ("hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/db", "the database does not answer"),
    ("x=interval(2,1)", "hydra.sweeper.params: `low <= high` must hold"),
    ("x=tag(log,interval(0,1))", "`low > 0` must hold for `log=True`"),
])
def test_a_setting_that_cant_work_is_refused_in_one_line(tmp_path, override, says):
    result = sweep("sphere", tmp_path, *override.split(), ok=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert says in result.stderr
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def test_pruning_with_several_objectives_is_refused(tmp_path):
    result = sweep("two_objectives", tmp_path, "hydra/sweeper/pruner=median", ok=False)
    assert result.returncode == 2 and "Optuna cannot prune a multi-objective study" in result.stderr


def test_a_journal_files_lost_trial_is_failed_by_the_next_process(tmp_path):
    """A Journal file has no heartbeat of Optuna's own: the sweeper keeps one per trial, and
    a trial whose beat is older than the grace period is failed, as on a database."""
    import time

    from hydra_plugins.mnist_lab_optuna_sweeper import storages

    url = f"journal:///{tmp_path}/study.log"
    mine = optuna.create_study(storage=storages.open_storage(url), study_name="s")
    alive, dead = mine.ask(), mine.ask()
    storages.beat(mine._storage, alive._trial_id)
    mine._storage.set_trial_system_attr(dead._trial_id, storages.BEAT_ATTR, time.time() - 1000)
    other = optuna.load_study(study_name="s", storage=storages.open_storage(url))  # another process
    assert storages.fail_lost_trials(other, grace_period=120) == [dead.number]
    assert [t.state.name for t in other.get_trials()] == ["RUNNING", "FAIL"]


@pytest.mark.slow
def test_a_study_in_a_journal_file_continues_toward_its_budget(tmp_path):
    storage = f"hydra.sweeper.storage=journal:///{tmp_path}/sphere.log"
    sweep("sphere", tmp_path, storage, "hydra.sweeper.n_trials=3")
    sweep("sphere", tmp_path, storage, "hydra.sweeper.n_trials=5")  # the same command, more
    from hydra_plugins.mnist_lab_optuna_sweeper.storages import open_storage

    trials = optuna.load_study(study_name="sphere",
                               storage=open_storage(f"journal:///{tmp_path}/sphere.log")).trials
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)


def ran(trials) -> list[tuple]:
    """The parameters of the trials that were evaluated (not settled as a repeat)."""
    return [tuple(sorted(t.params.items())) for t in trials if "repeat_of" not in t.user_attrs]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_no_configuration_is_evaluated_twice_by_workers_or_continuations(tmp_path, sampler):
    """A seeded sampler used to replay its start-up draws in every process: two workers on one
    study, and each run of the command that continues it, evaluated the same parameters."""
    space = ["x=interval(-5, 5)", "y=interval(-5, 5)", "~z", f"hydra/sweeper/sampler={sampler}",
             "hydra.sweeper.sampler.seed=7"]
    workers = [subprocess.Popen([sys.executable, str(EXAMPLES / "sphere.py"), "-m",
                                 f"hydra.sweep.dir={tmp_path / 'sweep'}", *space,
                                 "hydra.sweeper.n_trials=8"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-2000:]
    for budget in (12, 16):  # the same command, continued twice with a larger budget
        sweep("sphere", tmp_path, *space, f"hydra.sweeper.n_trials={budget}")
    trials = study(tmp_path, "sphere").trials
    assert len(trials) == 16 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(set(ran(trials))) == len(ran(trials)) == 16
    # one process alone is still repeatable: the same seed, the same draws
    again = tmp_path / "again"
    again.mkdir()
    sweep("sphere", again, *space, "hydra.sweeper.n_trials=4")
    sweep("sphere", again, *space, "hydra.sweeper.n_trials=8")
    solo = study(again, "sphere").trials
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    sweep("sphere", fresh, *space, "hydra.sweeper.n_trials=8")
    assert ran(study(fresh, "sphere").trials) == ran(solo)  # 8 at once = 4, then 4 more


@pytest.mark.slow
def test_a_repeated_proposal_takes_the_earlier_trials_value_without_running(tmp_path):
    sweep("sphere", tmp_path, "x=choice(0, 1)", "y=choice(0, 2)", "~z",
          "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
          "hydra.sweeper.n_trials=12")
    trials = study(tmp_path, "sphere").trials
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert len(set(ran(trials))) == len(ran(trials)) <= 4 and len(repeats) >= 8
    for repeat in repeats:
        earlier = trials[repeat.user_attrs["repeat_of"]]
        assert earlier.params == repeat.params and earlier.values == repeat.values
        assert not (tmp_path / "sweep" / str(repeat.number)).exists()  # no job ran for it


@pytest.mark.slow
def test_a_study_is_joined_only_with_its_own_settings(tmp_path):
    """The sphere's config names its study: a command with another fixed value or another space
    gets a study of its own and says so; naming the study on the command line is refused in one
    line, and leaves the study as it was."""
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"
    base = [storage, "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=3"]
    sweep("sphere", tmp_path, *base)
    first = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path}/optuna.db")
    before = [(t.number, t.state, t.params) for t in first.trials]
    other = sweep("sphere", tmp_path, *base, "z=2")  # a fixed setting that defines the objective
    assert "study 'sphere' was made with other settings (z: 2 here, 1 in the study)" in other.stdout
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path}/optuna.db")}
    own = next(n for n in names if n.startswith("sphere-"))
    assert names == {"sphere": 3, own: 3}
    sweep("sphere", tmp_path, *base[:2], "hydra.sweeper.n_trials=5", "z=2")  # continues its own
    assert optuna.load_study(study_name=own, storage=f"sqlite:///{tmp_path}/optuna.db"
                             ).trials[-1].number == 4
    for extra, named in ((["z=2"], "z: 2 here, 1 in the study"),
                         (["x=interval(0, 1)"], "space.x: FloatDistribution"),
                         (["hydra/sweeper/sampler=tpe"], "sampler._target_")):
        refused = sweep("sphere", tmp_path, *base, "hydra.sweeper.study_name=sphere", *extra,
                        ok=False)
        assert refused.returncode == 2
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith("error: hydra.sweeper.study_name=sphere is not allowed: study "
                               "'sphere' in sqlite:///") and named in line, refused.stderr
    after = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [(t.number, t.state, t.params) for t in after.trials] == before


def test_a_trial_whose_process_ended_on_this_machine_is_failed_without_waiting(tmp_path):
    """A worker killed and started again within the grace period used to leave its trial
    RUNNING for good: its heartbeat was still fresh, and nobody came back to it."""
    import psutil

    from hydra_plugins.mnist_lab_optuna_sweeper import storages

    study = optuna.create_study(storage=storages.open_storage(f"sqlite:///{tmp_path}/s.db", 20, 120),
                                study_name="s")
    dead, alive, elsewhere = study.ask(), study.ask(), study.ask()
    gone = subprocess.Popen(["sleep", "30"])
    worker = [storages.this_process()[0], gone.pid, psutil.Process(gone.pid).create_time()]
    gone.kill()
    gone.wait()
    study._storage.set_trial_system_attr(dead._trial_id, storages.WORKER_ATTR, worker)
    storages.claim(study._storage, alive._trial_id)
    study._storage.set_trial_system_attr(elsewhere._trial_id, storages.WORKER_ATTR,
                                         ["another-host", 1, 0.0])
    for trial in (dead, alive, elsewhere):
        storages.beat(study._storage, trial._trial_id)  # all fresh
    assert storages.fail_lost_trials(study, grace_period=120) == [dead.number]
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING", "RUNNING"]


SLOW_APP = '''
import time

import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="slots")
def wait(cfg) -> float:
    time.sleep(cfg.x)
    return cfg.x


if __name__ == "__main__":
    wait()
'''


@pytest.mark.slow
@pytest.mark.parametrize("refill", [True, False])
def test_a_slot_takes_the_next_trial_as_soon_as_its_trial_ends(tmp_path, refill):
    """Trial 0 takes 6 s, the rest a moment: with refill, the other slot runs trials 1, 2 and 3
    meanwhile; with Hydra's batches, trial 2 waits for trial 0."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "slots.yaml").write_text(
        "defaults:\n  - override hydra/sweeper: optuna\n  - override hydra/launcher: joblib\n"
        "hydra:\n  launcher:\n    n_jobs: 2\n  sweeper:\n    study_name: slots\n    n_trials: 4\n"
        "    n_jobs: 2\n    enqueue: [{x: 6.0}, {x: 0.1}, {x: 0.2}, {x: 0.3}]\n"
        "    params:\n      x: interval(0, 1)\nx: 0\n")
    (tmp_path / "slots.py").write_text(SLOW_APP)
    result = subprocess.run([sys.executable, str(tmp_path / "slots.py"), "-m",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}",
                             f"hydra.sweeper.refill={str(refill).lower()}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = study(tmp_path, "slots").trials
    assert [t.params["x"] for t in trials] == [6.0, 0.1, 0.2, 0.3]
    slow_end = trials[0].datetime_complete
    if refill:
        assert all(t.datetime_complete < slow_end for t in trials[1:])
    else:
        assert trials[2].datetime_start >= trials[1].datetime_complete
        assert trials[2].datetime_start >= slow_end


def sweeper_settings():
    from hypothesis import strategies as st

    from hydra_plugins.mnist_lab_optuna_sweeper import config

    number = st.one_of(st.floats(-1e3, 1e3, allow_subnormal=False),  # torch flushes them
                       st.sampled_from([0.0, 1.0, float("inf"),
                                                             float("nan")]))
    samplers = {"tpe": config.TPESamplerConf, "random": config.RandomSamplerConf,
                "qmc": config.QMCSamplerConf, "nsgaii": config.NSGAIISamplerConf}
    pruners = {"median": (config.MedianPrunerConf, {"n_startup_trials": st.integers(-3, 9),
                                                    "n_warmup_steps": st.integers(-3, 9)}),
               "percentile": (config.PercentilePrunerConf, {"percentile": number}),
               "successive_halving": (config.SuccessiveHalvingPrunerConf,
                                      {"reduction_factor": st.integers(-2, 6),
                                       "min_resource": st.integers(-2, 4)}),
               "hyperband": (config.HyperbandPrunerConf, {"reduction_factor": st.integers(-2, 6)}),
               "none": (config.NopPrunerConf, {})}
    return st.fixed_dictionaries({
        "n_trials": st.integers(-5, 50), "n_jobs": st.integers(-2, 8),
        "max_failure_rate": number, "timeout": st.one_of(st.none(), number),
        "heartbeat_interval": st.integers(-5, 60), "grace_period": st.integers(-5, 200),
        "direction": st.sampled_from(["minimize", "maximize", "up", ["minimize", "maximize"],
                                      []]),
        "storage": st.one_of(st.none(), st.sampled_from([
            "sqlite:///{tmp}/s.db", "sqlite:///{tmp}", "sqlite://", "file:///x", "grpc://h:1",
            "journal:///{tmp}/j.log", "postgresql://nobody@127.0.0.1:1/db", "no-scheme"])),
        "sampler": st.sampled_from(sorted(samplers)).flatmap(lambda name: st.fixed_dictionaries(
            {"conf": st.just(samplers[name]), "seed": st.one_of(st.none(), st.integers(0, 99))})),
        "pruner": st.sampled_from(sorted(pruners)).flatmap(lambda name: st.fixed_dictionaries(
            {"conf": st.just(pruners[name][0]), **pruners[name][1]})),
    })


@pytest.mark.slow
def test_any_sweeper_setting_passes_or_is_refused_in_one_line(tmp_path):
    """No traceback for any generated setting: check_settings passes it, and then the sampler
    and pruner build, or it raises SweeperConfigError with one line naming the key. It writes
    nothing either way."""
    from hydra.utils import instantiate
    from hypothesis import given, settings

    from hydra_plugins.mnist_lab_optuna_sweeper.api import SweeperConfigError
    from hydra_plugins.mnist_lab_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.mnist_lab_optuna_sweeper.settings import check_settings

    @settings(max_examples=120, deadline=None, database=None)
    @given(drawn=sweeper_settings())
    def check(drawn):
        sampler, pruner = drawn.pop("sampler"), drawn.pop("pruner")
        if drawn["storage"]:
            drawn["storage"] = drawn["storage"].format(tmp=tmp_path)
        sweeper = OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), {
            **drawn, "sampler": OmegaConf.merge(OmegaConf.structured(sampler.pop("conf")),
                                                sampler),
            "pruner": OmegaConf.merge(OmegaConf.structured(pruner.pop("conf")), pruner)})
        try:
            check_settings(sweeper)
        except SweeperConfigError as err:
            assert str(err).startswith("hydra.sweeper.") and "\n" not in str(err), str(err)
        else:
            instantiate(sweeper.sampler)
            instantiate(sweeper.pruner)
        assert sorted(p.name for p in tmp_path.iterdir()) == []

    check()
