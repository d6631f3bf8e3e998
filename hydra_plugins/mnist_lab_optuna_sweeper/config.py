"""The sweeper's config, its samplers and its pruners, registered in Hydra's ConfigStore.

Imported by Hydra's plugin scan on every start-up, so it imports neither Optuna nor the lab.
Samplers and pruners are Optuna's own classes built by `_target_`: any of their arguments is a key
(`hydra.sweeper.pruner.n_warmup_steps=1`). No `from __future__ import annotations`: Hydra's scan
runs this module without entering it in sys.modules, where dataclasses would look the names up.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: Optional[bool] = None
    constant_liar: bool = True  # workers sharing a study spread out instead of asking alike


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    use_separable_cma: bool = False
    with_margin: bool = False


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # completed trials before any pruning
    n_warmup_steps: int = 0  # epochs a trial always trains
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf(MedianPrunerConf):
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0  # prune below the best 25% (median: 50)


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    # epochs before the first rung (Optuna's default, auto, waits for a first trial to finish)
    min_resource: Any = 1
    reduction_factor: int = 3  # a third goes on at each rung (Optuna's default: 4, a quarter)
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # the epochs of a full trial, or auto (the first trial's)
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_lab_optuna_sweeper.sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: str = "minimize"  # minimize | maximize: run.py returns the best val/loss
    # null: optuna.db beside the local MLflow store; sqlite:///... or postgresql://... to share
    storage: Optional[str] = None
    study_name: Optional[str] = None  # null: a study per sweep folder; a name joins/continues it
    n_trials: int = 20  # the study's budget, across every process that joins it
    n_jobs: int = 2  # trials asked at once and handed to the launcher together
    heartbeat_interval: int = 20  # seconds between a running trial's signs of life
    grace_period: int = 120  # seconds without one before a trial counts as lost (FAIL)
    params: Optional[Dict[str, str]] = None  # key: interval(a, b) | tag(log, ...) | choice | range


def register() -> None:
    cs = ConfigStore.instance()
    provider = "mnist_lab_optuna_sweeper"
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=provider)
    for group, nodes in {
        "sampler": {"tpe": TPESamplerConf, "random": RandomSamplerConf, "cmaes": CmaEsSamplerConf,
                    "gp": GPSamplerConf},
        "pruner": {"none": NopPrunerConf, "median": MedianPrunerConf,
                   "percentile": PercentilePrunerConf,
                   "successive_halving": SuccessiveHalvingPrunerConf,
                   "hyperband": HyperbandPrunerConf},
    }.items():
        for name, node in nodes.items():
            cs.store(group=f"hydra/sweeper/{group}", name=name, node=node, provider=provider)


register()
