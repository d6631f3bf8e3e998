"""The lab's input errors. Each message names the key or file, the value and the fix.

Kept free of torch and MLflow imports so run.py can report a bad config in well under a second.
"""

from hydra_plugins.mnist_lab_optuna_sweeper.api import TrialPruned as SweeperTrialPruned


class LabError(Exception):
    """Bad input: reported in one line, exit status 2, before any work starts."""


class ConfigError(LabError, ValueError):
    """A config value is out of range."""


class DataError(LabError):
    """A data file is missing, corrupt or inconsistent."""


class TrackingError(LabError, RuntimeError):
    """The tracking store can't be used."""


class CheckpointError(LabError, RuntimeError):
    """A checkpoint or state_dict can't be loaded safely."""


class ModelSourceError(RuntimeError):
    """The requested model can't be found or loaded; the message says which and why."""


class DivergedError(RuntimeError):
    """The training loss became non-finite or exploded past `train.divergence_loss`.

    Not bad input (training had started): a single run reports it in one line, exit status 1.
    """


class TrialPruned(SweeperTrialPruned):
    """An Optuna trial's pruner stopped the run after `epoch` (not an error: the sweeper tells
    Optuna PRUNED). Its only argument is the epoch, so it pickles back from any launcher."""

    def __init__(self, epoch: int):
        super().__init__(epoch)
        self.epoch = epoch

    def __str__(self) -> str:
        return f"pruned after epoch {self.epoch}"
