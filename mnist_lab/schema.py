"""Typed config schemas, registered in Hydra's ConfigStore, and the range checks types can't express.

Types and key names are enforced by OmegaConf when Hydra composes (a misspelt key or a string
where a number belongs fails there); `validate` then checks values, so every bad config fails
before any data is read or any MLflow run is created. Importing this module must stay cheap: it
runs on every `python run.py --help`.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_lab.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "bar", "lines", "off")

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


# --- groups ------------------------------------------------------------------------------------
@dataclass
class ModelConf:
    _target_: str = MISSING
    name: str = MISSING
    image_size: int = 28
    num_classes: int = 10
    hidden: List[int] = field(default_factory=lambda: [512, 256])


@dataclass
class FFNNConf(ModelConf):
    _target_: str = "mnist_lab.models.FFNN"
    name: str = "ffnn"


@dataclass
class CNNConf(ModelConf):
    _target_: str = "mnist_lab.models.CNN"
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3
    batch_norm: bool = False
    pool_first: bool = False  # conv-pool-[BN]-ReLU blocks: BN and ReLU on 1/4 of the activations
    channels_last: bool = True  # NHWC: faster on CPU, same state_dict, rounds unlike NCHW


@dataclass
class OptimConf:
    _target_: str = MISSING
    _partial_: bool = True
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    foreach: Optional[bool] = None


@dataclass
class AdamConf(OptimConf):
    _target_: str = "torch.optim.Adam"
    name: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False
    fused: Optional[bool] = None


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    name: str = "adamw"
    weight_decay: float = 1e-2


@dataclass
class SGDConf(OptimConf):
    _target_: str = "torch.optim.SGD"
    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True
    fused: Optional[bool] = None


@dataclass
class RMSpropConf(OptimConf):
    _target_: str = "torch.optim.RMSprop"
    name: str = "rmsprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class SchedConf:
    name: str = MISSING
    interval: str = "epoch"  # when scheduler.step() runs: after each "epoch" or each "step"


@dataclass
class StepSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    name: str = "step"
    step_size: int = 5
    gamma: float = 0.1


@dataclass
class CosineSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    name: str = "cosine"
    T_max: int = "${train.epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


@dataclass
class OneCycleSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    name: str = "onecycle"
    interval: str = "step"
    max_lr: float = "${optim.lr}"  # type: ignore[assignment]
    epochs: int = "${train.epochs}"  # type: ignore[assignment]
    pct_start: float = 0.3


@dataclass
class DropoutConf:
    name: str = MISSING
    p: float = 0.2


@dataclass
class InitConf:
    _target_: str = MISSING
    _partial_: bool = True
    name: str = MISSING


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite under <project>/mlruns
    experiment: str = "mnist-lab"
    log_model: bool = True  # also log an mlflow.pytorch model beside best.pth


@dataclass
class LauncherConf:
    """One schema for every launcher; the SLURM keys are read only by launcher=slurm."""

    name: str = "basic"
    n_jobs: int = 1  # jobs at once (parallel); torch threads per job = cores // n_jobs
    partition: Optional[str] = None
    timeout_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 8


# --- top level ---------------------------------------------------------------------------------
@dataclass
class TrainConf:
    epochs: int = 20
    batch_size: int = 20
    progress: str = "auto"  # auto: a bar on a terminal, one line per epoch otherwise
    label_smoothing: float = 0.0


@dataclass
class EvalConf:
    batch_size: int = 500  # evaluation only: results don't depend on it; 500 fits CPU caches
    tta: bool = False  # test set: average the softmax over one-pixel shifts


@dataclass
class DataConf:
    root: str = "${project_root:}/data/mnist"
    download: bool = False  # fetch missing files with torchvision (needs the internet)
    verify: bool = True  # check SHA-256 of the decompressed files
    val_size: int = 12000
    split_seed: Optional[int] = None  # the train/validation split's seed; null: `seed`
    limit: Optional[int] = None  # train on the first N of the training part only
    augment: bool = False  # random rotation + shift per training image, on whole batches
    rotate_degrees: float = 10.0
    shift_pixels: float = 2.0


@dataclass
class CheckpointConf:
    enabled: bool = True  # write last.ckpt after every epoch (resume=true continues from it)
    dir: str = "${project_root:}/checkpoints"


@dataclass
class LabConfig:
    model: Any = MISSING
    optim: Any = MISSING
    dropout: DropoutConf = MISSING
    init: Any = MISSING
    sched: Any = MISSING
    tracking: TrackingConf = MISSING
    launcher: LauncherConf = MISSING
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    deterministic: bool = True
    plots: bool = True  # write the per-run figures (about 2 s of matplotlib per run)
    resume: Any = False  # false, true (this config's last checkpoint) or an MLflow run id
    train: TrainConf = field(default_factory=TrainConf)
    eval: EvalConf = field(default_factory=EvalConf)
    data: DataConf = field(default_factory=DataConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=LabConfig)
    for group, nodes in {
        "model": {"ffnn": FFNNConf, "cnn": CNNConf},
        "optim": {"adam": AdamConf, "adamw": AdamWConf, "sgd": SGDConf, "rmsprop": RMSpropConf},
        "sched": {"none": SchedConf, "step": StepSchedConf, "cosine": CosineSchedConf,
                  "onecycle": OneCycleSchedConf},
        "dropout": {"dropout": DropoutConf},
        "init": {"init": InitConf},
        "tracking": {"tracking": TrackingConf},
        "launcher": {"launcher": LauncherConf},
    }.items():
        for name, node in nodes.items():
            cs.store(group=group, name=f"{name}_schema", node=node)


register()


# --- value checks ------------------------------------------------------------------------------
def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def peek_count(root: Path) -> int | None:
    """Number of training labels from the IDX header alone, or None if the file isn't readable."""
    for name in ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"):
        path = root / name
        if path.is_file():
            try:
                opener = gzip.open if name.endswith(".gz") else open
                with opener(path, "rb") as f:
                    return struct.unpack(">II", f.read(8))[1]
            except (OSError, EOFError, struct.error):
                return None  # the loader reports the corruption with its own message
    return None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value out of range. Reads only the labels file header."""
    if not isinstance(cfg.resume, (bool, str)) or cfg.resume == "":
        _fail("resume", cfg.resume, "false, true or the MLflow run id of the run to continue")
    if cfg.device not in DEVICES:
        _fail("device", cfg.device, f"one of {', '.join(DEVICES)}")
    if cfg.threads < 0:
        _fail("threads", cfg.threads, "0 (torch's default) or a positive thread count")
    if cfg.train.progress not in PROGRESS:
        _fail("train.progress", cfg.train.progress, f"one of {', '.join(PROGRESS)}")
    if cfg.optim.lr <= 0:
        _fail("optim.lr", cfg.optim.lr, "a learning rate > 0")
    if cfg.optim.weight_decay < 0:
        _fail("optim.weight_decay", cfg.optim.weight_decay, "a value >= 0")
    if not 0 <= cfg.dropout.p < 1:
        _fail("dropout.p", cfg.dropout.p, "a probability in [0, 1)")
    if cfg.sched.interval not in ("epoch", "step"):
        _fail("sched.interval", cfg.sched.interval, "epoch or step")
    if cfg.train.epochs < 1:
        _fail("train.epochs", cfg.train.epochs, "at least 1")
    if cfg.train.batch_size < 1:
        _fail("train.batch_size", cfg.train.batch_size, "at least 1")
    if cfg.eval.batch_size < 1:
        _fail("eval.batch_size", cfg.eval.batch_size, "at least 1")
    if not 0 <= cfg.train.label_smoothing < 1:
        _fail("train.label_smoothing", cfg.train.label_smoothing, "a value in [0, 1)")
    if cfg.data.augment and (cfg.data.rotate_degrees < 0 or cfg.data.shift_pixels < 0):
        _fail("data.rotate_degrees/data.shift_pixels",
              f"{cfg.data.rotate_degrees}/{cfg.data.shift_pixels}", "values >= 0")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        _fail("data.limit", cfg.data.limit, "null (all) or at least 1")
    if cfg.data.val_size <= 0:
        _fail("data.val_size", cfg.data.val_size, "at least 1")
    total = peek_count(Path(cfg.data.root))
    if total is not None:
        if cfg.data.val_size >= total:
            _fail("data.val_size", cfg.data.val_size,
                  f"smaller than the {total} training images in {cfg.data.root}")
        train_size = total - cfg.data.val_size
        if cfg.data.limit is not None:
            train_size = min(train_size, cfg.data.limit)
        if cfg.train.batch_size > train_size:
            _fail("train.batch_size", cfg.train.batch_size,
                  f"at most the training set's {train_size} images")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("device", "cuda", "auto or cpu: this machine has no CUDA device")
