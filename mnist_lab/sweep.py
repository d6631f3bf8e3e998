"""A sweep's MLflow parent run, from start to end: the one module that creates it (a new sweep),
joins it (another process of the same Optuna study), reopens it (`resume=true`), summarises and
closes it, for grid sweeps and studies alike. Hydra calls it through `MlflowSweepCallback`.

`on_multirun_start`/`on_multirun_end` run once in the launching process whatever the launcher,
so the parent exists before any job starts. Its id goes into the sweep folder, where every job
(in this process, a joblib worker or a SLURM node) reads it (context.py) and nests its run under it.
"""

from __future__ import annotations

import atexit
import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.mnist_lab_optuna_sweeper.api import SweeperConfigError
from hydra_plugins.mnist_lab_optuna_sweeper.settings import check_settings
from hydra_plugins.mnist_lab_optuna_sweeper.storages import exclusive, shown
from mnist_lab import policy, stopping, sweep_resume
from mnist_lab.context import PARENT_ID_FILE, PROGRESS_FILE
from mnist_lab.errors import ConfigError, LabError
from mnist_lab.queries import RESUMED_AT_TAG, RESUMES_TAG
from mnist_lab.resume import Resume
from mnist_lab.study import (choose_study, is_optuna_sweep, lab_defaults, settle_study,
                             study_name, trials_left)


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra turns a callback's exception into a warning and runs the jobs anyway,
        unrecorded: here any failure refuses the sweep in one line, exit 2, before its first
        job, and a parent made before the failure ends KILLED (atexit), never RUNNING."""
        try:
            self.start(config)
        except (SweeperConfigError, LabError) as err:
            policy.refuse(err)
        except Exception as err:  # the store, the study's storage, a folder: no job runs
            text = str(err).strip()
            policy.refuse(f"the sweep could not start: {type(err).__name__}"
                          f"{': ' + text.splitlines()[0][:300] if text else ''}")

    def start(self, config: DictConfig) -> None:
        optuna = is_optuna_sweep(config)
        if optuna:  # a bad hydra.sweeper key stops here, before the store is touched
            check_settings(config.hydra.sweeper)
            lab_defaults(config)
            choose_study(config)
            if not Resume.of(config).wanted and (left := trials_left(config)) is not None \
                    and left <= 0:
                policy.nothing_to_do(f"study {study_name(config)!r} has had its "
                                     f"{config.hydra.sweeper.n_trials} trials "
                                     "(hydra.sweeper.n_trials): nothing to do")
        try:  # where every job writes, made before any record (as Hydra would at its first job)
            Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"hydra.sweep.dir={config.hydra.sweep.dir} is not allowed: a "
                              f"folder this sweep can make ({err.strerror or err})") from None
        overrides = list(config.hydra.overrides.task)
        hydra_overrides = list(config.hydra.overrides.hydra)
        jobs = config.hydra.sweeper.n_trials if optuna else grid_jobs(config)[1]
        stopping.guard_sweep(f"continue the sweep with "
                             f"{policy.resume_command(overrides, hydra_overrides, sweep=True)} "
                             "(finished jobs are skipped)", policy.stop_sweep)
        if not config.tracking.enabled:  # resume=true: each job continues its checkpoint
            write_progress(Path(config.hydra.sweep.dir), jobs)
            return
        from mnist_lab.liveness import reconcile

        client, self.parent_id = open_parent(config, optuna)
        # a stop signal, a crash or a failure from here on skips on_multirun_end; no run may
        # stay RUNNING then
        atexit.register(self._close, client, "KILLED")
        reconcile(client)  # runs whose process died end KILLED, not RUNNING forever
        sweep_dir = Path(config.hydra.sweep.dir)  # a resumed sweep's: its own folder
        write_progress(sweep_dir, jobs)
        (sweep_dir / PARENT_ID_FILE).write_text(self.parent_id)
        print(f"MLflow parent run {self.parent_id} for this sweep")

    def _close(self, client, status: str | None) -> None:
        """End the parent with `status`; None leaves it running for another process (an Optuna
        study that other processes still work on)."""
        if self.parent_id is None:
            return
        parent, self.parent_id = self.parent_id, None
        if status is None:
            return
        if status != "FINISHED":  # the workers are gone: their runs, and this one's, are dead
            from mnist_lab.liveness import reconcile

            reconcile(client, this_process_ending=True)
        client.set_terminated(parent, status)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_id is None:
            return
        from mnist_lab import summary
        from mnist_lab.store import connect, runs_table, ui_url, uri_option

        client, experiment_id = connect(config.tracking)
        status = "FAILED"
        try:
            running = 0
            if is_optuna_sweep(config):
                running = settle_study(config, client, self.parent_id)
                summary.record_study(client, self.parent_id, config)
            failed = summary.summarise(client, self.parent_id)
            if not config.tracking.log_model:
                summary.log_best_model(client, self.parent_id, config.tracking)
            status = "FINISHED" if not running else None  # the study's last process ends it
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        finally:
            parent_id = self.parent_id
            self._close(client, status)
        print(f"compare the sweep's runs: mnist-lab compare --parent {parent_id}"
              f"{uri_option(config.tracking)}\n"
              f"MLflow, the runs table: {ui_url(config.tracking, runs_table(experiment_id))}")
        if failed:
            policy.sweep_failed(failed)


def write_progress(sweep_dir: Path, jobs: int) -> None:
    """The sweep's size and start, for each job's `job k of n` line (context.progress_line)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PROGRESS_FILE).write_text(json.dumps({"jobs": jobs, "started": time.time()}))


