"""Live or dead: which of a store's RUNNING runs still have a process behind them.

A run records where it runs (tags `host`, `pid`, and `pid.started`, the process's start time, so
a recycled pid is not taken for it) and a `heartbeat` (unix seconds), refreshed with each epoch's
metrics in the same write. A RUNNING run is dead when its process is gone on this host (or the
pid now belongs to another process), or, on another host, when its heartbeat is older than
`STALE_AFTER_MINUTES`; a sweep's parent also lives while a child of it beats. `reconcile` marks
dead runs KILLED: every run and sweep does it when it opens the store, `mnist-lab reconcile` on
demand. A run made before runs recorded their process is left alone.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time

STALE_AFTER_MINUTES = 60.0  # far longer than an epoch; a dead machine's runs wait this long


def process_tags() -> dict[str, str]:
    """Where this process runs, and a first heartbeat."""
    import psutil

    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": str(me.pid),
            "pid.started": f"{me.create_time():.3f}", **heartbeat()}


def heartbeat() -> dict[str, str]:
    return {"heartbeat": str(int(time.time()))}


def death(run, beats: list[float], now: float, stale_after_minutes: float,
          this_process_ending: bool = False) -> str | None:
    """Why `run` (RUNNING) has no live process, or None if it may be alive."""
    import psutil

    tags = run.data.tags
    if not {"host", "pid", "pid.started"} <= tags.keys():
        return None
    host, pid = tags["host"], int(tags["pid"])
    if host == socket.gethostname():
        if this_process_ending and pid == os.getpid():
            return f"its process {pid} on {host} was stopped"
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return f"its process {pid} on {host} is gone"
        if abs(started - float(tags["pid.started"])) > 1.0:
            return f"its process {pid} on {host} is gone (the pid is another process's now)"
        return None
    silent = (now - max(beats, default=0.0)) / 60
    if silent > stale_after_minutes:
        return f"no heartbeat from {host} for {silent:.0f} minutes"
    return None


def reconcile(client, stale_after_minutes: float = STALE_AFTER_MINUTES, dry_run: bool = False,
              this_process_ending: bool = False) -> list[tuple[str, str, str]]:
    """Mark every dead RUNNING run of the store KILLED; returns (run id, name, reason) of each.
    `this_process_ending`: count this process's own runs as dead (a stopped sweep's exit)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'",
                                 max_results=10000)
    beats: dict[str, list[float]] = {}
    for run in running:
        beat = float(run.data.tags.get("heartbeat", 0))
        beats.setdefault(run.info.run_id, []).append(beat)
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            beats.setdefault(parent, []).append(beat)
    dead = []
    now = time.time()
    for run in running:
        reason = death(run, beats[run.info.run_id], now, stale_after_minutes,
                       this_process_ending)
        if reason is None:
            continue
        # read again just before writing: a resume may have taken the run over meanwhile
        again = client.get_run(run.info.run_id)
        if again.info.status != "RUNNING" or again.data.tags.get("pid") != run.data.tags["pid"]:
            continue
        dead.append((run.info.run_id, run.info.run_name, reason))
        if not dry_run:
            client.set_tag(run.info.run_id, "killed_because", reason)
            client.set_terminated(run.info.run_id, "KILLED")
    return dead


def reconcile_command(args: argparse.Namespace) -> int:
    from mnist_lab.store import client_for

    client = client_for(args.uri)
    dead = reconcile(client, args.stale_after, args.dry_run)
    verb = "would mark" if args.dry_run else "marked"
    for run_id, name, reason in dead:
        print(f"{verb} {name} ({run_id}) KILLED: {reason}")
    print(f"{len(dead)} dead run{'s' if len(dead) != 1 else ''} {verb} KILLED")
    for study, number in settle_trials(client, [run_id for run_id, _, _ in dead], args.dry_run):
        print(f"{'would fail' if args.dry_run else 'failed'} trial {number} of study {study!r}: "
              "its run's process is gone (a resumed sweep tries it again)")
    return 0


def settle_trials(client, run_ids: list[str], dry_run: bool) -> list[tuple[str, int]]:
    """The Optuna trials of dead runs that their study still has RUNNING, failed: (study, trial
    number) of each. The study's storage is read from the sweep parent's `optuna.storage` tag."""
    import optuna

    from hydra_plugins.mnist_lab_optuna_sweeper.storages import open_storage

    settled = []
    for run in (client.get_run(run_id) for run_id in run_ids):
        tags = run.data.tags
        if "optuna.trial" not in tags or "mlflow.parentRunId" not in tags:
            continue
        url = client.get_run(tags["mlflow.parentRunId"]).data.tags.get("optuna.storage", "")
        if not url or "***" in url:  # a password the tag does not keep: the sweeper settles it
            continue
        study = optuna.load_study(study_name=tags["optuna.study"], storage=open_storage(url))
        trial = study.get_trials(deepcopy=False)[int(tags["optuna.trial"])]
        if trial.state == optuna.trial.TrialState.RUNNING:
            if not dry_run:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            settled.append((study.study_name, trial.number))
    return settled


def minutes(text: str) -> float:
    value = float(text)  # argparse reports a non-number itself
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: minutes, a number > 0")
    return value


def add_parser(commands) -> None:
    parser = commands.add_parser("reconcile", help="mark RUNNING runs whose process died KILLED",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=None, help="tracking URI (default as run.py)")
    parser.add_argument("--stale-after", type=minutes, default=STALE_AFTER_MINUTES,
                        metavar="MINUTES", help="a run on another host is dead after this long "
                        f"without a heartbeat (default {STALE_AFTER_MINUTES:g})")
    parser.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    parser.set_defaults(handler=reconcile_command)
