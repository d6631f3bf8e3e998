"""Train and evaluate one configuration, or sweep many with `-m`.

    python run.py model=cnn optim.lr=1e-3
    python run.py -m optim.lr=1e-3,1e-4 dropout.p=0.0,0.2,0.5
    python run.py -m experiment=notebook
"""

import os
import sys

import hydra
from omegaconf import DictConfig

import mnist_lab.schema  # noqa: F401  registers the config schemas before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from mnist_lab.policy import run_job

    return run_job(cfg)


if __name__ == "__main__":
    # MLflow's per-file download bars would interrupt a sweep's summary; =true shows them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mnist_lab.preflight import first_problem

    problem = first_problem(sys.argv[1:])  # a bad override: one line, exit 2, no outputs/ folder
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
