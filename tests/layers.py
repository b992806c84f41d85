"""Run the import-linter contract of pyproject.toml over the package (`make lint-imports`,
tests/test_architecture.py); plain `lint-imports` in the repository does the same.

The package's parts live in the card's top-level folders (`eval/` is `sftmerge.eval`, see
[tool.setuptools.package-dir]); `sftmerge/eval`, `sftmerge/train` and `sftmerge/plugins` are
links to them, so tools that read one folder per package (import-linter's grimp) see it whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

REPO = Path(__file__).resolve().parents[1]


def package_modules() -> Iterator[Tuple[str, Path]]:
    """(dotted name, path) of every module of the package, through the links."""
    for folder, dirs, files in os.walk(REPO / "sftmerge", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in sorted(files):
            if f.endswith(".py"):
                path = Path(folder) / f
                name = ".".join(path.relative_to(REPO).with_suffix("").parts)
                yield name.removesuffix(".__init__"), path


def lint_imports() -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache"], cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=False)


if __name__ == "__main__":
    result = lint_imports()
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
