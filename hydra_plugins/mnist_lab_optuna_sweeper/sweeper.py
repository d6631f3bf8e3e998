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
    """Records a beat for each trial now and every `interval` seconds, until the block ends."""

    def __init__(self, storage, trial_ids: list[int], interval: float):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)

    def __enter__(self):
        for trial_id in self.trial_ids:
            self.storage.record_heartbeat(trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: str, storage: Optional[str],
                 study_name: Optional[str], n_trials: int, n_jobs: int, heartbeat_interval: int,
                 grace_period: int, params: Optional[DictConfig]) -> None:
        # sampler and pruner arrive built by Hydra's instantiate; the rest is re-read from
        # hydra.sweeper in setup, where the config is checked
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
        storage = studies.open_storage(url, settings)
        with studies.exclusive(url, name):
            try:
                study = studies.open_study(storage, name, settings.direction, self.sampler,
                                           self.pruner)
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
        study_id = storage.get_study_id_from_name(name)
        log.info(f"Optuna study {name!r} in {studies.shown(url)}: {settings.n_trials} trials, "
                 f"{type(self.sampler).__name__}, {type(self.pruner).__name__}")
        while True:
            with studies.exclusive(url, name):
                optuna.storages.fail_stale_trials(study)  # trials of processes that died
                size = min(settings.n_jobs, settings.n_trials - studies.spent(study))
                if size <= 0:
                    break
                trials = [study.ask(space) for _ in range(size)]
                ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                       for t in trials]
                beat = Heartbeat(storage, ids, settings.heartbeat_interval).__enter__()
            try:
                batch = [[*fixed, *(search_space.as_override(k, v) for k, v in t.params.items()),
                          search_space.as_override(f"+hydra.job.env_set.{studies.STUDY_ENV}", name),
                          f"+hydra.job.env_set.{studies.TRIAL_ENV}={t.number}"] for t in trials]
                # a batch's numbers are consecutive (asked under the lock), so job number =
                # trial number: workers sharing a sweep folder write to different subfolders
                returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
                for trial, ret in zip(trials, returns):
                    self.tell(study, trial.number, ret)
            except BaseException:  # Ctrl-C, or the launcher itself failed: these trials end
                for trial, trial_id in zip(trials, ids):
                    if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
                        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                raise
            finally:
                beat.__exit__()
        self.report(study)

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
        if not math.isfinite(value):  # run.py's score for a job that failed (cli.train)
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
