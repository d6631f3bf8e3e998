"""A study's identity: what makes its trials comparable, recorded on the study when it is made.

The search space, the directions, the sampler and the pruner, and the fixed settings that define
the objective: the app's config without `hydra`, the searched keys, and the keys the app names
in `hydra.sweeper.identity_ignore` (bookkeeping such as output folders, which change no result).
A command whose identity differs never joins a study: under a default name (the config's
`study_name`) it gets a study of its own, named `NAME-<hash>`, and says so; under a name given on
the command line it is refused in one line that names the difference. `study_for` decides, and
an app may call it before it writes records of its own; the sweeper calls it again.
"""

import hashlib
import json
import warnings
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mnist_lab_optuna_sweeper import search_space, storages
from hydra_plugins.mnist_lab_optuna_sweeper.api import SweeperConfigError

IDENTITY_ATTR = "identity"  # the study's user attribute: its identity, as JSON
SHOWN = 3  # differences named in a message


def space_of(sweeper: DictConfig, arguments: List[str]) -> Tuple[dict, List[str]]:
    """(distributions, fixed overrides) from `params`, the deprecated `search_space` and the
    command line's sweep arguments; ValueError names a value that can't be searched."""
    params = [f"{k}={v}" for k, v in (sweeper.params or {}).items()]
    space, fixed = search_space.parse(params + list(arguments))
    if sweeper.search_space:
        warnings.warn("hydra.sweeper.search_space is deprecated (as in Hydra's Optuna sweeper): "
                      "configure the search space with hydra.sweeper.params", UserWarning,
                      stacklevel=3)
        space = {**search_space.from_search_space(sweeper.search_space), **space}
    return space, fixed


def leaves(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, f"{prefix}{key}.")
    else:
        yield prefix[:-1], value


def identity(config: DictConfig, space: dict) -> Dict[str, str]:
    """The study's identity as flat `key: value` strings (see the module's doc)."""
    sweeper = config.hydra.sweeper
    ignored = tuple(sweeper.get("identity_ignore") or ())
    fixed = OmegaConf.to_container(config, resolve=False)
    fixed.pop("hydra", None)
    found = {f"space.{key}": repr(dist) for key, dist in sorted(space.items())}
    found["direction"] = str(OmegaConf.to_container(sweeper.direction)
                             if OmegaConf.is_list(sweeper.direction) else sweeper.direction)
    for part in ("sampler", "pruner"):
        given = sweeper.get(part)
        if given is not None:
            found.update((f"{part}.{k}", json.dumps(v)) for k, v in
                         leaves(OmegaConf.to_container(given, resolve=False)))
    searched = {key.lstrip("+") for key in space}
    for key, value in leaves(fixed):
        if key in searched or any(key == i or key.startswith(f"{i}.") for i in ignored):
            continue
        found[key] = json.dumps(value)
    return found


def differences(recorded: Dict[str, str], mine: Dict[str, str]) -> str:
    """`train.epochs: 1 here, 6 in the study; ...`, the first few."""
    keys = sorted(k for k in set(recorded) | set(mine) if recorded.get(k) != mine.get(k))
    shown = [f"{k}: {mine.get(k, 'unset')} here, {recorded.get(k, 'unset')} in the study"
             for k in keys[:SHOWN]]
    return "; ".join(shown) + (f"; {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def given_name(config: DictConfig) -> bool:
    """True when the command line names the study (hydra.sweeper.study_name=...)."""
    return any(o.partition("=")[0].lstrip("+~") == "hydra.sweeper.study_name"
               for o in config.hydra.overrides.hydra)


def recorded_identity(url: str, name: str) -> Optional[Dict[str, str]]:
    """The identity recorded on study `name`; {} for a study made before identities were kept,
    None when there is no such study."""
    storage = storages.open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    text = storage.get_study_user_attrs(study_id).get(IDENTITY_ATTR)
    return json.loads(text) if text else {}


def study_for(config: DictConfig, url: str, name: str, arguments: List[str]
              ) -> Tuple[str, Optional[str]]:
    """(the study this command works on, a line saying why it is not `name`, or None). Raises
    SweeperConfigError when the command line names a study made with other settings."""
    space, _ = space_of(config.hydra.sweeper, arguments)
    mine = identity(config, space)
    recorded = recorded_identity(url, name)
    if recorded is None or recorded == {} or recorded == mine:
        return name, None
    if given_name(config):
        raise SweeperConfigError(
            f"hydra.sweeper.study_name={name} is not allowed: study {name!r} in "
            f"{storages.shown(url)} was made with other settings ({differences(recorded, mine)});"
            " give the same settings to continue it, or another study_name")
    digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:8]
    own = f"{name}-{digest}"
    return own, (f"study {name!r} was made with other settings ({differences(recorded, mine)}): "
                 f"this sweep works on study {own!r}")


def record(study, config: DictConfig, arguments: List[str]) -> None:
    """Record this command's identity on a study that has none yet (new, or made before)."""
    if IDENTITY_ATTR not in study.user_attrs:
        space, _ = space_of(config.hydra.sweeper, arguments)
        study.set_user_attr(IDENTITY_ATTR, json.dumps(identity(config, space), sort_keys=True))
