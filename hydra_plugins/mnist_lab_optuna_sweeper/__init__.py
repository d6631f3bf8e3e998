"""The lab's Optuna sweeper for Hydra: `override /hydra/sweeper: optuna`, on current Optuna.

Same keys as Hydra's own `hydra-optuna-sweeper` (direction, n_trials, n_jobs, study_name, storage,
sampler, params), plus `pruner`, and a study that several processes or machines can share.
`config` registers the configs; `sweeper` holds the Sweeper, which Hydra finds by scanning the
`hydra_plugins` namespace package.
"""
