"""The one failure policy: what the user sees, and the exit status, when a job or sweep fails.

`run_job` is run.py's body (a task function wrapper, as lightning-hydra-template's): it builds the
job's context from Hydra once, validates the config, runs `job.run` and turns what it raises into
one line, an exit status and, in a sweep, a FAILED record and the worst objective so the other
jobs go on. The sweep callback ends a sweep through `refuse`, `nothing_to_do` and `sweep_failed`.
Only this module and the entry points call `sys.exit`.
"""

from __future__ import annotations

import atexit
import math
import os
import shlex
import shutil
import signal
import sys
from contextlib import suppress
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab import stopping
from mnist_lab.context import JobContext, output_in_run_log
from mnist_lab.errors import DivergedError, LabError, TrackingError, TrialPruned
from mnist_lab.validation import validate

WORST_OBJECTIVE = math.inf  # what a sweeper sees for a failed job (the objective is minimised)


def run_job(cfg: DictConfig) -> float | tuple:
    """`job.run`, with its failures turned into what the user sees. Known input errors end a
    single run with one line and exit status 2; in a sweep, a failed job is recorded FAILED,
    reported and scored as the worst objective so the others go on. A stop signal ends a single
    run, or a whole sweep, with 130 or 143."""
    ctx = JobContext.from_hydra()
    if ctx.multirun:
        stopping.guard_worker(stop_sweep)  # a worker process between jobs, too, stops quietly
    try:
        validate(cfg)  # before torch and MLflow are even imported: a typo answers at once
        from mnist_lab.job import run

        with output_in_run_log(ctx):
            return run(cfg, ctx)
    except KeyboardInterrupt:
        if ctx.multirun:
            stop_sweep()  # the launcher says how to continue, once
        print(f"\ninterrupted: {resume_hint(cfg, ctx)}", file=sys.stderr)
        sys.exit(stopping.exit_status())
    except Exception as err:
        return settle(cfg, ctx, err)


def settle(cfg: DictConfig, ctx: JobContext, err: Exception) -> float | tuple:
    """What a job that raised `err` ends with: pruned is passed on, for the sweeper; in a
    sweep, a failure is reported, recorded and scored; a single run exits."""
    if isinstance(err, TrialPruned):  # the Optuna sweeper reads it from the job's return
        raise err
    if isinstance(err, (LabError, DivergedError)):  # a FAILED run keeps the traceback
        if ctx.multirun:
            return failed_job(cfg, ctx, err, record=isinstance(err, LabError)
                              and not isinstance(err, TrackingError))
        if isinstance(err, LabError):
            discard_refused_run_folder(ctx)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, LabError) else 1)
    if not ctx.multirun:
        raise err
    return failed_job(cfg, ctx, err, record=True, named=True)


def run_stack(configs: list[DictConfig]) -> list:
    """The stacked launcher's stack task: `stack_job.run_stack` over the members' configs,
    each member's failure settled as `run_job` settles a job's. One result per member: its
    objective, or (pruned) the exception for the sweeper."""
    from omegaconf import open_dict

    members = []
    for config in configs:
        task = config.copy()
        with open_dict(task):
            del task["hydra"]
        members.append((task, JobContext.of(config.hydra)))
    stopping.guard_worker(stop_sweep)
    from mnist_lab.stack_job import run_stack as train

    try:
        outcomes = train(members)
    except KeyboardInterrupt:
        stop_sweep()
        raise
    return [settle(cfg, ctx, outcome)
            if isinstance(outcome, Exception) and not isinstance(outcome, TrialPruned)
            else outcome for (cfg, ctx), outcome in zip(members, outcomes)]


def failed_job(cfg: DictConfig, ctx: JobContext, err: Exception, record: bool,
               named: bool = False) -> float | tuple:
    """A sweep's failed job: reported, recorded FAILED (unless its run recorded it already, or
    the store is what failed), scored the worst objective."""
    print(f"job failed: {f'{err.__class__.__name__}: ' if named else ''}{err}", file=sys.stderr)
    if record:
        from mnist_lab.tracking import record_failed_job

        record_failed_job(cfg, ctx, err)
    return WORST_OBJECTIVE if len(cfg.objectives) == 1 else (WORST_OBJECTIVE,) * len(cfg.objectives)


def stop_sweep() -> None:
    """End this sweep process after a stop signal (its own run, if any, is closed already).

    A worker ends at once, silently: the launcher reports. The launcher stops its workers first,
    then prints how to continue and exits 130 or 143, its exit hooks run (the sweep's record
    is closed there). With workers gone, it does not wait for joblib to shut its pool down:
    the pool's feeder thread can hang for good writing a job to a worker that is dead."""
    code = stopping.exit_status()
    if stopping.sweep_hint() is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    workers = stopping.stop_workers()
    name = signal.Signals(stopping.received[-1] if stopping.received else signal.SIGINT).name
    print(f"\ninterrupted by {name}: {stopping.sweep_hint()}", file=sys.stderr, flush=True)
    if not workers:
        sys.exit(code)  # the basic launcher: unwinding closes the job's run KILLED
    atexit._run_exitfuncs()  # what SystemExit would run, without joblib's shutdown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def refuse(err: LabError) -> None:
    """A run or sweep that can't start: one line, exit status 2, before any job."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def nothing_to_do(message: str) -> None:
    """A sweep asked to resume that is complete: said in one line, exit status 0."""
    print(message)
    sys.exit(0)


def sweep_failed(failed: int) -> None:
    """A sweep that ran with failed jobs ends with exit status 1 once its record is complete."""
    print(f"{failed} job{'s' if failed > 1 else ''} of this sweep failed; each run's `error` "
          "tag says why", file=sys.stderr)
    sys.exit(1)


def discard_refused_run_folder(ctx: JobContext) -> None:
    """Hydra makes a run's outputs/DATE/TIME folder before the config is checked; a refused
    run removes it again, when nothing but Hydra's .hydra/ and run.log is in it."""
    out = ctx.output_dir
    if out is None:
        return
    if out.is_dir() and out != Path.cwd() and {p.name for p in out.iterdir()} <= {
            ".hydra", f"{ctx.job_name}.log"}:
        shutil.rmtree(out)
        if out.parent.parent.name == "outputs":  # the day's folder, if this was its only run
            with suppress(OSError):
                out.parent.rmdir()


def resume_hint(cfg: DictConfig, ctx: JobContext) -> str:
    if not cfg.checkpoint.enabled:
        return "checkpoint.enabled=false, so there is nothing to resume"
    return (f"the last complete epoch is kept; continue with\n  "
            f"{resume_command(ctx.overrides, ctx.hydra_overrides)}")


def resume_command(overrides: list[str], hydra_overrides: list[str] = (),
                   sweep: bool = False) -> str:
    """The command that continues a stopped run (or sweep) given its overrides, `resume=true` in
    place of any `resume=`, and Hydra's own (`hydra.run.dir=`, `hydra/sweeper=optuna`,
    `hydra.sweeper.n_trials=`: the same folder, budget and search) but the mode `-m` sets,
    quoted for the shell: a value with a space survives the paste."""
    kept = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "resume"]
    kept += [o for o in hydra_overrides if o.partition("=")[0].lstrip("+~") != "hydra.mode"]
    return shlex.join(["python", "run.py", *(["-m"] if sweep else []), *kept, "resume=true"])
