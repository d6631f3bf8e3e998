"""Puts the project's top-level `experiments/` folder on Hydra's search path as the group `experiment`.

Hydra names a config group after its folder, so a plain `file://` search path entry would make
the group `experiments`. A small ConfigSource (Hydra's public plugin interface) serves the folder
under the group name instead, and a SearchPathPlugin adds it with an absolute path, so
`experiment=NAME` works from any directory. Hydra discovers both through the `hydra_plugins`
namespace package once the project is installed.
"""

from __future__ import annotations

import os
from typing import List, Optional

from omegaconf import OmegaConf

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

GROUP = "experiment"
EXPERIMENTS_DIR = os.environ.get(
    "MNIST_LAB_EXPERIMENTS",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments"),
)


class ExperimentsConfigSource(ConfigSource):
    """A folder of YAML files served as the options of the `experiment` group."""

    @staticmethod
    def scheme() -> str:
        return "mnist-lab-experiments"

    def _file(self, config_path: str) -> Optional[str]:
        """experiments/NAME.yaml for `experiment/NAME`, else None."""
        group, _, name = config_path.partition("/")
        if group != GROUP or not name or "/" in name:
            return None
        return os.path.join(self.path, self._normalize_file_name(name))

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP) and self.available()

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and os.path.isfile(path)

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not os.path.isfile(path):
            raise ConfigLoadError(f"Config not found : {config_path} in {self.path}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return ConfigResult(config=OmegaConf.create(text), path=f"{self.scheme()}://{self.path}",
                            provider=self.provider, header=self._get_header_dict(text))

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
