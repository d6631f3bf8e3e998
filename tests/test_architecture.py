"""The architecture holds (docs/architecture.md): the import contracts in pyproject.toml, Hydra's
runtime read in one module, `sys.exit` only in the failure policy and the entry points."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True))"]
MODULES = sorted((ROOT / "mnist_lab").glob("*.py"))


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts on the packages under `root` (its own pyproject.toml)."""
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_every_import_contract_is_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout
    assert "The Hydra plugins know nothing of the lab KEPT" in result.stdout


def test_an_import_that_closes_a_circle_breaks_the_contracts(tmp_path):
    """A copy of the package where the read-only queries import the sweep module inside a
    function (as the old code hid its circle): the layers and the acyclic contract both fail."""
    for name in ("mnist_lab", "hydra_plugins"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    queries = tmp_path / "mnist_lab" / "queries.py"
    queries.write_text(queries.read_text() + "\n\ndef parent_of(config):\n"
                       "    from mnist_lab.sweep import open_parent\n\n"
                       "    return open_parent(config, False)\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No import cycle among the lab's modules BROKEN" in result.stdout
    assert "Commands above orchestration above tracking above the core BROKEN" in result.stdout
    assert "mnist_lab.queries -> mnist_lab.sweep" in result.stdout


def names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)})


def test_hydra_runtime_is_read_in_one_module():
    readers = [p.name for p in MODULES if "HydraConfig" in names_used(p)]
    assert readers == ["context.py"]


def test_only_the_failure_policy_and_entry_points_exit():
    def exits(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        main_blocks = [n for n in tree.body if isinstance(n, ast.If)
                       and "__main__" in ast.unparse(n.test)]
        inner = {id(n) for block in main_blocks for n in ast.walk(block)}
        return any(isinstance(n, ast.Attribute) and n.attr in ("exit", "_exit")
                   or isinstance(n, ast.Raise) and "SystemExit" in ast.unparse(n)
                   for n in ast.walk(tree) if id(n) not in inner)

    assert [p.name for p in MODULES if exits(p)] == ["policy.py"]


def test_no_module_passes_300_lines():
    assert {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > 300} == {}
