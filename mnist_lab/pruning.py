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

    def __init__(self, trial, epochs: int, report: bool = True):
        self.trial, self.epochs, self.report = trial, epochs, report
        self.tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)}

    def record_run(self, run_id: str | None) -> None:
        """The trial's MLflow run, kept on the trial (optuna-dashboard shows it)."""
        if run_id:
            self.trial.set_user_attr("mlflow_run_id", run_id)

    def __call__(self, state, metrics: dict[str, float]) -> None:
        """Epoch callback (see loop.fit); nothing with several objectives, which Optuna cannot
        prune."""
        if not self.report:
            return
        self.trial.report(metrics[OBJECTIVE], state.epoch)
        if state.epoch < self.epochs and self.trial.should_prune():
            raise TrialPruned(state.epoch)


def trial_hook(cfg: DictConfig, ctx: JobContext) -> ReportToTrial | None:
    """The hook for this job's trial, or None when the job is not one."""
    if ctx.trial is None:
        return None
    return ReportToTrial(ctx.trial, cfg.train.epochs, report=len(cfg.objectives) == 1)
