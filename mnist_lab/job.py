"""One training run from a composed config: check, load, build, train, evaluate, record."""

from __future__ import annotations

import inspect
import os
import random
import time
from pathlib import Path

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_lab import checkpoint, stats, store, tracking
from mnist_lab.checkpoint import TrainingState, save_every_epoch
from mnist_lab.context import JobContext
from mnist_lab.data import load_mnist, split_seed
from mnist_lab.evaluate import evaluate, report
from mnist_lab.identity import config_key, run_name
from mnist_lab.models import build_model, count_parameters
from mnist_lab.loop import Recipe, fit, print_epoch
from mnist_lab.pruning import trial_hook
from mnist_lab.resume import Resume, find_resume
from mnist_lab.stopping import stop_signals
from mnist_lab.sweep_resume import continue_job
from mnist_lab.validation import fail, validate


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def job_threads(cfg: DictConfig, launcher: str | None) -> int:
    """torch threads for this job: the config's, else a fair share of the cores in a sweep."""
    if cfg.threads:
        return cfg.threads
    if launcher in ("submitit_slurm", "submitit_local"):  # a job per task: its own cores
        return cfg.launcher.cpus_per_task
    if cfg.launcher.n_jobs > 1:
        return max(1, (os.cpu_count() or 1) // cfg.launcher.n_jobs)
    return 0


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    # PyTorch's CPU kernels are deterministic already (checked by test_faults); the switch is
    # for CUDA, and it costs ~2 s of torch._dynamo imports, so CPU runs skip it.
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, steps_per_epoch: int):
    """The optimizer and the scheduler (None for sched=none); a scheduler gets the run's
    `steps_per_epoch` only if its signature takes it (OneCycleLR does)."""
    optimizer = instantiate(cfg.optim, _convert_="all")(model.parameters())
    if "_target_" not in cfg.sched:
        return optimizer, None
    runtime = {"steps_per_epoch": steps_per_epoch}
    takes = inspect.signature(get_object(cfg.sched._target_)).parameters
    return optimizer, instantiate(cfg.sched, optimizer,
                                  **{k: v for k, v in runtime.items() if k in takes})


def output_folder(cfg: DictConfig) -> Path:
    """`output_dir` (and `checkpoint.dir`, when checkpoints are on), made now: a folder that
    cannot be made stops the run before its record or training begins."""
    folders = {"output_dir": cfg.output_dir}
    if cfg.checkpoint.enabled:
        folders["checkpoint.dir"] = cfg.checkpoint.dir
    for key, folder in folders.items():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            fail(key, folder, f"a folder this run can make ({err.strerror or err})")
    return Path(cfg.output_dir)


def write_outputs(out: Path, cfg: DictConfig, ctx: JobContext, state: TrainingState, test,
                  data) -> None:
    """What a run leaves behind in its output folder before its record is closed (MLflow logs
    the folder as is); report.txt comes last, after the record (see run)."""
    from mnist_lab.tables import write_table

    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    checkpoint.save_atomic(state.best_state, out / "best.pth")  # never a half-written file
    rows = [{"class": d, "correct": c, "total": t, "accuracy": round(c / max(t, 1), 6)}
            for d, (c, t) in enumerate(zip(test.class_correct.tolist(), test.class_total.tolist()))]
    write_table(rows, out / "per_class.csv", out / "per_class.md")
    stats.write_predictions(out / stats.PREDICTIONS, data.test_labels.tolist(),
                            test.predictions.tolist())  # for image-by-image comparisons
    if cfg.plots:  # matplotlib costs ~0.3 s to import, so only when figures are wanted
        from mnist_lab import plots

        plots.write_run_figures(out, figure_label(cfg, ctx), state.history, state.best_epoch, test,
                                data.test_images, data.test_labels)


