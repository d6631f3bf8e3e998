"""The Sweeper: ask Optuna for trials, run them through the launcher, tell Optuna how they ended.

Any Hydra app can use it: a task function returns a float (a tuple with several directions), and
may report intermediate values to its trial and stop when the pruner says (api.py). Trials go to
the launcher one at a time in `n_jobs` lanes (lanes.py: a slot is refilled as soon as its trial
ends), and a job's number is its trial's number, so a job finds its trial from the sweep
folder. A job that raises `TrialPruned` (or Optuna's) is PRUNED; one that raises otherwise, or
returns what is not a number, FAIL, and after each `n_jobs` trials `max_failure_rate` decides
whether the sweep goes on, as Hydra's plugin decides after each batch. A non-finite value (an
app's way to say "failed, go on") is FAIL too.

Any number of processes may run the same command on one study: asking is done under a lock
(storages.exclusive), after counting every trial already asked, so `n_trials` is the study's
budget, not each process's. While a trial runs, this process beats a heartbeat for it; a
trial whose process died is failed by the next process that asks. No configuration is evaluated
twice: a seeded sampler draws each trial from its own seed (`reseed`), and a proposal of
parameters the study already has ends at once with the earlier trial's outcome (`settle_repeat`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mnist_lab_optuna_sweeper import identity, search_space, storages
from hydra_plugins.mnist_lab_optuna_sweeper.lanes import Lanes
from hydra_plugins.mnist_lab_optuna_sweeper.api import STUDY_FILE, SweeperConfigError, TrialPruned
from hydra_plugins.mnist_lab_optuna_sweeper.settings import (check_settings, configure_function,
                                                              directions)

log = logging.getLogger(__name__)
REPEAT_ATTR = "repeat_of"  # a trial not run: it proposed this earlier trial's parameters


def refuse(err: Exception) -> None:
    """A setting that can't work: one line, exit status 2, before any trial."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def study_name(sweeper: DictConfig, sweep_dir: str) -> str:
    """`hydra.sweeper.study_name`; without one, each sweep folder is a study of its own."""
    return sweeper.study_name or f"sweep:{sweep_dir}"


