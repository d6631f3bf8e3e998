"""run.py's front door: the whole command line is checked before Hydra starts a job.

Hydra reports its own errors (an unknown option, a misspelt key, a wrong type, an override it
cannot parse) in several lines with exit status 1, and it creates the job's outputs/DATE/TIME
folder before the task function could refuse a bad value. `first_problem` composes the same
config first, with Hydra's compose API, and validates it: run.py prints a problem in one line on
stderr and exits with status 2, and nothing is created. A sweep is composed job by job, as the
basic sweeper expands it: refused if a job does not compose (Hydra would stop halfway) or if no
job passes `validate`; when only some do, it runs and the others are recorded FAILED
(policy.run_job).
"""

from __future__ import annotations

import re

from mnist_lab.errors import ConfigError
from mnist_lab.validation import unknown_key, validate
from mnist_lab.schema import PROJECT_ROOT, job_config

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
MOST_COMMAS = 1000  # Hydra parses a list in quadratic time: 10,000 values take minutes
MOST_JOBS_CHECKED = 100  # a bigger sweep's later jobs are checked as they start
MOST_JOBS = 10_000  # a grid sweep's jobs: more is a mistake (range(10**6)), and Hydra lists them
TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
              "String": "a text"}


def first_problem(argv: list[str]) -> str | None:
    """What is wrong with `python run.py ARGV`, in one line, or None."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_dir or args.config_path or args.config_name):
        return None  # Hydra's own commands and other config folders: Hydra answers those
    try:
        return problem_in(args.overrides, args.multirun)
    except ConfigError as err:
        return str(err)
    except Exception as err:  # Hydra's and OmegaConf's errors: composition failed
        return one_line(err)


def compose_job(overrides: list[str], return_hydra_config: bool = False):
    """The config `python run.py OVERRIDES` gives its job, composed without starting one (rerun,
    tests); with `return_hydra_config`, as composed, its `hydra` node kept."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return cfg if return_hydra_config else job_config(cfg)


def problem_in(overrides: list[str], multirun: bool) -> str | None:
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for line in overrides:
        if line.count(",") > MOST_COMMAS:
            return (f"{line.split('=')[0].lstrip('+~')}: {line.count(','):,} commas in one "
                    f"override; at most {MOST_COMMAS:,} (no key takes a list that long)")
    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group
        if not key.startswith("hydra") and key.rpartition(".")[2].startswith("_"):
            return (f"{override.input_line}: {key} is wiring, set by the group's option; choose "
                    f"another option ({key.split('.')[0]}=...) instead")
        if key.split(".")[0] == "choices":
            return (f"{override.input_line}: choices records the group options chosen; choose "
                    f"one with {key.partition('.')[2] or 'model'}=... instead")
    if problem := sweep_size_problem(parsed, most=None):  # an empty sweep has no first value
        return problem
    base = []  # a discrete sweep's first value stands for it (an interval is the sweeper's)
    for override in parsed:
        if not override.is_sweep_override():
            base.append(override.input_line)
        elif override.is_discrete_sweep():
            first = next(iter(override.sweep_string_iterator()))
            base.append(f"{override.get_key_element()}={first}")
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=base, return_hydra_config=True)
        sweeps = [o for o in parsed if o.is_sweep_override()]
        if not multirun and str(cfg.hydra.mode) != "RunMode.MULTIRUN":
            if sweeps:
                return (f"{sweeps[0].input_line}: a comma sweeps several values, which needs -m; "
                        "a list is written [a,b], a text with a comma 'a,b'")
            validate(job_config(cfg))
            return None
        jobs = [base]
        params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
        if cfg.hydra.sweeper._target_.endswith(".BasicSweeper"):
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

            expanded = OverridesParser.create().parse_overrides([*params, *overrides])
            if problem := sweep_size_problem(expanded, most=MOST_JOBS):
                return problem
            jobs = BasicSweeper.split_arguments(expanded, None)[0]
        elif problem := search_problem([*params, *overrides], base, compose):
            return problem
        refusals, runnable = [], False
        for job in jobs[:MOST_JOBS_CHECKED]:
            # a job that does not compose would stop the sweep halfway: that error propagates
            cfg = job_config(compose("config", overrides=job, return_hydra_config=True))
            try:
                validate(cfg)
                runnable = True
            except ConfigError as err:  # the sweep runs and records this job FAILED
                refusals.append(str(err))
        if runnable or not refusals:
            return None
        if len(refusals) > 1:
            return f"{refusals[0]} (and so is every other job of the sweep)"
        return refusals[0]