def open_parent(config: DictConfig, optuna: bool):
    """(client, the sweep's parent run id): the sweep `resume` continues, reopened; else the
    Optuna study's one parent, joined; else a new one."""
    from mnist_lab.liveness import process_tags, reconcile
    from mnist_lab.provenance import git_state
    from mnist_lab.store import connect

    if Resume.of(config).wanted:  # an Optuna sweep's study continues too: reopen names it
        client, experiment_id = connect(config.tracking)
        reconcile(client)  # dead RUNNING runs end KILLED: a RUNNING parent is alive
        try:
            parent = sweep_resume.find_sweep(client, experiment_id, config)
        except sweep_resume.NothingToResume as done:
            policy.nothing_to_do(str(done))
        except ConfigError as err:
            policy.refuse(err)
        reopen(client, parent, config)
        if optuna:
            sweep_resume.retry_lost_trials(client, parent.info.run_id, config)
        return client, parent.info.run_id
    sweep_dir = Path(config.hydra.sweep.dir)
    tags = {"sweep": "true", "sweep.dir": str(sweep_dir.resolve()),
            "hydra.overrides": " ".join(config.hydra.overrides.task) or "(none)",
            **sweep_resume.new_sweep_tags(config), **git_state(), **process_tags()}
    if optuna:
        return join_study(config, tags)
    client, experiment_id = connect(config.tracking)
    return client, client.create_run(experiment_id, run_name=grid_name(config),
                                     tags=tags).info.run_id


def grid_jobs(config: DictConfig) -> tuple[list[str], int]:
    """(the keys a grid sweep varies, how many jobs it has), as Hydra's basic sweeper sees them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    swept = list(dict.fromkeys(o.get_key_element().lstrip("+~") for o in parsed
                               if o.is_sweep_override()))
    return swept, len(BasicSweeper.split_arguments(parsed, None)[0])


def grid_name(config: DictConfig) -> str:
    """What a grid sweep varies, as its parent's name: `quick: model x optim.lr (4 runs)`."""
    swept, jobs = grid_jobs(config)
    experiment = config.hydra.runtime.choices.get("experiment")
    what = " x ".join(swept) or "one configuration"
    return f"{experiment + ': ' if experiment else ''}{what} ({jobs} run{'s' * (jobs != 1)})"


def join_study(config: DictConfig, tags: dict[str, str]):
    """(client, the one parent run of an Optuna study), however many processes join it: found
    by the study's name and storage, created by whichever process comes first, reopened by the
    rest. One process at a time, from opening the store on: processes started together on a
    new SQLite store would otherwise all run MLflow's table migrations at once."""
    from mnist_lab.liveness import process_tags
    from mnist_lab.store import connect

    url = config.hydra.sweeper.storage  # lab_defaults filled it in
    name_of_study = study_name(config)
    tags = {**tags, "optuna.study": name_of_study, "optuna.storage": shown(url)}
    with exclusive(url, name_of_study):
        client, experiment_id = connect(config.tracking)
        # compared here, not in a filter string, which a quote in the name would break
        parents = [run for run in client.search_runs(
            [experiment_id], "tags.sweep = 'true'", order_by=["attributes.start_time ASC"])
            if run.data.tags.get("optuna.study") == name_of_study
            and run.data.tags.get("optuna.storage") == tags["optuna.storage"]]
        open_ones = [run for run in parents if run.info.status != "FINISHED"]
        if not open_ones:  # a FINISHED parent keeps its record: a continuation gets its own
            label = config.hydra.sweeper.study_name or Path(config.hydra.sweep.dir).name
            if parents:
                tags["optuna.continues"] = parents[-1].info.run_id
            return client, client.create_run(
                experiment_id, tags=tags,
                run_name=f"study {label}{' (continued)' if parents else ''}").info.run_id
        joined = open_ones[0]
        client.update_run(joined.info.run_id, status="RUNNING")
        for key, value in process_tags().items():  # alive while this process is (liveness.py)
            client.set_tag(joined.info.run_id, key, value)
    print(f"joining study {name_of_study!r}: its MLflow parent run is {joined.info.run_id}")
    return client, joined.info.run_id


def reopen(client, parent, config: DictConfig) -> None:
    """Continue `parent`: Hydra's jobs go to its folder again (the launcher composes each job's
    config from `hydra.overrides.hydra`, so the folder goes there as well), an Optuna sweep's
    sweeper to its study, its resume count goes up and it runs again."""
    from mlflow.entities import RunTag

    from mnist_lab.liveness import process_tags

    folder = parent.data.tags["sweep.dir"]
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = folder
        kept = [o for o in config.hydra.overrides.hydra if not o.startswith("hydra.sweep.dir=")]
        config.hydra.overrides.hydra = [*kept, f"hydra.sweep.dir={json.dumps(folder)}"]
        if "optuna.study" in parent.data.tags:  # its study continues toward n_trials
            config.hydra.sweeper.study_name = parent.data.tags["optuna.study"]
    resumes = int(parent.data.tags.get(RESUMES_TAG, "0")) + 1
    tags = {**process_tags(), RESUMES_TAG: str(resumes),  # this process's first, then RUNNING
            RESUMED_AT_TAG: str(int(time.time() * 1000))}
    client.log_batch(parent.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.update_run(parent.info.run_id, status="RUNNING")
    print(f"resuming sweep {parent.info.run_id} in {folder} (resume {resumes})")
