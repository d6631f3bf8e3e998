"""Two objectives at once (Binh and Korn's test problem): the sweeper keeps the Pareto front.

    python examples/optuna/two_objectives.py -m     # NSGA-II, 20 trials

optimization_results.yaml then lists `solutions`, the trials no other trial beats on both values.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="two_objectives", config_name="config")
def binh_korn(cfg: DictConfig) -> tuple[float, float]:
    first = 4 * cfg.x ** 2 + 4 * cfg.y ** 2
    second = (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2
    return first, second


if __name__ == "__main__":
    binh_korn()
