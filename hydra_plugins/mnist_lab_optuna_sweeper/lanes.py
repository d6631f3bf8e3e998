"""Trials in lanes: a slot freed by a trial that ends (or is pruned) takes the next trial at
once, instead of waiting for the rest of its batch (the sweeper's `Lanes`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, List

from hydra_plugins.mnist_lab_optuna_sweeper import search_space, storages

log = logging.getLogger(__name__)


class Lanes:
    """Trials run as `n_jobs` lanes, each asking for one trial, launching it alone and, once
    it ends (or is pruned), asking for the next: a slot is refilled at once instead of waiting
    for the rest of a batch. A launcher that runs jobs in this process (Hydra's basic one) gets
    one lane; `refill: false` gives Hydra's batches, as does a launcher whose `takes_batches` is
    true (it trains a batch's trials together). `max_failure_rate` is applied, as Hydra
    applies it after each batch, to each `n_jobs` trials in the order they end; the sweep then
    stops with the job's own error."""

    def __init__(self, sweeper, study, storage, url: str, space: dict,
                 n_trials: int, fixed: List[str], extend, deadline: float, objectives: int):
        self.sweeper, self.study, self.storage, self.url = sweeper, study, storage, url
        self.space, self.n_trials, self.fixed, self.extend = space, n_trials, fixed, extend
        self.deadline, self.objectives = deadline, objectives
        in_process = type(sweeper.launcher).__module__.endswith("basic_launcher")
        # a launcher that trains a batch's jobs together (the lab's stacked one) gets batches
        self.whole_batches = getattr(sweeper.launcher, "takes_batches", False)
        self.count = 1 if in_process and not self.whole_batches else sweeper.settings.n_jobs
        self.ended: List[tuple] = []  # (told as valued, JobReturn), in the order trials end
        self.judged = 0  # trials of `ended` whose failure rate was applied
        self.running: dict = {}  # trial id -> trial number, of this process
        self.stop = threading.Event()
        self.problems: List[Any] = []  # what stops the sweep: an exception, or a failed job
        self.guard = threading.Lock()

    def run(self) -> None:
        if (self.whole_batches or not self.sweeper.settings.refill) and self.count > 1:
            self.batches()
        elif self.count == 1:
            self.lane()
        else:
            lanes = [threading.Thread(target=self.lane, daemon=True, name=f"optuna-lane-{i}")
                     for i in range(self.count)]
            try:
                for lane in lanes:
                    lane.start()
                while any(lane.is_alive() for lane in lanes):
                    for lane in lanes:
                        lane.join(0.2)
            except BaseException:  # Ctrl-C in this thread: the trials still running end here
                self.stop.set()
                self.fail_running()
                raise
        with self.guard:
            self.judge(final=True)
        if self.problems:
            problem = self.problems[0]
            if isinstance(problem, BaseException):
                raise problem
            problem.return_value  # raises the job's own error, with its traceback

    def lane(self) -> None:
        from optuna.trial import TrialState

        settings = self.sweeper.settings
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            asked = self.sweeper.ask(self.study, self.url, self.space, self.n_trials)
            if not asked:
                return
            ((trial_id, trial),) = asked.items()
            if self.extend is not None:
                self.extend(self.sweeper.config, trial)
            self.running[trial_id] = trial.number
            with storages.Heartbeat(self.storage, [trial_id], settings.heartbeat_interval):
                try:
                    (ret,) = self.sweeper.launcher.launch([self.overrides(trial)],
                                                          initial_job_idx=trial.number)
                except BaseException as err:  # Ctrl-C, or the launcher failed: the trial ends
                    if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                        self.study.tell(trial.number, state=TrialState.FAIL)
                    self.running.pop(trial_id, None)
                    self.problems.append(err)
                    self.stop.set()
                    return
            valued = self.sweeper.tell(self.study, trial.number, ret, self.objectives)
            self.running.pop(trial_id, None)
            with self.guard:
                self.ended.append((valued, ret))
                self.judge(final=False)

    def batches(self) -> None:
        """refill=false: Hydra's way, `n_jobs` trials asked and launched together, the next
        batch once the slowest of them ends (a repeated proposal's gap splits a batch, since
        a launch numbers its jobs one after another)."""
        settings = self.sweeper.settings
        while not self.problems and time.monotonic() < self.deadline:
            asked = self.sweeper.ask(self.study, self.url, self.space, self.n_trials,
                                     size=settings.n_jobs)
            if not asked:
                return
            runs: List[list] = []
            for trial_id, trial in asked.items():
                if self.extend is not None:
                    self.extend(self.sweeper.config, trial)
                if not runs or runs[-1][-1][1].number + 1 != trial.number:
                    runs.append([])
                runs[-1].append((trial_id, trial))
            self.running.update({i: t.number for i, t in asked.items()})
            with storages.Heartbeat(self.storage, list(asked), settings.heartbeat_interval):
                try:
                    for run in runs:
                        returns = self.sweeper.launcher.launch(
                            [self.overrides(t) for _, t in run], initial_job_idx=run[0][1].number)
                        for (trial_id, trial), ret in zip(run, returns):
                            valued = self.sweeper.tell(self.study, trial.number, ret,
                                                       self.objectives)
                            self.running.pop(trial_id, None)
                            self.ended.append((valued, ret))
                except BaseException:
                    self.fail_running()
                    raise
            self.judge(final=True)

    def overrides(self, trial) -> List[str]:
        return [*self.fixed, *(search_space.as_override(k, v) for k, v in trial.params.items())]

    def judge(self, final: bool) -> None:
        """max_failure_rate over each `n_jobs` trials that ended (the last, fewer, at the end),
        as Hydra judges each batch, whatever the number of lanes."""
        size = self.sweeper.settings.n_jobs
        while len(self.ended) - self.judged >= size or (final and len(self.ended) > self.judged):
            batch = self.ended[self.judged:self.judged + size]
            self.judged += len(batch)
            failed = [ret for valued, ret in batch if not valued]
            rate = self.sweeper.settings.max_failure_rate
            if failed and len(failed) / len(batch) > rate and not self.problems:
                log.error(f"Failed {len(failed)} times out of {len(batch)} with "
                          f"max_failure_rate={rate}.")
                self.problems.append(failed[-1])
                self.stop.set()

    def fail_running(self) -> None:
        from optuna.trial import TrialState

        for trial_id, number in list(self.running.items()):
            if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                self.study.tell(number, state=TrialState.FAIL)
