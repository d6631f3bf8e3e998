"""Hydra's sweep syntax to Optuna distributions, case by case as Hydra's own Optuna sweeper reads:

    x=choice(1, 2)                       categorical [1, 2]
    x=shuffle(range(1, 3))               categorical of range's values [1, 2]
    x=range(1, 3)                        int 1..3, both ends included (Hydra's basic sweeper: 1, 2)
    x=range(0.5, 5.5, step=1)            float 0.5..5.5 in steps of 1
    x=interval(1, 5)                     uniform float (Hydra reads interval's bounds as floats)
    x=int(interval(1, 5))                uniform int
    x=tag(log, interval(1e-4, 1e-2))     log-uniform float; with int(...), log-uniform int

Anything else (`model=cnn`, `+x=1`, `~z`) is fixed and passed to every trial as written. The
grid sampler takes each distribution's points as Hydra's plugin does: a range without its end.
`hydra.sweeper.search_space` (deprecated by Hydra) is read in its old form, a mapping of name to
`{type: int | float | categorical, low, high, step, log, choices}`.
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
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(value.start), float(value.stop),
                                     step=float(value.step) if value.step else None)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
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
        key = override.input_line if override.is_delete() else override.get_key_element()
        last.pop(key, None)
        last[key] = override
    space = {key: distribution(o) for key, o in last.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in last.values() if not o.is_sweep_override()]
    return space, fixed


def from_search_space(search_space) -> dict[str, Any]:
    """Hydra's deprecated `hydra.sweeper.search_space` as distributions."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    space = {}
    for name, spec in (search_space or {}).items():
        kind = str(spec["type"]).rpartition(".")[2]  # a name, or DistributionType.int
        log, step = bool(spec.get("log")), spec.get("step")
        if kind == "categorical":
            space[str(name)] = CategoricalDistribution(list(spec["choices"]))
        elif kind == "int":
            space[str(name)] = IntDistribution(int(spec["low"]), int(spec["high"]), log=log,
                                               step=1 if log or step is None else int(step))
        elif kind == "float":
            space[str(name)] = FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                 log=log, step=None if log else step)
        else:
            raise ValueError(f"search_space.{name}: type {spec['type']!r} is not int, float or "
                             "categorical")
    return space


def grid_points(name: str, distribution) -> list:
    """The points the grid sampler tries for one distribution (Hydra's plugin's rule)."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, (IntDistribution, FloatDistribution)) and distribution.step:
        count = int((distribution.high - distribution.low) // distribution.step)
        return [distribution.low + i * distribution.step for i in range(count)]
    raise ValueError(f"{name}: the grid sampler takes choice and range sweeps, not a continuous "
                     "interval")


def is_container(text: str) -> bool:
    """Whether a choice's text is a list or dict (a choice of lists, `choice([16,32],[32,64])`,
    which Optuna keeps as text) rather than a text to quote."""
    if text[:1] not in "[{":
        return False
    try:
        value = OverridesParser.create().parse_overrides([f"k={text}"])[0].value()
    except Exception:
        return False
    return isinstance(value, (list, dict))


def as_override(name: str, value: Any) -> str:
    """`name=value`, quoted where Hydra's grammar needs it (a choice of strings with spaces)."""
    if isinstance(value, str) and not SAFE.fullmatch(value) and not is_container(value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{name}={value}"
