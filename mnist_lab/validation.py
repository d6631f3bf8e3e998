"""What each config value may be: `validate` refuses the first one out of range, before any work.

Hydra's typed schemas (schema.py) refuse unknown options, misspelt keys and wrong types while
composing; this module checks the values, in three generic passes and one table:

- the config has exactly the schema's keys: none added with `+`, none deleted with `~`, none `???`;
- every float is finite and every integer fits in 64 bits (keys without a rule of their own);
- `RULES`: one test and one sentence per key that needs a range or a choice;
- then the checks that relate two values (batch size vs the training set, nesterov vs momentum);
- last, each component's keys against its `_target_`'s signature, as torchtune checks its configs,
  so a new component is one YAML file (a schema in schema.py only adds types).

No MLflow here, and torch only for that last pass (the job imports it next anyway): a bad value
answers in well under a second. The only file read is the training labels' IDX header.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import inspect
import math
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab.errors import ConfigError
from mnist_lab.identity import GROUPS, leaves

INT64_MAX = 2**63 - 1
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # names end up in folder and run names
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the ten digits


@dataclasses.dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    allowed: str


def number(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False, integer: bool = False, what: str = "") -> Rule:
    """A finite number (or an integer) within bounds; the sentence says which."""
    def test(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (integer and not isinstance(value, int)):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    kind = what or ("an integer" if integer else "a finite number")
    if math.isinf(high):
        text = f"{kind} {'>' if low_open else '>='} {low:g}" if math.isfinite(low) else kind
    else:
        text = (f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}"
                f"{')' if high_open else ']'}")
    return Rule(test, text)


def count(low: int, high: int = INT64_MAX) -> Rule:
    rule = number(low, high, integer=True)
    return Rule(rule.test, f"an integer from {low} to {high}" if high < INT64_MAX else
                f"an integer >= {low}")


def sizes(most: int, largest: int, least: int = 0) -> Rule:
    """A list of `least` to `most` positive integers, none above `largest`."""
    size = count(1, largest)
    entries = f"{least} to {most}" if least else f"at most {most}"
    return Rule(lambda v: isinstance(v, list) and least <= len(v) <= most
                and all(size.test(x) for x in v),
                f"a list of {entries} integers from 1 to {largest}")


def text(most: int) -> Rule:
    return Rule(lambda v: isinstance(v, str) and 0 < len(v) <= most,
                f"a non-empty text of at most {most} characters")


NAMED = Rule(lambda v: isinstance(v, str) and NAME.fullmatch(v) is not None,
             "letters, digits, '_', '.' and '-', at most 64, not starting with '.' or '-'")
UNIT = number(0, 1, high_open=True)  # [0, 1)
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)

SEED = Rule(count(0).test, f"an integer from 0 to 2**63 - 1 = {INT64_MAX}")

# what run.py can return to a sweeper: the best validation loss, the model's parameter count
OBJECTIVES = ("val/loss", "parameters")

RULES: dict[str, Rule] = {
    "seed": SEED,
    "threads": Rule(count(0, 1024).test, "0 (torch's default) or a thread count up to 1024"),
    "resume": Rule(lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""),
                   "false, true or the MLflow run id of the run to continue"),
    "objectives": Rule(lambda v: isinstance(v, list) and 0 < len(v) == len(set(v))
                       and set(v) <= set(OBJECTIVES),
                       f"distinct names from {', '.join(OBJECTIVES)} (one per sweeper direction)"),
    "model.image_size": Rule(lambda v: v == 28, "28, the side of MNIST's images"),
    "model.num_classes": Rule(lambda v: v == 10, "10, one per digit"),
    "model.hidden": sizes(8, 4096),
    # each conv block halves the 28-pixel side: 28, 14, 7, 3, 1 leaves room for four
    "model.channels": sizes(4, 1024, least=1),
    "model.kernel_size": Rule(lambda v: count(1, 9).test(v) and v % 2 == 1,
                              "an odd integer from 1 to 9 (the padding keeps the side)"),
    "optim.lr": number(0, low_open=True, what="a finite learning rate"),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": Rule(lambda v: isinstance(v, list) and len(v) == 2
                        and all(UNIT.test(b) for b in v),
                        "two numbers in [0, 1)"),
    "optim.eps": POSITIVE,
    "optim.momentum": UNIT,
    "optim.dampening": number(0, 1),
    "optim.alpha": UNIT,
    "sched.step_size": count(1),
    "sched.gamma": POSITIVE,
    "sched.T_max": count(1),
    "sched.eta_min": NON_NEGATIVE,
    "sched.max_lr": POSITIVE,
    "sched.epochs": count(1),
    "sched.pct_start": number(0, 1, low_open=True, high_open=True),
    "dropout.p": number(0, 1, high_open=True, what="a probability"),
    "train.epochs": count(1),
    "train.batch_size": count(1),
    "train.label_smoothing": UNIT,
    "train.divergence_loss": Rule(lambda v: number(CHANCE_LOSS, low_open=True).test(v),
                                  f"a finite loss above chance level, ln 10 = {CHANCE_LOSS:.3f}"),
    "eval.batch_size": count(1),
    "data.root": text(4096),
    "data.val_size": count(1),
    "data.split_seed": Rule(lambda v: v is None or SEED.test(v),
                            f"null (seed's) or {SEED.allowed}"),
    "data.limit": Rule(lambda v: v is None or count(1).test(v), "null (all) or at least 1"),
    "data.rotate_degrees": number(0, 180),
    "data.shift_pixels": number(0, 14),
    "checkpoint.dir": text(4096),
    "output_dir": text(4096),
    **{f"choices.{group}": NAMED for group in GROUPS},
    "tracking.experiment": text(256),  # MLflow's SQL stores hold names of up to 256 characters
    "launcher.n_jobs": count(1, 1024),
    "launcher.timeout_min": count(1),
    "launcher.cpus_per_task": count(1, 1024),
    "launcher.gpus_per_node": count(0, 64),
    "launcher.mem_gb": count(1),
    "launcher.stack_size": count(1, 1024),
}


def fail(key: str, value: Any, allowed: str) -> None:
    shown = repr(value)
    if len(shown) > 60:  # a 10,000-character value would not be one readable line
        shown = f"{shown[:40]}... ({len(str(value)):,} characters)"
    raise ConfigError(f"{key}={shown} is not allowed: {allowed}")


def unknown_key(full_key: str, schema: type) -> str:
    """What to say about a key the schema `schema` (a dataclass) does not have."""
    parent, _, key = full_key.rpartition(".")
    knobs = sorted(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
    close = difflib.get_close_matches(key, knobs, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    has = f"has {', '.join(knobs)}" if knobs else "takes no keys"
    return f"not a key of the config; {hint}{parent or 'the top level'} {has}"


def check_keys(node: DictConfig, prefix: str = "") -> None:
    """The schema's keys and no others, each with a value: `+key` and `~key` are refused too."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        for key in node:
            if key not in known:
                fail(f"{prefix}{key}", OmegaConf.select(node, str(key), default=None,
                                                        throw_on_resolution_failure=False),
                     unknown_key(f"{prefix}{key}", schema))
        for key in sorted(known - set(node)):
            fail(f"{prefix}{key}", None, "a value: the key cannot be deleted")
    for key in node:
        if OmegaConf.is_missing(node, key):
            fail(f"{prefix}{key}", "???", "a value (it has no default)")
        if not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            check_keys(node[key], f"{prefix}{key}.")


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
                return None  # the loader reports the problem with its own message
    return None


