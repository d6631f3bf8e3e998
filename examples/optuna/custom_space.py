"""A search space Hydra's grammar can't say: z depends on the x the sampler chose.

    python examples/optuna/custom_space.py -m max_z_difference_from_x=0.3

`hydra.sweeper.custom_search_space` names `configure`, which the sweeper calls with the config
and each new trial after x and y are chosen; a key the config lacks is suggested as `+w`.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="custom_space", config_name="config")
def four_dimensional_sphere(cfg: DictConfig) -> float:
    return cfg.w ** 2 + cfg.x ** 2 + cfg.y ** 2 + cfg.z ** 2


def configure(cfg: DictConfig, trial) -> None:
    x = trial.params["x"]
    spread = cfg.max_z_difference_from_x
    trial.suggest_float("z", x - spread, x + spread)
    trial.suggest_float("+w", 0.0, 1.0)  # `+`: w is not in the config, the override adds it


if __name__ == "__main__":
    four_dimensional_sphere()
