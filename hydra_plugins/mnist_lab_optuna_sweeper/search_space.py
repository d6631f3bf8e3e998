"""Hydra's sweep syntax to Optuna distributions, as Hydra's own Optuna sweeper reads it:

    optim.lr=tag(log, interval(1e-4, 1e-2))   log-uniform float
    dropout.p=interval(0.0, 0.5)              uniform float
    data.limit=int(interval(1000, 5000))      uniform int (Hydra reads interval's bounds as floats)
    train.batch_size=choice(32, 64, 128)      categorical
    train.epochs=range(2, 8, 2)               int (or float) grid 2, 4, 6; shuffle(...): categorical

Anything else (`model=cnn`, `+x=1`) is fixed and passed to every trial as written.
"""

from __future__ import annotations

import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

SAFE = re.compile(r"[\w.:/+-]*")  # values an override may carry without quotes


def distribution(override: Override):
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        points = list(override.sweep_iterator())
        if len(points) < 2 or value.step < 0:
            return CategoricalDistribution(points)
        if all(isinstance(p, int) for p in points):
            return IntDistribution(points[0], points[-1], step=int(value.step))
        return FloatDistribution(points[0], points[-1], step=value.step)
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{override.input_line}: Optuna takes interval, choice and range sweeps")


def parse(lines: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(name -> distribution for the swept keys, the fixed overrides as written). A key given
    twice takes its last value: the command line after `hydra.sweeper.params`."""
    last: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        last.pop(override.get_key_element(), None)
        last[override.get_key_element()] = override
    space = {key: distribution(o) for key, o in last.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in last.values() if not o.is_sweep_override()]
    return space, fixed


def as_override(name: str, value: Any) -> str:
    """`name=value`, quoted where Hydra's grammar needs it (a choice of strings with spaces)."""
    if isinstance(value, str) and not SAFE.fullmatch(value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{name}={value}"