def figure_label(cfg: DictConfig, ctx: JobContext = JobContext()) -> str:
    """The run's name, then epochs, batch size and data.limit where the name does not say them."""
    name = run_name(cfg, ctx.overrides, ctx.fixed_keys)
    extra = [(f"epochs{cfg.train.epochs}", f"{cfg.train.epochs} epochs"),
             (f"batch_size{cfg.train.batch_size}", f"batch {cfg.train.batch_size}")]
    if cfg.data.limit:
        extra.append((f"limit{cfg.data.limit}", f"{cfg.data.limit} training images"))
    return ", ".join([name, *(text for token, text in extra if token not in name.split("-"))])


def stop_check(received: list[int]):
    """The epoch callback that stops the run if a stop signal came and was swallowed."""
    def check(state: TrainingState, metrics: dict[str, float]) -> None:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")

    return check


class Job:
    """One run's life around the training loop, in the order `run` calls it: `prepare` (inputs
    checked and loaded, nothing recorded yet), `build` (model, optimizer, restored state),
    `start` (its record and its epoch callbacks), then `finish` (test, files, record closed).
    A stack (stack_job.py) takes its members through the same steps."""

    def __init__(self, cfg: DictConfig, ctx: JobContext):
        self.cfg, self.ctx = cfg, ctx
        self.resume_state: dict | None = None
        self.callbacks: list = []
        self.stack_tags: dict[str, str] | None = None  # set for a member of a stack

    def prepare(self) -> float | tuple | None:
        """Check and load the inputs; the objective of a job that is complete already."""
        cfg, ctx = self.cfg, self.ctx
        validate(cfg)  # once per process: at once if the caller checked it already
        store.check_store(cfg.tracking)  # file checks only: a read-only store answers at once
        if ctx.parent_id and Resume.of(cfg).wanted:  # resume= named the sweep, not this run
            self.resume_state = continue_job(cfg, ctx)
        else:
            self.resume_state = find_resume(cfg, ctx)
        if self.resume_state and self.resume_state.get("complete"):  # a finished job: untouched
            return objective(cfg, self.resume_state["best_val_loss"],
                             count_parameters(build_model(cfg)))
        # inputs before the store: opening MLflow takes seconds, a bad data file answers in one
        if progress := ctx.progress_line(time.time()):
            print(progress, flush=True)
        self.data = load_mnist(cfg.data.root, cfg.data.val_size, split_seed(cfg), cfg.data.limit,
                               cfg.data.download, cfg.data.verify)
        self.out = output_folder(cfg)
        self.tracker = tracking.open_run(cfg, ctx)
        return None

    def build(self, device: torch.device) -> TrainingState:
        """The model as its seed draws it, its optimizer and scheduler, and a saved state."""
        cfg = self.cfg
        seed_everything(cfg.seed, cfg.deterministic, device)
        model = build_model(cfg).to(device)
        steps_per_epoch = -(-len(self.data.train_images) // cfg.train.batch_size)
        state = TrainingState.fresh(model, *build_optimizer(cfg, model, steps_per_epoch), cfg.seed)
        if self.resume_state:
            state.restore(self.resume_state)
        return state

    def start(self, state: TrainingState, device: torch.device, received: list[int]) -> None:
        """The run's record, opened or reopened, and its epoch callbacks."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        last = checkpoint.folder_for(cfg) / checkpoint.LAST if cfg.checkpoint.enabled else None
        trial = trial_hook(cfg, ctx)  # None unless this job is a trial of the Optuna sweeper
        tags = {**(trial.tags if trial else {}), **(self.stack_tags or {})}
        self.tracker.start(model=state.model, data=data, device=device, checkpoint=last,
                           resume_run_id=state.identity.get("run_id"), tags=tags or None)
        if trial:
            trial.record_run(self.tracker.run_id)
        if self.resume_state:
            self.tracker.catch_up(state.history)
        print(f"{cfg.choices.model}: {count_parameters(state.model):,} parameters, "
              f"{len(data.train_images):,} train / {len(data.val_images):,} val / "
              f"{len(data.test_images):,} test images, device {device}", flush=True)
        state.identity = {"run_id": self.tracker.run_id, "config_key": config_key(cfg),
                          "overrides": " ".join(ctx.overrides)}
        # after each epoch, in this order: a kill between two steps loses nothing that resume
        # (which catches the store up from the checkpoint) cannot restore
        self.callbacks = [save_every_epoch(last)] if last else []
        label = f"#{ctx.job_num} " if self.stack_tags and ctx.job_num is not None else ""
        self.callbacks += [self.tracker.log_epoch, print_epoch(cfg.train.epochs, label),
                           stop_check(received)]
        if trial:  # last: the epoch a pruner stops at is saved, logged and printed first
            self.callbacks.append(trial)
        self.last = last

    def finish(self, state: TrainingState, data) -> float | tuple:
        """Test the best weights, write the run's files and close its record."""
        cfg, out, model = self.cfg, self.out, state.model
        model.load_state_dict(state.best_state)
        test = evaluate(model, data.test_images, data.test_labels, cfg.eval.batch_size,
                        tta=cfg.eval.tta)
        print(f"best epoch {state.best_epoch} of {cfg.train.epochs}: the lowest val/loss "
              f"({state.best_val_loss:.4f}; * marks each new lowest); its weights are tested")
        summary = report(test, f"{cfg.choices.model} on the test set")
        print(summary, flush=True)
        write_outputs(out, cfg, self.ctx, state, test, data)
        self.tracker.finish(state, test, out, summary)
        # last, once the run is FINISHED: a report on disk means the job is complete, which is
        # what a resumed sweep takes it to mean; a kill before this redoes the job's last steps
        checkpoint.write_atomic(out / "report.txt", summary + "\n")
        if self.last:
            checkpoint.mark_finished(self.last.parent, state)
        return objective(cfg, state.best_val_loss, count_parameters(model))


def torch_settings(cfg: DictConfig, ctx: JobContext) -> torch.device:
    """Threads, denormals and the device, for this process's training."""
    threads = job_threads(cfg, ctx.launcher)
    if threads:
        torch.set_num_threads(threads)
    # Adam's moments for always-zero inputs (MNIST's blank borders) decay into denormal
    # floats, which the CPU computes ~100x slower: flushing them to zero made the FFNN's
    # epoch 1.3x faster and stops later epochs slowing down (benchmarks/bench.py).
    torch.set_flush_denormal(True)
    return pick_device(cfg.device)


def run(cfg: DictConfig, ctx: JobContext = JobContext()) -> float | tuple:
    """Train and evaluate one configuration in the job `ctx`; return its objective (`objective`:
    the best validation loss, or the tuple of several `objectives`)."""
    job = Job(cfg, ctx)
    done = job.prepare()
    if done is not None:
        return done
    with job.tracker, stop_signals() as received:
        device = torch_settings(cfg, ctx)
        state = job.build(device)
        data = job.data = job.data.to(device)
        job.start(state, device, received)
        fit(state, data, Recipe.from_config(cfg), job.callbacks)
        result = job.finish(state, data)
    print(where_to_look(cfg, job.out, job.tracker), flush=True)
    return result


def objective(cfg: DictConfig, best_val_loss: float, parameters: int) -> float | tuple:
    """What run.py returns to a sweeper: the best validation loss, or with several `objectives`
    (validation.OBJECTIVES), their values in that order."""
    values = {"val/loss": best_val_loss, "parameters": float(parameters)}
    chosen = tuple(values[name] for name in cfg.objectives)
    return chosen[0] if len(chosen) == 1 else chosen


def where_to_look(cfg: DictConfig, out: Path, run_tracker: tracking.Tracker) -> str:
    """The closing lines of a run: its files, its MLflow page and the comparison command."""
    shown = os.path.relpath(out) if out.is_relative_to(Path.cwd()) else str(out)
    lines = [f"files: {shown}/ (report.txt, figures, best.pth, config.yaml)"]
    if run_tracker.run_id:
        page = f"experiments/{run_tracker.experiment_id}/runs/{run_tracker.run_id}"
        lines += [f"MLflow: {store.ui_url(cfg.tracking, page)}",
                  f"compare with the other runs: mnist-lab compare{store.uri_option(cfg.tracking)}"]
    return "\n".join(lines)
