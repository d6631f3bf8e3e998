"""What a run starts from: `resume`, parsed once, and the checkpoint it names.

`resume=false` starts afresh; `resume=true` continues this config's own checkpoint (in a sweep,
the sweep: see sweep_resume); `resume=RUN_ID` continues the checkpoint an MLflow run recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from mnist_lab import checkpoint
from mnist_lab.context import JobContext
from mnist_lab.errors import ConfigError
from mnist_lab.identity import config_key


@dataclass(frozen=True)
class Resume:
    """`resume` as the config gives it (false, true or a run id), parsed."""

    wanted: bool
    run_id: str | None = None  # resume=RUN_ID; None for true and false

    @classmethod
    def of(cls, cfg: DictConfig) -> "Resume":
        value = cfg.resume
        if value in (False, "false", "False"):
            return cls(False)
        if value in (True, "true", "True"):
            return cls(True)
        return cls(True, str(value))

    def __str__(self) -> str:
        return self.run_id or str(self.wanted).lower()


def checkpoint_of(cfg: DictConfig, run_id: str) -> Path:
    """The checkpoint recorded on an MLflow run, for resume=RUN_ID (it may be gone since)."""
    if not cfg.tracking.enabled:
        raise ConfigError(f"resume={run_id} looks the run up in MLflow, which tracking=off "
                          "turns off; use resume=true, or turn tracking on")
    from mnist_lab.store import connect, resolve_uri

    client, _ = connect(cfg.tracking)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"resume={run_id}: no such run in {resolve_uri(cfg.tracking)}") from None
    path = run.data.tags.get("checkpoint.path")
    if not path:
        raise ConfigError(f"resume={run_id}: the run recorded no checkpoint")
    return Path(path)


def complete(done: dict) -> dict:
    print(f"run {done.get('run_id') or '(untracked)'} is complete (FINISHED); resuming it has "
          "nothing to do")
    return {**done, "complete": True}


def run_ended_finished(cfg: DictConfig, run_id: str) -> bool:
    """Whether a checkpoint's MLflow run ended FINISHED, so resuming it has nothing to do."""
    from mnist_lab.store import connect

    try:
        return connect(cfg.tracking)[0].get_run(run_id).info.status == "FINISHED"
    except Exception:  # not in this store: the resume decides what to do with it
        return False


def find_resume(cfg: DictConfig, ctx: JobContext) -> dict | None:
    """The checkpoint `resume` asks for, loaded and matched to this config, or None. (A job of
    a resumed sweep asks its earlier run in the sweep instead: sweep_resume.continue_job.)"""
    resume = Resume.of(cfg)
    if not resume.wanted:
        return None
    if resume.run_id is None:
        path = checkpoint.folder_for(cfg) / checkpoint.LAST
    else:
        path = checkpoint_of(cfg, resume.run_id)
    done = checkpoint.finished_marker(path.parent)  # a completed run keeps no last.ckpt
    if not path.is_file() and done and resume.run_id in (None, done.get("run_id")):
        if done.get("config_key") != config_key(cfg):
            raise ConfigError(f"resume={resume}: run {done.get('run_id')} was made with another "
                              f"config ({done.get('overrides') or 'no overrides'}); pass the same "
                              "overrides to continue it")
        return complete(done)
    if not path.is_file():
        if resume.run_id:
            raise ConfigError(f"resume={resume}: the run has no checkpoint on this machine "
                              f"({path})")
        if ctx.multirun:  # continuing a stopped sweep: this job had not started yet
            print(f"resume=true: no checkpoint for this config yet at {path}; starting it")
            return None
        raise ConfigError(f"resume=true: no checkpoint for this config at {path}; run it "
                          "without resume first, or pass resume=RUN_ID")
    state = checkpoint.load_last(path)
    if state.get("config_key") != config_key(cfg):
        raise ConfigError(f"resume={resume}: the checkpoint {path} was made with another "
                          f"config ({state.get('overrides') or 'no overrides'}); pass the same "
                          "overrides to continue it")
    if state.get("run_id") and cfg.tracking.enabled and run_ended_finished(cfg, state["run_id"]):
        return complete(state)
    print(f"resuming from {path} after epoch {state['epoch']}")
    return state
