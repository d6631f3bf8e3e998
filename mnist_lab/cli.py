"""Entry points: `train` behind run.py, and the `mnist-lab` console script's subcommands."""

from __future__ import annotations

import argparse
import math
import sys

from omegaconf import DictConfig

from mnist_lab.schema import ConfigError

WORST_OBJECTIVE = math.inf  # what a sweeper sees for a failed job (the objective is minimised)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def train(cfg: DictConfig) -> float:
    """run.py's body. Known input errors end a single run with one line and exit status 2; in a
    sweep, a failed job is reported and scored as the worst objective so the others go on."""
    from mnist_lab.data import DataError
    from mnist_lab.tracking import TrackingError

    try:
        from mnist_lab.job import run

        return run(cfg)
    except (ConfigError, DataError, TrackingError) as err:
        if is_multirun():
            print(f"job failed: {err}", file=sys.stderr)
            return WORST_OBJECTIVE
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if not is_multirun():
            raise
        print(f"job failed: {err.__class__.__name__}: {err}", file=sys.stderr)
        return WORST_OBJECTIVE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from mnist_lab import compare

    compare.add_parser(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
