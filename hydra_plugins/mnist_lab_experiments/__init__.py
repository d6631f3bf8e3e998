"""Puts the project's top-level `experiments/` folder on Hydra's search path as the group `experiment`.

Hydra names a config group after its folder, so a plain `file://` search path entry would make
the group `experiments`. A small ConfigSource serves the folder under the group name instead, and
a SearchPathPlugin adds it with an absolute path, so `experiment=NAME` works from any directory.
Hydra discovers both through the `hydra_plugins` namespace package once the project is installed.
"""

from __future__ import annotations

import os
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra._internal.core_plugins.file_config_source import FileConfigSource

GROUP = "experiment"
EXPERIMENTS_DIR = os.environ.get(
    "MNIST_LAB_EXPERIMENTS",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments"),
)


class ExperimentsConfigSource(FileConfigSource):
    """A folder of YAML files served as the options of the `experiment` group."""

    @staticmethod
    def scheme() -> str:
        return "mnist-lab-experiments"

    @staticmethod
    def _inner(config_path: str) -> Optional[str]:
        if config_path == GROUP:
            return ""
        if config_path.startswith(GROUP + "/"):
            return config_path[len(GROUP) + 1:]
        return None

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP) and self.available()

    def is_config(self, config_path: str) -> bool:
        inner = self._inner(config_path)
        return bool(inner) and super().is_config(inner)

    def load_config(self, config_path: str) -> ConfigResult:
        return super().load_config(self._inner(config_path) or config_path)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if config_path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return sorted(f[: -len(".yaml")] for f in os.listdir(self.path) if f.endswith(".yaml"))


class ExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        path = os.path.realpath(EXPERIMENTS_DIR)
        search_path.append(provider="mnist-lab", path=f"{ExperimentsConfigSource.scheme()}://{path}")
