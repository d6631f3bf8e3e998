"""The sweeper's config, its samplers and its pruners, registered in Hydra's ConfigStore.

Every key of Hydra's own `hydra-optuna-sweeper`, with its meaning there (sampler, direction, one
or a list, storage, study_name, n_trials, n_jobs, max_failure_rate, params, custom_search_space,
and the deprecated search_space), and its samplers tpe, random, cmaes, nsgaii, qmc, grid and gp;
plus a pruner, a timeout, trials to enqueue, objective names, and heartbeats for shared studies.
Samplers and pruners are Optuna's own classes built by `_target_`: any of their arguments is a
key (`hydra.sweeper.pruner.n_warmup_steps=1`).

Imported by Hydra's plugin scan on every start-up, so it imports neither Optuna nor any app. No
`from __future__ import annotations`: Hydra's scan runs this module without entering it in
sys.modules, where dataclasses would look the names up.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: Optional[bool] = None
    warn_independent_sampling: Optional[bool] = None
    constant_liar: bool = True  # workers sharing a study spread out instead of asking alike


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"
    scramble: bool = False
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GridSamplerConf:
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True  # its search_space comes from hydra.sweeper.params at run time
    seed: Optional[int] = None


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    warn_independent_sampling: bool = True


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # completed trials before any pruning
    n_warmup_steps: int = 0  # steps a trial always runs
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf(MedianPrunerConf):
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0  # prune below the best 25% (median: 50)


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    # steps before the first rung (Optuna's default, auto, waits for a first trial to finish)
    min_resource: Any = 1
    reduction_factor: int = 3  # a third goes on at each rung (Optuna's default: 4, a quarter)
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # the steps of a full trial, or auto (the first trial's)
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_lab_optuna_sweeper.sweeper.OptunaSweeper"
    # the sampler and pruner reach the sweeper as configs, built once they are checked, so that
    # Optuna's refusal of an argument is one line, not an error from inside Hydra
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    # minimize | maximize, or a list of them: the task function returns that many values
    direction: Any = "minimize"
    # null: optuna.db in the sweep folder; sqlite:///..., postgresql://... or journal:///...
    storage: Optional[str] = None
    study_name: Optional[str] = None  # null: a study per sweep folder; a name joins/continues it
    n_trials: int = 20  # the study's budget, across every process that joins it
    n_jobs: int = 2  # trials run at once by the launcher
    # true: a trial that ends frees its slot for the next at once; false: Hydra's batches of
    # n_jobs, each waiting for its slowest trial
    refill: bool = True
    max_failure_rate: float = 0.0  # of a batch; above it the sweep stops with the job's error
    search_space: Optional[Dict[str, Any]] = None  # deprecated by Hydra: use params
    params: Optional[Dict[str, str]] = None  # key: interval(a, b) | tag(log, ...) | choice | range
    custom_search_space: Optional[str] = None  # dotted path to configure(cfg, trial)
    # beyond Hydra's plugin
    pruner: Any = MISSING
    timeout: Optional[float] = None  # seconds: no trial starts after this
    enqueue: Optional[List[Dict[str, Any]]] = None  # parameters tried first, in order
    metric_names: Optional[List[str]] = None  # the objectives' names, one per direction
    heartbeat_interval: int = 20  # seconds between a running trial's signs of life
    grace_period: int = 120  # seconds without one before a trial counts as lost (FAIL)
    # config keys (and the keys under them) that change no result, left out of the study's
    # identity (identity.py): output folders, logging, ...
    identity_ignore: List[str] = field(default_factory=list)


def register() -> None:
    cs = ConfigStore.instance()
    provider = "mnist_lab_optuna_sweeper"
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=provider)
    for group, nodes in {
        "sampler": {"tpe": TPESamplerConf, "random": RandomSamplerConf, "cmaes": CmaEsSamplerConf,
                    "nsgaii": NSGAIISamplerConf, "qmc": QMCSamplerConf, "grid": GridSamplerConf,
                    "gp": GPSamplerConf},
        "pruner": {"none": NopPrunerConf, "median": MedianPrunerConf,
                   "percentile": PercentilePrunerConf,
                   "successive_halving": SuccessiveHalvingPrunerConf,
                   "hyperband": HyperbandPrunerConf},
    }.items():
        for name, node in nodes.items():
            cs.store(group=f"hydra/sweeper/{group}", name=name, node=node, provider=provider)


register()
