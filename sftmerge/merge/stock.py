"""Run a recipe through the stock `mergekit-yaml` into a folder that appears only when complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sftmerge.errors import SftmergeError


def console_script(name: str) -> str:
    """A console script of this interpreter's environment, else the one on PATH."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise SftmergeError(f"{name} not found beside {sys.executable} nor on PATH (pip install mergekit)")
    return found


def mergekit_yaml(recipe: Path, target: Path, random_seed: int = 42) -> bool:
    """Merge `recipe` into `target`; False (nothing done) when `target` already holds a model.

    `--random-seed` fixes mergekit's global seed (DARE's drop mask); param_select's own
    seed is in the recipe. The output appears only when complete (`atomic_output_dir`).
    """
    from sftmerge.io.fsutil import atomic_output_dir

    if (target / "config.json").is_file():
        return False
    if not Path(recipe).is_file():
        raise SftmergeError(f"recipe {recipe} not found")
    shutil.rmtree(target.with_name(f".{target.name}.tmp"), ignore_errors=True)  # left by older versions
    with atomic_output_dir(target, inputs=[recipe]) as tmp:
        # mergekit-yaml writes into a folder of its own: the empty temp folder it is given.
        proc = subprocess.run([console_script("mergekit-yaml"), str(recipe), str(tmp),
                               "--random-seed", str(random_seed)], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SftmergeError(f"mergekit-yaml {recipe} failed: {tail[0]}")
    return True
