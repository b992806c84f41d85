"""What a task is to the evaluator: its settings in, its result out, and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sftmerge.errors import SftmergeError

TASKS = ("gsm8k", "humaneval", "mbpp", "alpaca", "arith")

# Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = {"loss"}


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides a score, recorded in every result file."""

    limit: Optional[int] = None
    data_dir: Optional[Path] = None
    seed: int = 1234
    batch_size: int = 16
    max_new_tokens: Optional[int] = None  # None: each task's default
    arith_seed: int = 0
    allow_code_execution: bool = False
    code_samples: int = 1
    code_temperature: float = 0.8
    code_timeout: float = 10.0
    code_workers: int = 4
    judge: Optional[str] = None


@dataclass
class TaskResult:
    metrics: Dict[str, Dict]
    settings: Dict
    samples: List[Dict]
    extra: Dict = field(default_factory=dict)  # further top-level keys of the result file
    files: Dict[str, object] = field(default_factory=dict)  # further JSON files beside it


def parse_tasks(text: str) -> List[str]:
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not tasks:
        raise SftmergeError("--tasks is empty")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SftmergeError(f"unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
    return list(dict.fromkeys(tasks))


def runner(task: str) -> Callable:
    """The task's `run(model, settings, workdir) -> TaskResult` (imported on demand)."""
    if task == "arith":
        from sftmerge.eval.arith import run
    elif task == "gsm8k":
        from sftmerge.eval.gsm8k import run
    elif task in ("humaneval", "mbpp"):
        from sftmerge.eval.code import runner as code_runner

        run = code_runner(task)
    elif task == "alpaca":
        from sftmerge.eval.alpaca import run
    else:
        raise SftmergeError(f"unknown task {task!r}")
    return run


def default_max_new_tokens(settings: EvalSettings, default: int) -> int:
    return settings.max_new_tokens if settings.max_new_tokens is not None else default
