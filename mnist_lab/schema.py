"""Typed config schemas, registered in Hydra's ConfigStore.

Types and key names are enforced by OmegaConf when Hydra composes (a misspelt key or a string
where a number belongs fails there); `validate` (mnist_lab/validation.py) then checks values, so
every bad config fails before any data is read or any MLflow run is created. Importing this
module must stay cheap: it runs on every `python run.py --help`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from mnist_lab.identity import GROUPS

PROJECT_ROOT = Path(__file__).resolve().parents[1]

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


# --- groups ------------------------------------------------------------------------------------
@dataclass
class ModelConf:
    _target_: str = MISSING
    image_size: int = 28
    num_classes: int = 10
    hidden: List[int] = field(default_factory=lambda: [512, 256])  # FC widths (after the flatten)


@dataclass
class FFNNConf(ModelConf):
    _target_: str = "mnist_lab.models.FFNN"


@dataclass
class CNNConf(ModelConf):
    _target_: str = "mnist_lab.models.CNN"
    channels: List[int] = field(default_factory=lambda: [16, 32])  # a conv-ReLU-maxpool(2) each
    kernel_size: int = 3
    batch_norm: bool = False
    pool_first: bool = False  # conv-pool-[BN]-ReLU blocks: BN and ReLU on 1/4 of the activations
    channels_last: bool = True  # NHWC: faster on CPU, same state_dict, rounds unlike NCHW


@dataclass
class OptimConf:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    foreach: Optional[bool] = None


@dataclass
class AdamConf(OptimConf):
    _target_: str = "torch.optim.Adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False
    fused: Optional[bool] = None


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 1e-2


@dataclass
class SGDConf(OptimConf):
    _target_: str = "torch.optim.SGD"
    lr: float = 1e-2
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True
    fused: Optional[bool] = None


@dataclass
class RMSpropConf(OptimConf):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class SchedConf:
    """sched=none: no scheduler, a constant learning rate."""


@dataclass
class StepSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 5
    gamma: float = 0.1


@dataclass
class CosineSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = "${train.epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


@dataclass
class OneCycleSchedConf(SchedConf):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    max_lr: float = "${optim.lr}"  # type: ignore[assignment]
    epochs: int = "${train.epochs}"  # type: ignore[assignment]
    pct_start: float = 0.3


@dataclass
class DropoutConf:
    p: float = 0.2  # where the notebook puts it: after each hidden FC (and the CNN's flatten)


@dataclass
class InitConf:
    _target_: str = MISSING
    _partial_: bool = True  # called with the model: init(model)


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite under <project>/mlruns
    experiment: str = "mnist-lab"
    # null: a single run logs its MLflow model at its end, a sweep only its best run's;
    # true: every run (seconds each); false: none at a run's end (`mnist-lab register` exports)
    log_model: Optional[bool] = None


@dataclass
class LauncherConf:
    """One schema for every launcher; the SLURM keys are read only by the submitit launchers."""

    n_jobs: int = 1  # jobs at once (parallel); torch threads per job = cores // n_jobs
    partition: Optional[str] = None
    timeout_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 8
    stack_size: int = 16  # launcher=stacked: most members trained as one model


# --- choices: enums, so that composition refuses any other value -------------------------------
class Device(StrEnum):
    auto = "auto"  # CUDA when present, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class Progress(StrEnum):
    auto = "auto"  # a bar on a terminal, one line per epoch otherwise
    bar = "bar"
    lines = "lines"
    off = "off"


class Interval(StrEnum):
    epoch = "epoch"  # scheduler.step() after each epoch
    step = "step"  # ... after each batch (OneCycle)


@dataclass
class ChoicesConf:
    """The option chosen in each group (`model: cnn`), read from Hydra's `hydra.runtime.choices`:
    it names the checkpoint folder, the run and the figures, and the recorded config keeps it."""

    model: str = "${hydra:runtime.choices.model}"
    optim: str = "${hydra:runtime.choices.optim}"
    init: str = "${hydra:runtime.choices.init}"
    sched: str = "${hydra:runtime.choices.sched}"
    dropout: str = "${hydra:runtime.choices.dropout}"


def job_config(composed: DictConfig) -> DictConfig:
    """The config a job sees, from one composed with `return_hydra_config=True` outside a job
    (preflight, rerun, tests): `choices` read from its `hydra` node, which is then removed, and
    `output_dir` (unless given) the folder Hydra makes for a single run, `hydra.run.dir`."""
    with open_dict(composed):
        for group in GROUPS:
            composed.choices[group] = composed.hydra.runtime.choices[group]
        if OmegaConf.is_interpolation(composed, "output_dir"):  # not given: Hydra's default
            composed.output_dir = os.path.abspath(composed.hydra.run.dir)  # as Hydra makes it
        del composed["hydra"]
    return composed


def upgrade_recorded(recorded: DictConfig) -> DictConfig:
    """A config.yaml recorded before the choices node (a `name` in each group's node, the
    scheduler's `interval` in its node) or `output_dir` (then null: not recorded) in today's
    form, so older runs still predict and rerun."""
    with open_dict(recorded):
        recorded.setdefault("output_dir", None)
        for group in (*GROUPS, "launcher"):
            name = recorded.get(group, {}).pop("name", None)
            if name is not None and group in GROUPS:
                OmegaConf.update(recorded, f"choices.{group}", name)
        interval = recorded.get("sched", {}).pop("interval", None)
        if interval is not None:
            OmegaConf.update(recorded, "train.sched_interval", interval)
    return recorded


# --- top level ---------------------------------------------------------------------------------
@dataclass
class TrainConf:
    epochs: int = 20
    batch_size: int = 20
    progress: Progress = Progress.auto
    sched_interval: Interval = Interval.epoch  # set by the sched option (sched=onecycle: step)
    label_smoothing: float = 0.0
    divergence_loss: float = 100.0  # a training loss above this (chance is ln 10) is divergence


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
    device: Device = Device.auto
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    deterministic: bool = True  # bit-identical metrics for the same config and seed
    plots: bool = True  # write the per-run figures (about 2 s of matplotlib per run)
    resume: Any = False  # false, true (this config's checkpoint; in -m, this sweep) or a run id
    objectives: List[str] = field(default_factory=lambda: ["val/loss"])  # what run.py returns
    output_dir: Optional[str] = "${hydra:runtime.output_dir}"  # the run's files (Hydra's)
    train: TrainConf = field(default_factory=TrainConf)
    eval: EvalConf = field(default_factory=EvalConf)
    data: DataConf = field(default_factory=DataConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    choices: ChoicesConf = field(default_factory=ChoicesConf)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=LabConfig)
    # outside the groups (`/schema_model_cnn`, which conf/model/cnn.yaml extends), so that no
    # schema is an option (`model=cnn_schema`) and --help lists only the real ones
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
            cs.store(name=f"schema_{group}_{name}", node=node)


def load_logged_config(path) -> DictConfig:
    """A run's recorded config.yaml, checked against the schema."""
    return OmegaConf.merge(OmegaConf.structured(LabConfig), upgrade_recorded(OmegaConf.load(path)))


register()
