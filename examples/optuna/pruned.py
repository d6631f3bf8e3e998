"""A task function that reports to its trial and stops when the pruner says, with the sweeper's
public API (hydra_plugins/mnist_lab_optuna_sweeper/api.py), under any launcher:

    python examples/optuna/pruned.py -m
    python examples/optuna/pruned.py -m hydra/launcher=joblib hydra.sweeper.n_jobs=2

Each step's loss is (x - 2)^2 + 1/step: a trial whose x is far from 2 is pruned early.
"""

import hydra
from omegaconf import DictConfig

from hydra_plugins.mnist_lab_optuna_sweeper.api import TrialPruned, current_trial


@hydra.main(version_base="1.3", config_path="pruned", config_name="config")
def descend(cfg: DictConfig) -> float:
    trial = current_trial()  # None when the app runs without the Optuna sweeper
    loss = float("inf")
    for step in range(1, cfg.steps + 1):
        loss = (cfg.x - 2) ** 2 + 1 / step
        if trial is not None:
            trial.report(loss, step)
            if trial.should_prune():
                raise TrialPruned(f"step {step}")
    if trial is not None:
        trial.set_user_attr("steps", cfg.steps)
    return loss


if __name__ == "__main__":
    descend()
