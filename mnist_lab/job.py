"""One training run from a composed config: check, load, build, train, evaluate, record."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_lab import tracking
from mnist_lab.data import load_mnist
from mnist_lab.evaluate import evaluate, report
from mnist_lab.models import count_parameters
from mnist_lab.schema import validate
from mnist_lab.train import fit


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def without_name(node: DictConfig) -> DictConfig:
    """A group node minus its `name` label, ready for `instantiate`."""
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                             if k != "name"})


def build_model(cfg: DictConfig) -> torch.nn.Module:
    model = instantiate(cfg.model, dropout=cfg.dropout.p, _convert_="all")
    instantiate(without_name(cfg.init))(model)
    return model


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, steps_per_epoch: int):
    optimizer = instantiate(without_name(cfg.optim), _convert_="all")(model.parameters())
    sched = without_name(cfg.sched)
    if "_target_" not in sched:
        return optimizer, None
    sched.pop("interval")
    extra = {"steps_per_epoch": steps_per_epoch} if "epochs" in sched else {}
    return optimizer, instantiate(sched, optimizer, **extra)


def output_dir() -> Path:
    """Hydra's run folder for this job, or a fresh temporary one when called outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="mnist-lab-"))


def write_outputs(out: Path, cfg: DictConfig, result, test, data) -> None:
    """Everything a run leaves behind, in its output folder (MLflow logs the folder as is)."""
    from mnist_lab import plots
    from mnist_lab.tracking import write_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save(result.best_state, out / "best.pth")
    rows = [{"class": d, "correct": c, "total": t, "accuracy": round(c / max(t, 1), 6)}
            for d, (c, t) in enumerate(zip(test.class_correct.tolist(), test.class_total.tolist()))]
    write_table(rows, out / "per_class.csv", out / "per_class.md")
    (out / "report.txt").write_text(report(test, f"{cfg.model.name} on the test set") + "\n")
    plots.write_run_figures(out, cfg.model.name, result.history, result.best_epoch, test,
                            data.test_images, data.test_labels)


def run(cfg: DictConfig) -> float:
    """Train and evaluate one configuration; return the best validation loss (the objective)."""
    validate(cfg)
    run_tracker = tracking.open_run(cfg)  # fails fast on a bad store, before any data is read
    with run_tracker:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        device = pick_device(cfg.device)
        data = load_mnist(cfg.data.root, cfg.data.val_size, cfg.seed, cfg.data.limit,
                          cfg.data.download, cfg.data.verify).to(device)
        model = build_model(cfg).to(device)
        steps_per_epoch = -(-len(data.train_images) // cfg.train.batch_size)
        optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)
        run_tracker.start(model=model, data=data, device=device)
        print(f"{cfg.model.name}: {count_parameters(model):,} parameters, "
              f"{len(data.train_images):,} train / {len(data.val_images):,} val / "
              f"{len(data.test_images):,} test images, device {device}", flush=True)

        result = fit(model, data, optimizer, scheduler, cfg.sched.interval, cfg.train.epochs,
                     cfg.train.batch_size, cfg.train.eval_batch_size, cfg.seed,
                     cfg.train.progress, on_epoch=run_tracker.log_epoch)

        model.load_state_dict(result.best_state)
        test = evaluate(model, data.test_images, data.test_labels, cfg.train.eval_batch_size)
        print(f"best epoch {result.best_epoch} (val/loss {result.best_val_loss:.4f})")
        print(report(test, f"{cfg.model.name} on the test set"), flush=True)
        out = output_dir()
        write_outputs(out, cfg, result, test, data)
        run_tracker.finish(model, result, test, out)
    return result.best_val_loss
