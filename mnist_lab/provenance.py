"""What a run needs to be repeated: code version, library versions, machine, data checksums."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata

from mnist_lab.schema import PROJECT_ROOT


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower(),
            "mlflow.source.git.commit": commit}


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_tags(device: str, checksums: dict[str, str]) -> dict[str, str]:
    import torch

    tags = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        # the installed version, read without importing torchvision (~0.5 s a run)
        "torchvision": installed_version("torchvision"),
        "device": device,
        "torch.threads": str(torch.get_num_threads()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
    tags.update(git_state())
    tags.update({f"data.sha256.{name}": digest for name, digest in checksums.items()})
    return tags
