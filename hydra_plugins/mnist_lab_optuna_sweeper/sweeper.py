"""The Sweeper: ask Optuna for trials, run them through the launcher, tell Optuna how they ended.

Trials go to the launcher in batches of `n_jobs` (basic, joblib or submitit alike). Each job
learns its study and trial number from the environment (`+hydra.job.env_set`, outside the user's
config) and reports `val/loss` after every epoch to that trial (mnist_lab/pruning.py); a job
stopped by the pruner raises TrialPruned, which comes back in its JobReturn.

Any number of processes may run the same command on one study: asking is done under a lock
held in the database (mnist_lab.study.exclusive), after counting every trial already asked, so
`n_trials` is the study's budget, not each process's. While a batch runs, this process beats a
heartbeat for its trials; a trial whose process died (no beat for `grace_period`) is failed by
the next process that asks, so it never holds up the others.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mnist_lab_optuna_sweeper import search_space

log = logging.getLogger(__name__)


class Heartbeat:
    """Records a beat for each trial every `interval` seconds until the block ends."""

    def __init__(self, storage, trial_ids: list[int], interval: float):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, **settings: Any) -> None:
        # sampler and pruner arrive built by Hydra's instantiate; the other keys are read from
        # hydra.sweeper in setup, once they are checked
        self.sampler, self.pruner = sampler, pruner
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from mnist_lab.errors import ConfigError
        from mnist_lab.study import check

        self.config = config
        self.settings = config.hydra.sweeper
        try:
            check(self.settings)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        with warnings.catch_warnings():
            # heartbeats outside Study.optimize are what this sweeper is built on
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            from optuna.exceptions import ExperimentalWarning

            warnings.filterwarnings("ignore", category=ExperimentalWarning)
            self._sweep(arguments)

    def _sweep(self, arguments: List[str]) -> None:
        import optuna

        from mnist_lab import study as studies
        from mnist_lab.context import STUDY_ENV, TRIAL_ENV
        from mnist_lab.errors import ConfigError

        settings = self.settings
        params = [f"{k}={v}" for k, v in (settings.params or {}).items()]
        try:
            space, fixed = search_space.parse(params + list(arguments))
        except ValueError as err:
            print(f"error: hydra.sweeper.params: {err}", file=sys.stderr)
            sys.exit(2)
        url = studies.storage_url(settings, self.config.tracking)
        name = studies.study_name(settings, self.config.hydra)
        with studies.exclusive(url, name):  # the first process creates the tables, alone
            storage = studies.open_storage(url, settings)
            try:
                study = studies.open_study(storage, name, settings.direction, self.sampler,
                                           self.pruner)
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
        log.info(f"Optuna study {name!r} in {studies.shown(url)}: {settings.n_trials} trials, "
                 f"{type(self.sampler).__name__}, {type(self.pruner).__name__}")
        while trials := self.ask(study, storage, url, space):
            overrides = [[*fixed, *(search_space.as_override(k, v) for k, v in t.params.items()),
                          search_space.as_override(f"+hydra.job.env_set.{STUDY_ENV}", name),
                          f"+hydra.job.env_set.{TRIAL_ENV}={t.number}"]
                         for t in trials.values()]
            with Heartbeat(storage, list(trials), settings.heartbeat_interval):
                try:
                    # a batch's numbers are consecutive (asked under the lock), so job number =
                    # trial number: workers sharing a sweep folder write to different subfolders
                    returns = self.launcher.launch(
                        overrides, initial_job_idx=min(t.number for t in trials.values()))
                    for trial, ret in zip(trials.values(), returns):
                        self.tell(study, trial.number, ret)
                except BaseException:  # Ctrl-C, or the launcher failed: its trials end here
                    for trial_id, trial in trials.items():
                        if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
                            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                    raise
        self.report(study)

    def ask(self, study, storage, url: str, space: dict) -> dict:
        """The next batch of trials, by storage id: up to n_jobs, within the study's budget
        after every process's trials so far. Empty when the budget is spent."""
        import optuna

        from mnist_lab import study as studies

        with studies.exclusive(url, study.study_name):
            optuna.storages.fail_stale_trials(study)  # the trials of processes that died
            size = min(self.settings.n_jobs, self.settings.n_trials - studies.spent(study))
            trials = {}
            for _ in range(max(size, 0)):
                trial = study.ask(space)
                trial_id = storage.get_trial_id_from_study_id_trial_number(
                    storage.get_study_id_from_name(study.study_name), trial.number)
                storage.record_heartbeat(trial_id)  # alive from the start, never unwatched
                trials[trial_id] = trial
            return trials

    @staticmethod
    def tell(study, number: int, ret) -> None:
        """COMPLETE with the job's value, PRUNED if the pruner stopped it, FAIL otherwise."""
        from optuna.trial import TrialState

        from mnist_lab.errors import TrialPruned

        if ret.status == JobStatus.FAILED and isinstance(ret._return_value, TrialPruned):
            study.tell(number, state=TrialState.PRUNED)  # (return_value would print an error)
            log.info(f"trial {number} {ret._return_value}")
            return
        try:
            value = float(ret.return_value)
        except Exception as err:
            log.warning(f"trial {number} failed: {type(err).__name__}: {err}")
            study.tell(number, state=TrialState.FAIL)
            return
        if not math.isfinite(value):  # run.py's score for a job that failed (policy.run_job)
            log.warning(f"trial {number} failed (objective {value})")
            study.tell(number, state=TrialState.FAIL)
            return
        study.tell(number, value)

    def report(self, study) -> None:
        """The best trial so far, logged and written to optimization_results.yaml."""
        from optuna.trial import TrialState

        counts = {s: len(study.get_trials(deepcopy=False, states=[TrialState[s]]))
                  for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        log.info("study %r: %s", study.study_name,
                 ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
        if not counts["COMPLETE"]:
            return
        best = study.best_trial
        log.info(f"Best value {best.value}: trial {best.number}, parameters {best.params}")
        results = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                   "best_params": best.params, "best_value": best.value,
                   "trials": {s.lower(): n for s, n in counts.items()}}
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
