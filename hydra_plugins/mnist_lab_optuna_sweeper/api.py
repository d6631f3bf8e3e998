"""The sweeper's public API for a task function: the trial a job runs, its reports, its stop.

    from hydra_plugins.mnist_lab_optuna_sweeper.api import TrialPruned, current_trial

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def train(cfg) -> float:
        trial = current_trial()  # None outside an Optuna sweep
        for epoch in range(1, cfg.epochs + 1):
            loss = ...
            if trial is not None:
                trial.report(loss, epoch)
                if trial.should_prune():
                    raise TrialPruned()
        return loss

It works whatever the launcher (tested under basic, joblib and submitit_local): the sweeper
writes the study's name, storage and pruner into the sweep folder (`optuna_study.yaml`), and
each job's number is its trial's number, so a job in any process finds its trial. Importing
this module costs nothing: Optuna is loaded only when a trial is used. (No `from __future__
import annotations`: Hydra's plugin scan imports this module without entering it in
sys.modules, where dataclasses would look the names up.)
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

STUDY_FILE = "optuna_study.yaml"  # in the sweep folder, written by the sweeper


try:  # Hydra's plugin scan executes this module again when an app imported it first: the
    # exception classes must stay the ones the app's code already raises and catches
    TrialPruned, SweeperConfigError  # noqa: B018
except NameError:
    class TrialPruned(Exception):
        """Raised by a task function whose trial the pruner stopped: the sweeper records the
        trial PRUNED, not failed (Optuna's own `optuna.TrialPruned` is taken the same way)."""

    class SweeperConfigError(ValueError):
        """A `hydra.sweeper` setting that can't work: said in one line before anything is
        written."""


@dataclass(frozen=True)
class Trial:
    """The Optuna trial a job runs: its number in its study, and the study it belongs to."""

    number: int
    study_name: str
    storage: str
    pruner: Any = None  # the pruner's config (`_target_` and its arguments), or None

    @cached_property
    def study(self):
        """The Optuna study, opened with the sweep's pruner."""
        import optuna
        from hydra.utils import instantiate

        from hydra_plugins.mnist_lab_optuna_sweeper.storages import open_storage

        pruner = instantiate(self.pruner) if self.pruner else None
        return optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                 pruner=pruner)

    @cached_property
    def _trial(self):
        import optuna

        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.study_name), self.number)
        return optuna.trial.Trial(self.study, trial_id)

    @property
    def params(self) -> dict[str, Any]:
        """The values the sampler chose for this trial."""
        return dict(self._trial.params)

    def report(self, value: float, step: int) -> None:
        """An intermediate value of the objective (one objective only), at `step`."""
        self._trial.report(value, step)

    def should_prune(self) -> bool:
        """Whether the pruner stops this trial, after the values reported so far."""
        return self._trial.should_prune()

    def set_user_attr(self, key: str, value: Any) -> None:
        """A value kept on the trial in the study (optuna-dashboard shows it)."""
        self._trial.set_user_attr(key, value)


def trial_for(sweep_dir: "str | Path | None", job_num: "int | None") -> "Trial | None":
    """The trial job `job_num` of the sweep in `sweep_dir` runs, or None if that sweep is not
    this sweeper's."""
    if sweep_dir is None or job_num is None:
        return None
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    study = OmegaConf.load(path)
    return Trial(int(job_num), study.study_name, study.storage, study.get("pruner"))


def current_trial() -> "Trial | None":
    """The trial the running Hydra job is, or None outside an Optuna sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    sweep_dir = Path(hydra.sweep.dir)  # relative to where the app started, not the job's folder
    return trial_for(sweep_dir if sweep_dir.is_absolute() else Path(hydra.runtime.cwd) / sweep_dir,
                     hydra.job.get("num"))
