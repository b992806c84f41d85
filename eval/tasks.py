"""What a task is to the evaluator: its settings in, its result out, and its code by name.

The tasks themselves (names, metrics, data locations) are declared in
`sftmerge.data.tasks`; here each task's "module:function" runner is imported on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sftmerge.data.tasks import parse_tasks, task
from sftmerge.errors import SftmergeError

__all__ = ["EvalSettings", "TaskResult", "check_settings", "default_max_new_tokens", "parse_tasks", "runner"]


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
    allow_weak_sandbox: bool = False  # run code without bubblewrap (docs/security.md)
    code_samples: int = 1
    code_temperature: float = 0.8
    code_timeout: float = 10.0
    code_workers: int = 4
    judge: Optional[str] = None  # a local judge model folder (alpaca)
    judge_url: Optional[str] = None  # or an OpenAI-compatible endpoint (base URL, e.g. http://host:8000/v1)
    judge_model: Optional[str] = None  # the model name sent to that endpoint
    vllm: Optional[object] = None  # VllmOptions (eval/vllm_options.py) for the vLLM backend; None: defaults
    cpu_workers: Optional[int] = None  # HF backend without a GPU: models side by side (eval/cpu_pool.py); None: auto


@dataclass
class TaskResult:
    metrics: Dict[str, Dict]
    settings: Dict
    samples: List[Dict]
    extra: Dict = field(default_factory=dict)  # further top-level keys of the result file
    files: Dict[str, object] = field(default_factory=dict)  # further JSON files beside it


def check_settings(settings: EvalSettings) -> None:
    """Numeric options out of range, as one line, before any model is loaded."""
    at_least_one = {"--limit": settings.limit, "--batch-size": settings.batch_size,
                    "--max-new-tokens": settings.max_new_tokens, "--code-samples": settings.code_samples,
                    "--code-workers": settings.code_workers, "--cpu-workers": settings.cpu_workers}
    for flag, value in at_least_one.items():
        if value is not None and value < 1:
            raise SftmergeError(f"{flag} must be at least 1 (got {value})")
    if not settings.code_timeout > 0:
        raise SftmergeError(f"--code-timeout must be more than 0 seconds (got {settings.code_timeout})")
    if not settings.code_temperature >= 0:
        raise SftmergeError(f"--code-temperature must be at least 0 (got {settings.code_temperature})")


def runner(name: str) -> Callable:
    """The task's `run(model, settings, workdir) -> TaskResult`, imported from its registry entry."""
    module, function = task(name).runner.split(":")
    return getattr(importlib.import_module(module), function)


def default_max_new_tokens(settings: EvalSettings, default: int) -> int:
    return settings.max_new_tokens if settings.max_new_tokens is not None else default
