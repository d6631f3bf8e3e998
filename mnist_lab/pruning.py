"""The per-epoch step of a job that is an Optuna trial: report `val/loss`, stop if told to.

The job's context holds its trial, found through the sweeper's public API
(hydra_plugins/mnist_lab_optuna_sweeper/api.py), so nothing is added to the user's config.
Outside such a sweep `trial_hook` gives None and the loop runs as always.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mnist_lab.context import JobContext
from mnist_lab.errors import TrialPruned

OBJECTIVE = "val/loss"  # what each epoch reports; run.py's objective is its best value


class ReportToTrial:
    """After each epoch: report the validation loss to the trial, raise TrialPruned if its
    pruner says the trial is not worth finishing. After the last epoch there is nothing left
    to save, so the trial completes (and is tested) whatever the pruner would say."""

    def __init__(self, trial, epochs: int):
        self.trial, self.epochs = trial, epochs
        self.tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)}

    def __call__(self, state, metrics: dict[str, float]) -> None:
        """Epoch callback (see loop.fit)."""
        self.trial.report(metrics[OBJECTIVE], state.epoch)
        if state.epoch < self.epochs and self.trial.should_prune():
            raise TrialPruned(state.epoch)


def trial_hook(cfg: DictConfig, ctx: JobContext) -> ReportToTrial | None:
    """The hook for this job's trial, or None when the job is not one."""
    return ReportToTrial(ctx.trial, cfg.train.epochs) if ctx.trial is not None else None
