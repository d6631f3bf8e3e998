"""A Hydra app that knows nothing of mnist-lab, swept by its Optuna sweeper (docs/hydra-app.md):

    python examples/optuna/sphere.py -m                       # 20 TPE trials over x and y
    python examples/optuna/sphere.py -m x='choice(0, 1, 2)' y=0
    python examples/optuna/sphere.py -m error=true hydra.sweeper.max_failure_rate=0.5

It returns x^2 + y^2, the value the sweeper minimises; `error=true` makes every job fail.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return cfg.x ** 2 + cfg.y ** 2


if __name__ == "__main__":
    sphere()
