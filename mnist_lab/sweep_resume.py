"""Resume a whole sweep: `resume=true` (or `resume=PARENT_RUN_ID`) in a multirun continues it.

A sweep is known by the `sweep.key` tag on its MLflow parent: a hash of what its jobs compute (the
task overrides that identify runs, the sweeper's search space, the composed config), so the same
command finds it again whatever its launcher or store options. The sweep module reopens that
parent and points Hydra at the sweep's own folder, so jobs keep their numbers and folders. Each job
then looks up its earlier run under the parent (tags `sweep.job` and `config_key`) and does what
that run needs: nothing if it FINISHED (its objective goes back to the sweeper as recorded),
continue from its checkpoint in the same run if it was interrupted, start afresh if it FAILED or
never ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mnist_lab import checkpoint
from mnist_lab.context import JobContext
from mnist_lab.errors import ConfigError
from mnist_lab.identity import config_key, identifies_run
from mnist_lab.queries import JOB_TAG, KEY_TAG, SEARCH_TAG, children, sweeps
from mnist_lab.resume import Resume
from mnist_lab.tracking import job_tags


class NothingToResume(Exception):
    """The sweep asked for is complete: said in one line, exit status 0, nothing launched."""


def identity_overrides(overrides) -> dict[str, str]:
    """The task overrides that change what the jobs compute, as key -> value."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {key: value for key, value in pairs if identifies_run(key.lstrip("+~"))}


def search_space(config: DictConfig) -> dict:
    sweeper = config.hydra.sweeper
    params = sweeper.get("params")
    return {"sweeper": sweeper.get("_target_", ""),
            "params": OmegaConf.to_container(params, resolve=False) if params else {}}