VALID: set[str] = set()  # the configs (resolved) that passed in this process


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value out of range. Reads only the labels file header.
    A config is checked once per process: run.py's preflight, the job's start and `job.run`
    all ask, and the same config passes at once the second time."""
    check_keys(cfg)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve
        fail(getattr(err, "full_key", None) or "config", None, str(err).splitlines()[0])
    if repr(container) in VALID:
        return
    values = dict(leaves(container))
    for key, value in values.items():
        rule = RULES.get(key)
        if rule is not None:
            if not rule.test(value):
                fail(key, value, rule.allowed)
        elif isinstance(value, float) and not math.isfinite(value):
            fail(key, value, "a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            fail(key, value, "an integer that fits in 64 bits")
    check_combinations(cfg)
    check_arguments(cfg)
    VALID.add(repr(container))


def check_arguments(node: DictConfig, prefix: str = "") -> None:
    """Every key of a `_target_` node is an argument its target takes."""
    from hydra.utils import get_object

    if "_target_" in node:
        target = node._target_
        try:
            params = inspect.signature(get_object(target)).parameters
        except Exception as err:  # noqa: BLE001  a target that does not import
            fail(f"{prefix}_target_", target, f"an importable callable ({err})")
        takes = any(p.kind is p.VAR_KEYWORD for p in params.values())
        allowed = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY,
                                                               p.POSITIONAL_OR_KEYWORD)]
        for key in node:
            if not str(key).startswith("_") and key not in params and not takes:
                fail(f"{prefix}{key}", node[key], f"not an argument of {target}, which takes "
                                                  f"{', '.join(allowed)}")
    for key in node:
        if not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            check_arguments(node[key], f"{prefix}{key}.")


def check_combinations(cfg: DictConfig) -> None:
    """Values that are fine alone and wrong together."""
    optim = cfg.optim
    if optim.get("nesterov") and (optim.momentum <= 0 or optim.dampening != 0):
        fail("optim.nesterov", True, f"false, or optim.momentum > 0 with optim.dampening=0 "
                                     f"(they are {optim.momentum} and {optim.dampening})")
    if optim.get("fused") and optim.get("foreach"):
        fail("optim.fused", True, "false or null when optim.foreach=true (torch takes one)")
    total = peek_count(Path(cfg.data.root))
    if total is not None:
        if cfg.data.val_size >= total:
            fail("data.val_size", cfg.data.val_size,
                 f"smaller than the {total} training images in {cfg.data.root}")
        train_size, why = total - cfg.data.val_size, f"data.val_size={cfg.data.val_size}"
        if cfg.data.limit is not None and cfg.data.limit < train_size:
            train_size, why = cfg.data.limit, f"data.limit={cfg.data.limit}"
        if cfg.train.batch_size > train_size:  # either key may be the one the user just set
            fail("train.batch_size", cfg.train.batch_size,
                 f"at most the training set's {train_size} images ({why})")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("device", "cuda", "auto or cpu: this machine has no CUDA device")
