"""Resume checkpoints of a training run (an SFT order or a DPO run), shared by both.

The Trainer writes `checkpoint-N/` every `save_steps` steps into the run's work folder and
keeps only the newest. A checkpoint is complete once `trainer_state.json`, the last file
the Trainer writes into it, is there. A save killed half-way leaves a folder without it:
resume then falls back to the newest complete checkpoint (saying so in one line) and
removes the incomplete ones, so the Trainer's rotation never keeps one of them instead.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Tuple

TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR + "-N"


def checkpoint_step(path: Path) -> Optional[int]:
    """N of `checkpoint-N`; None for any other name."""
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / TRAINER_STATE).is_file()


def checkpoints(folder: Path) -> List[Path]:
    """The `checkpoint-N` folders under `folder`, complete or not, in step order."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def resume_point(folder: Path, tidy: bool = True, echo: Callable[[str], None] = print,
                 ) -> Tuple[Optional[str], int]:
    """(newest complete checkpoint under `folder` or None, its step or 0).

    tidy: remove the incomplete ones (the main process; every process gets the same answer).
    """
    found = checkpoints(folder)
    complete = [p for p in found if is_complete(p)]
    broken = [p for p in found if not is_complete(p)]
    newest = complete[-1] if complete else None
    if broken and tidy:
        names = ", ".join(p.name for p in broken)
        start = f"resuming from {newest.name}" if newest else "starting from the beginning"
        echo(f"{folder}: {names} incomplete (a save was interrupted), removed; {start}")
        for p in broken:
            shutil.rmtree(p, ignore_errors=True)
    return (str(newest), checkpoint_step(newest)) if newest else (None, 0)


def has_progress(work: Path) -> bool:
    """Does a work folder hold a complete checkpoint anywhere below it (something a rerun would resume)?"""
    return work.is_dir() and any(is_complete(p) for p in work.rglob("checkpoint-*") if p.is_dir())
