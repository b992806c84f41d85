"""Run the import-linter contract of pyproject.toml over the package as it is installed.

The package's parts live in the card's top-level folders (`eval/` is `sftmerge.eval`, see
[tool.setuptools.package-dir]); import-linter reads one folder per package, so the tree is
mirrored into one folder first. Used by tests/test_architecture.py and `make lint-imports`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mirror(dest: Path) -> Path:
    """Copy every module of the package into dest/sftmerge/..., as installed."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = project["tool"]["setuptools"]["package-dir"]
    for package in project["tool"]["setuptools"]["packages"]:
        source = REPO / dirs[package] if package in dirs else REPO / package.replace(".", "/")
        target = dest / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint_imports() -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sftmerge-layers-") as tmp:
        root = mirror(Path(tmp))
        lint = Path(sys.executable).with_name("lint-imports")
        return subprocess.run([str(lint), "pyproject.toml", "--no-cache"], cwd=root,
                              env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, check=False)


if __name__ == "__main__":
    result = lint_imports()
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