def storage_url(sweeper: DictConfig, sweep_dir: str) -> str:
    """`hydra.sweeper.storage`, else `optuna.db` in the sweep folder: a study is never only in
    memory, so a job in another process reaches it and a stopped sweep continues."""
    if sweeper.storage:
        return sweeper.storage
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any = None, **settings: Any) -> None:
        # every key, the sampler and pruner too (_recursive_: false), is read from
        # hydra.sweeper in setup, and built there once it is checked
        self.sampler = self.pruner = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.settings = config.hydra.sweeper
        self.app_module = getattr(task_function, "__module__", "__main__")
        try:
            check_settings(self.settings, self.app_module)
        except SweeperConfigError as err:
            refuse(err)
        from hydra.utils import instantiate

        self.sampler = instantiate(self.settings.sampler)
        self.pruner = instantiate(self.settings.pruner) if self.settings.get("pruner") else None
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        with warnings.catch_warnings():
            # heartbeats outside Study.optimize are what this sweeper is built on
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            from optuna.exceptions import ExperimentalWarning

            warnings.filterwarnings("ignore", category=ExperimentalWarning)
            self._sweep(arguments)

    def search(self, arguments: List[str]):
        """(distributions, fixed overrides, sampler, n_trials) from params, the deprecated
        search_space and the command line; a problem is refused before the study is opened."""
        settings = self.settings
        try:
            space, fixed = identity.space_of(settings, arguments)
            sampler, n_trials = self.sampler, settings.n_trials
            self.grid = None
            if callable(sampler) and getattr(sampler, "func", None) is not None:  # grid: partial
                self.grid = grid = {k: search_space.grid_points(k, d) for k, d in space.items()}
                sampler = sampler(grid)
                n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
                log.info(f"Updating num of trials to {n_trials} due to using GridSampler.")
        except ValueError as err:
            refuse(f"hydra.sweeper.params: {err}")
        return space, fixed, sampler, n_trials

    def _sweep(self, arguments: List[str]) -> None:
        import optuna

        settings, sweep_dir = self.settings, self.config.hydra.sweep.dir
        space, fixed, sampler, n_trials = self.search(arguments)
        extend = None
        if settings.custom_search_space:
            extend = configure_function(settings.custom_search_space, self.app_module)
        url, name = storage_url(settings, sweep_dir), study_name(settings, sweep_dir)
        objectives = directions(settings.direction)
        with storages.exclusive(url, name):  # the first process creates the tables, alone
            try:  # a study made with other settings is never joined
                name, note = identity.study_for(self.config, url, name, arguments)
            except SweeperConfigError as err:
                refuse(err)
            if note:
                log.warning(note)
        with storages.exclusive(url, name):
            storage = storages.open_storage(url, settings.heartbeat_interval,
                                            settings.grace_period)
            study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                        pruner=self.pruner, directions=objectives,
                                        load_if_exists=True)
            if [d.name.lower() for d in study.directions] != objectives:
                refuse(f"hydra.sweeper.direction={objectives} is not allowed: study {name!r} in "
                       f"{storages.shown(url)} has {[d.name.lower() for d in study.directions]}; "
                       "use another hydra.sweeper.study_name")
            identity.record(study, self.config, arguments)
            if settings.metric_names and study.metric_names is None:
                study.set_metric_names(list(settings.metric_names))
            for params in settings.enqueue or []:  # once per study, however often it runs
                study.enqueue_trial(OmegaConf.to_container(params), skip_if_exists=True)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)  # how each job finds its trial
        OmegaConf.save(self.config, Path(sweep_dir) / "multirun.yaml")  # as Hydra's sweepers do
        OmegaConf.save({"study_name": name, "storage": url, "pruner": settings.get("pruner")},
                       Path(sweep_dir) / STUDY_FILE)
        log.info(f"Optuna study {name!r} in {storages.shown(url)}: {n_trials} trials, "
                 f"{type(study.sampler).__name__}, {type(study.pruner).__name__}")
        deadline = time.monotonic() + settings.timeout if settings.timeout else math.inf
        Lanes(self, study, storage, url, space, n_trials, fixed, extend, deadline,
              len(objectives)).run()
        if storages.spent(study) >= n_trials:
            self.settle_others(study, url)
        self.report(study, len(objectives))

    def ask(self, study, url: str, space: dict, n_trials: int, size: int = 1) -> dict:
        """The next `size` trials at most, by storage id, within the study's budget after every
        process's trials so far. Empty when the budget is spent."""
        with storages.exclusive(url, study.study_name):
            lost = storages.fail_lost_trials(study, self.settings.grace_period)
            if lost:
                log.warning(f"trials {lost} lost their process (no heartbeat): failed")
            trials = {}
            while len(trials) < size and storages.spent(study) < n_trials:
                self.reseed(study)
                trial = study.ask(space)
                if settle_repeat(study, trial):
                    continue
                trial_id = trial._trial_id
                storages.claim(study._storage, trial_id)  # which process runs it
                storages.beat(study._storage, trial_id)  # alive from the start, never unwatched
                trials[trial_id] = trial
            return trials

    def settle_others(self, study, url: str) -> None:
        """At the study's end, the trials other processes still run: wait while one may still
        end (its heartbeat is fresh, up to the grace period), failing each whose process is
        lost, so that no trial of a spent budget stays RUNNING because nobody came back."""
        from optuna.trial import TrialState

        settings = self.settings
        deadline = time.monotonic() + settings.grace_period + settings.heartbeat_interval
        while time.monotonic() < deadline:
            with storages.exclusive(url, study.study_name):
                lost = storages.fail_lost_trials(study, settings.grace_period)
            if lost:
                log.warning(f"trials {lost} lost their process (no heartbeat): failed")
            if not study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
                return
            time.sleep(1)

    def reseed(self, study) -> None:
        """A seeded sampler draws each trial from its own seed, made of the sampler's seed and
        the trial's number: one process's study is repeatable as before, while workers that
        share a study, and each continuation of it, draw new values instead of replaying the
        first process's (asks are taken in turn, under storages.exclusive, so the number is the
        next trial's). QMC's sequence is its seed's own, by trial number: it is left alone."""
        from hydra.utils import instantiate

        given = self.settings.sampler
        if given.get("seed") is None or given._target_.endswith("QMCSampler"):
            return
        number = len(study.get_trials(deepcopy=False))
        seed = int(np.random.SeedSequence([given.seed, number]).generate_state(1)[0])
        sampler = instantiate(given, seed=seed)
        study.sampler = sampler(self.grid) if self.grid is not None else sampler

    @staticmethod
    def tell(study, number: int, ret, objectives: int) -> bool:
        """COMPLETE with the job's value(s), PRUNED if its pruner stopped it, FAIL otherwise.
        False when the job failed (raised, or returned what is not a value) for max_failure_rate."""
        from optuna.exceptions import TrialPruned as OptunaPruned
        from optuna.trial import TrialState

        raised = ret.status == JobStatus.FAILED and ret._return_value
        if isinstance(raised, (TrialPruned, OptunaPruned)):
            study.tell(number, state=TrialState.PRUNED)  # (return_value would print an error)
            log.info(f"trial {number} pruned: {raised}")
            return True
        try:
            given = ret.return_value
            values = [float(v) for v in (given if objectives > 1 else [given])]
            if len(values) != objectives:
                raise ValueError(f"{len(values)} values for {objectives} directions")
        except Exception as err:
            log.warning(f"trial {number} failed: {type(err).__name__}: {err}")
            study.tell(number, state=TrialState.FAIL)
            return False
        if not all(math.isfinite(v) for v in values):  # an app's failed job, reported as such
            log.warning(f"trial {number} failed (objective {values})")
            study.tell(number, state=TrialState.FAIL)
            return True
        try:
            study.tell(number, values)
        except RuntimeError as err:  # the grid sampler stops the study once its grid is done
            if "Study.stop" not in str(err):
                raise
        return True

    def report(self, study, objectives: int) -> None:
        """The best trial (the Pareto front with several directions), logged and written to
        optimization_results.yaml in the sweep folder, as Hydra's plugin writes it."""
        from optuna.trial import TrialState

        counts = {s: len(study.get_trials(deepcopy=False, states=[TrialState[s]]))
                  for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        log.info("study %r: %s", study.study_name,
                 ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
        if not counts["COMPLETE"]:
            return
        results = {"name": "optuna", "study_name": study.study_name,
                   "trials": {s.lower(): n for s, n in counts.items()}}
        if objectives == 1:
            best = study.best_trial
            log.info(f"Best value {best.value}: trial {best.number}, parameters {best.params}")
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        else:
            front = study.best_trials
            log.info(f"Number of Pareto solutions: {len(front)}")
            results["solutions"] = [{"params": t.params, "values": t.values, "trial": t.number}
                                    for t in front]
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")


def settle_repeat(study, trial) -> bool:
    """A proposal of parameters that the study already has is never evaluated again: it ends at
    once with the earlier trial's outcome (its values, or PRUNED), or FAIL while the earlier one
    is still running or failed, with the user attribute `repeat_of` naming it. Trials queued on
    purpose (`enqueue`, a lost trial's retry) run as given. True when `trial` was settled."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)  # by number
    if "fixed_params" in trials[trial.number].system_attrs:
        return False
    for earlier in trials:
        if earlier.number == trial.number or earlier.params != trial.params:
            continue
        trial.set_user_attr(REPEAT_ATTR, earlier.number)
        if earlier.state == TrialState.COMPLETE:
            study.tell(trial, earlier.values)
        else:
            study.tell(trial, state=TrialState.PRUNED if earlier.state == TrialState.PRUNED
                       else TrialState.FAIL)
        log.info(f"trial {trial.number} proposed trial {earlier.number}'s parameters again: "
                 f"not run, {earlier.state.name.lower()} as that one is")
        return True
    return False