def sweep_key(config: DictConfig) -> str:
    """What identifies a sweep: its identifying overrides (in order: they number the jobs), its
    experiment, its search space, and what its composed config computes."""
    choices = config.hydra.runtime.choices
    jobs = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    with read_write(jobs), open_dict(jobs):  # what `${hydra:...}` would give each job
        for group in jobs.get("choices", {}):
            jobs.choices[group] = choices.get(group)
        if "output_dir" in jobs:
            jobs.output_dir = None  # each job's own folder: not what it computes
    parts = [list(identity_overrides(config.hydra.overrides.task).items()),
             choices.get("experiment"), search_space(config), config_key(jobs)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def new_sweep_tags(config: DictConfig) -> dict[str, str]:
    """Tags a new sweep's parent gets so that `resume=true` finds it again."""
    return {KEY_TAG: sweep_key(config), SEARCH_TAG: json.dumps(search_space(config))}


def complete(parent) -> bool:
    return parent.info.status == "FINISHED" and parent.data.tags.get("sweep.failed") == "0"


def differences(parent, config: DictConfig) -> str:
    """What differs between the sweep `parent` ran and this one, in a few words."""
    if KEY_TAG not in parent.data.tags:
        return "it was made before sweeps could be resumed"
    then = identity_overrides(parent.data.tags.get("hydra.overrides", "").split())
    now = identity_overrides(config.hydra.overrides.task)
    changed = [f"{k}={then[k]} is now {k}={now[k]}" for k in then if k in now and then[k] != now[k]]
    changed += [f"{k}={v} is gone" for k, v in then.items() if k not in now]
    changed += [f"{k}={v} is new" for k, v in now.items() if k not in then]
    if changed:
        return "; ".join(changed)
    if list(then) != list(now):
        return f"the overrides come in another order ({' '.join(then)}), which renumbers the jobs"
    if parent.data.tags.get(SEARCH_TAG) != json.dumps(search_space(config)):
        return (f"the sweeper's search space was {parent.data.tags.get(SEARCH_TAG)}, now "
                f"{json.dumps(search_space(config))}")
    return "the same overrides compose another config (a file in conf/ or experiments/ changed)"


def not_running(parent):
    """`parent`, unless its sweep still runs: the store is reconciled first (liveness), so a
    RUNNING parent has a live process."""
    if parent.info.status == "RUNNING":
        tags = parent.data.tags
        raise ConfigError(f"sweep {parent.info.run_id} is still running (process "
                          f"{tags.get('pid', '?')} on {tags.get('host', '?')}); stop it or let "
                          "it finish before resuming it")
    return parent


def find_sweep(client, experiment_id: str, config: DictConfig):
    """The parent run `resume` asks this multirun to continue; ConfigError if there is none that
    matches or it still runs, NothingToResume if the one that matches is complete. Dead RUNNING
    runs must be reconciled KILLED first (liveness.reconcile)."""
    key, named = sweep_key(config), Resume.of(config).run_id
    if named:
        try:
            parent = client.get_run(named)
        except Exception:
            raise ConfigError(f"resume={named}: no such run in this store; in a sweep (-m), "
                              "resume= takes true or the sweep's parent run id") from None
        if parent.data.tags.get("sweep") != "true":
            raise ConfigError(f"resume={named}: that run is not a sweep's parent; in a sweep "
                              "(-m), resume= takes true or the sweep's parent run id")
        if parent.data.tags.get(KEY_TAG) != key:
            raise ConfigError(f"resume={named}: that sweep ran another configuration: "
                              f"{differences(parent, config)}")
        if complete(parent):
            raise NothingToResume(f"sweep {named} finished with every job done; nothing to "
                                  "resume")
        return not_running(parent)
    found = sweeps(client, [experiment_id])
    same = [s for s in found if s.data.tags.get(KEY_TAG) == key]
    unfinished = [s for s in same if not complete(s)]
    if unfinished:
        return not_running(unfinished[0])
    if same:
        raise NothingToResume(f"the sweep with this configuration ({same[0].info.run_id}) "
                              "finished with every job done; nothing to resume (drop "
                              "resume=true for a new sweep)")
    others = [s for s in found if not complete(s)]
    if others:
        raise ConfigError(f"resume=true: no unfinished sweep has this configuration; the latest "
                          f"one ({others[0].info.run_id}) differs: "
                          f"{differences(others[0], config)}")
    raise ConfigError("resume=true: this store has no unfinished sweep to continue; drop "
                      "resume=true to start one")


def continue_job(cfg: DictConfig, ctx: JobContext) -> dict | None:
    """What this job of a resumed sweep starts from: its earlier run's last checkpoint if that
    run was interrupted; {"complete": True, "best_val_loss": ...} if it FINISHED; None (a fresh
    run) if it FAILED, never ran, or left no checkpoint of its own. A run replaced by a fresh
    one goes to MLflow's trash, so the sweep keeps one run per job."""
    from mnist_lab.store import connect

    client, _ = connect(cfg.tracking)
    tags = job_tags(cfg, ctx)
    mine = [r for r in children(client, ctx.parent_id)
            if all(r.data.tags.get(k) == v for k, v in tags.items())]
    job = f"job {tags.get(JOB_TAG, '?')}"
    if not mine:
        print(f"{job}: not run before in this sweep; starting it")
        return None
    run = mine[-1]
    status = run.info.status
    if status == "FINISHED":
        print(f"{job}: run {run.info.run_id} FINISHED already; kept as it is")
        report = Path(cfg.output_dir) / "report.txt"
        if not report.is_file():  # killed between its record and its report: the run has it
            with contextlib.suppress(Exception):  # a run from before runs logged their report
                client.download_artifacts(run.info.run_id, "report.txt", str(report.parent))
        return {"complete": True,
                "best_val_loss": run.data.metrics.get("best/val_loss", math.inf)}
    reason = "FAILED"
    if status in ("KILLED", "RUNNING"):
        path = Path(run.data.tags.get("checkpoint.path", ""))
        saved = checkpoint.load_safely(path) if path.is_file() else {}
        if saved.get("run_id") == run.info.run_id and saved.get("config_key") == tags["config_key"]:
            print(f"{job}: continuing run {run.info.run_id} from {path} after epoch "
                  f"{saved['epoch']}")
            return saved
        reason = f"{status} without a checkpoint of its own"
    client.delete_run(run.info.run_id)
    print(f"{job}: run {run.info.run_id} {reason}; it goes to MLflow's trash and the job starts "
          "afresh")
    return None


def retry_lost_trials(client, parent_id: str, config: DictConfig) -> None:
    """A resumed Optuna sweep tries again each trial that failed or was lost (no heartbeat for
    the grace period) and is not retried yet: its parameters are queued as the study's next
    trial, and its MLflow run goes to the trash, as a grid's failed job's does."""
    import optuna

    from hydra_plugins.mnist_lab_optuna_sweeper import storages
    from mnist_lab.study import study_name

    sweeper = config.hydra.sweeper
    url, name = sweeper.storage, study_name(config)  # the lab's storage: study.lab_defaults
    with storages.exclusive(url, name):
        storage = storages.open_storage(url, sweeper.heartbeat_interval, sweeper.grace_period)
        study = optuna.load_study(study_name=name, storage=storage)
        storages.fail_lost_trials(study, sweeper.grace_period)
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        lost = [t for t in trials  # not a repeated proposal, which never ran (sweeper.REPEAT_ATTR)
                if t.state == optuna.trial.TrialState.FAIL and t.number not in retried
                and "repeat_of" not in t.user_attrs]
        for trial in lost:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number},
                                skip_if_exists=False)
    numbers = {str(t.number) for t in lost}
    for run in children(client, parent_id):
        if run.data.tags.get("optuna.trial") in numbers and run.info.status != "FINISHED":
            client.delete_run(run.info.run_id)
    if lost:
        print(f"trying again trial{'s' if len(lost) > 1 else ''} "
              f"{', '.join(sorted(numbers))} (failed or lost) with the same parameters")