def sweep_size_problem(parsed: list, most: int | None) -> str | None:
    """An empty sweep, or one of more than `most` jobs (counted, not listed: range(10**7)
    would take Hydra minutes to expand), in one line naming the key."""
    import math

    from hydra.core.override_parser.types import RangeSweep

    sizes = []
    for override in (o for o in parsed if o.is_discrete_sweep()):
        sweep = override.value()
        if isinstance(sweep, RangeSweep):
            size = max(0, math.ceil((sweep.stop - sweep.start) / sweep.step))
        else:
            size = len(list(override.sweep_string_iterator()))
        if size == 0:
            return f"{override.input_line}: an empty sweep, it gives {override.key_or_group} no " \
                   "value, so no job would run"
        sizes.append(size)
    if most is not None and math.prod(sizes) > most:
        return (f"a sweep of {math.prod(sizes):,} jobs; at most {most:,} (fewer values, "
                "or hydra/sweeper=optuna with a budget of n_trials)")
    return None


def search_problem(searched: list[str], base: list[str], compose) -> str | None:
    """The Optuna sweeper's search space, checked whole before anything starts: each searched
    key's distribution (a reversed interval, a log interval from 0 or below), and its ends or
    choices against the lab's own checks, so a space that reaches outside what the key
    accepts is refused before a trial fails on it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from optuna.distributions import CategoricalDistribution

    from hydra_plugins.mnist_lab_optuna_sweeper import search_space

    try:
        space, _ = search_space.parse(searched)
    except ValueError as err:
        return f"hydra.sweeper.params: {err}"
    parser = OverridesParser.create()
    neutral = [line for line in base if line.partition("=")[0].lstrip("+~") not in space]
    job = job_config(compose("config", overrides=neutral, return_hydra_config=True))
    for key, dist in space.items():
        values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low,
                                                                                  dist.high)
        for value in values:
            if "." in key:  # a value, as Hydra reads it from the override: set on the config
                trial = job.copy()
                given = parser.parse_override(search_space.as_override(key, value)).value()
                OmegaConf.update(trial, key.lstrip("+"), given, force_add=True)
            else:  # a group's option: composed
                trial = job_config(compose("config", overrides=[
                    *neutral, search_space.as_override(key, value)], return_hydra_config=True))
            try:
                validate(trial)
            except ConfigError as err:
                return (f"{key}: the search reaches {value!r}, which is refused ({err}); "
                        "search only values the key takes")
    return None


def one_line(err: Exception) -> str:
    """Hydra's multi-line composition error as one line, with its suggestion where it has one."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = err.__cause__
    if isinstance(err, OverrideParseException):
        reason = str(err.message).splitlines()[0]
        return f"{err.override}: cannot parse this override ({reason}); see {GRAMMAR}"
    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, name = (err.missing_cfg_file or "?/?").rpartition("/")
        return f"{group}={name} is not an option: {group} is one of {', '.join(err.options)}"
    full_key = getattr(cause, "full_key", None)
    if full_key and "not in" in str(cause).splitlines()[0]:  # a key the schema doesn't have
        schema = getattr(cause, "object_type", None)
        allowed = (unknown_key(full_key, schema) if isinstance(schema, type)
                   and hasattr(schema, "__dataclass_fields__") else "not a key of the config")
        return f"{full_key}: {allowed}"
    if full_key:
        reason = str(cause).splitlines()[0]
        typed = re.search(r"converted to (\w+)", reason)
        given = re.search(r"override (\S+)$", str(err))
        if typed is None:
            return f"{given.group(1) if given else full_key}: {reason}"
        value = given.group(1).partition("=")[2] if given else "?"
        return (f"{full_key}={value} is not allowed: "
                f"{TYPE_NAMES.get(typed.group(1), typed.group(1))} ({reason})")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines[:3])
