"""Hydra's runtime, read once per job: the one module that reads `HydraConfig`.

`JobContext.from_hydra()` is called at a job's start (policy.run_job) and the context is handed
down: whether this is a sweep, the job's number and folders, its overrides and group choices, the
sweep's MLflow parent and the Optuna trial it runs, if any. Outside Hydra (`mnist-lab rerun`, the
benchmarks, tests) `JobContext()` is a single run with no overrides.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_plugins.mnist_lab_optuna_sweeper.api import Trial, trial_for

PARENT_ID_FILE = "mlflow_parent_run_id"  # in the sweep folder, written by the sweep callback
PROGRESS_FILE = "sweep_progress.json"  # beside it: the sweep's job count and start time


@dataclass(frozen=True)
class JobContext:
    multirun: bool = False
    job_num: int | None = None
    job_name: str | None = None
    sweep_dir: Path | None = None
    output_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)  # the task overrides, as given
    hydra_overrides: list[str] = field(default_factory=list)  # hydra.*, hydra/..., as given
    choices: dict[str, Any] = field(default_factory=dict)  # group -> option, hydra/* too
    fixed_keys: frozenset[str] = frozenset()  # what the sweep's command set for every job
    parent_id: str | None = None  # the sweep's MLflow parent run
    trial: Trial | None = None  # the Optuna sweeper's trial this job runs (its public API)
    progress: dict = field(default_factory=dict)  # the sweep's {"jobs": n, "started": time}

    def progress_line(self, now: float) -> str | None:
        """`job 3 of 8, 1:02 elapsed, about 3:06 left` for a sweep's job; None otherwise."""
        jobs, started = self.progress.get("jobs"), self.progress.get("started")
        if self.job_num is None or not jobs or started is None:
            return None
        elapsed = now - started
        line = f"job {self.job_num + 1} of {jobs}, {clock(elapsed)} elapsed"
        if 0 < self.job_num < jobs:  # from the jobs started so far
            line += f", about {clock(elapsed / self.job_num * (jobs - self.job_num))} left"
        return line

    @property
    def launcher(self) -> str | None:
        return self.choices.get("hydra/launcher")

    @classmethod
    def from_hydra(cls) -> "JobContext":
        """The running Hydra job's context; `JobContext()` when no Hydra job runs."""
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return cls()
        return cls.of(HydraConfig.get())

    @classmethod
    def of(cls, hydra) -> "JobContext":
        """The context of the job whose `hydra` node this is (a stack's member: its launcher
        hands each member's config to the stack, none of them is Hydra's current one)."""
        from hydra.types import RunMode

        multirun = hydra.mode == RunMode.MULTIRUN
        sweep_dir = Path(hydra.sweep.dir) if multirun else None
        parent = sweep_dir / PARENT_ID_FILE if sweep_dir else None
        job_num = hydra.job.get("num")
        return cls(multirun=multirun, job_num=job_num, job_name=hydra.job.name,
                   sweep_dir=sweep_dir, output_dir=Path(hydra.runtime.output_dir),
                   overrides=list(hydra.overrides.task),
                   hydra_overrides=list(hydra.overrides.hydra), choices=dict(hydra.runtime.choices),
                   fixed_keys=sweep_fixed_keys(sweep_dir) if sweep_dir else frozenset(),
                   parent_id=parent.read_text().strip() if parent and parent.is_file() else None,
                   trial=trial_for(sweep_dir, job_num), progress=read_json(
                       sweep_dir / PROGRESS_FILE if sweep_dir else None))


def sweep_fixed_keys(sweep_dir: Path) -> frozenset[str]:
    """The keys this sweep's command line set to one value for every job (multirun.yaml)."""
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    given = OmegaConf.load(path).hydra.overrides.task if path.is_file() else []
    return frozenset(o.partition("=")[0].lstrip("+~") for o in given
                     if not any(c in o.partition("=")[2] for c in ",("))  # not `a,b`, `range(`


def read_json(path: Path | None) -> dict:
    import json

    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else \
        f"{minutes}:{seconds:02d}"


class CopyTo:
    """A text stream that also appends what it is given to a file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def output_in_run_log(ctx: JobContext):
    """What a run prints also goes to its Hydra run.log (beside Hydra's own log records)."""
    if ctx.output_dir is None:
        yield
        return
    with open(ctx.output_dir / f"{ctx.job_name}.log", "a") as log, \
            redirect_stdout(CopyTo(sys.stdout, log)):
        yield
