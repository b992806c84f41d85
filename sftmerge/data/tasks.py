"""The one registry of evaluation tasks and training data sets.

Declarative only: names, metrics, where the data lives. Each task's code is named as a
"module:function" string and imported by `sftmerge.eval.tasks.runner` when a task runs,
so the layers below evaluation (data loading, model cards) can read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

from sftmerge.errors import SftmergeError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str  # as the model card names the data set
    runner: str  # "module:function", a `run(model, settings, workdir) -> TaskResult`
    metrics: Tuple[str, ...]  # in the order the task reports them
    lower_is_better: FrozenSet[str] = frozenset()  # the rest: higher is better
    hub: Optional[str] = None  # Hub dataset id; None: built in
    local_dir: Optional[str] = None  # folder of a --data-dir holding the local copy
    local_files: Mapping[str, str] = field(default_factory=dict)  # role (split) -> file in local_dir
    executes_code: bool = False  # runs model-written programs: needs --allow-code-execution
    trained_format: bool = False  # prompts in the model's training format (read from its run's records)

    @property
    def dataset_id(self) -> str:
        """The Hub id, or the task's own name for a built-in task."""
        return self.hub or self.name


# In the order of the summary's columns and the model card's rows.
TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("gsm8k", "GSM8K", "sftmerge.eval.gsm8k:run", ("strict_match", "flexible_extract"),
             hub="openai/gsm8k", local_dir="gsm8k", local_files={"train": "train.jsonl", "test": "test.jsonl"}),
    # The same test problems zero-shot in the format the model was trained on (its run's record).
    TaskSpec("gsm8k_trained", "GSM8K (training format, zero-shot)", "sftmerge.eval.gsm8k:run_trained",
             ("strict_match", "flexible_extract"), hub="openai/gsm8k", local_dir="gsm8k",
             local_files={"test": "test.jsonl"}, trained_format=True),
    # The same test problems scored as arith is: strict exact match and the reference's held-out loss.
    TaskSpec("gsm8k_heldout", "GSM8K (training format, held-out loss)", "sftmerge.eval.gsm8k:run_heldout",
             ("exact_match", "loss"), lower_is_better=frozenset({"loss"}), hub="openai/gsm8k", local_dir="gsm8k",
             local_files={"test": "test.jsonl"}, trained_format=True),
    TaskSpec("humaneval", "HumanEval", "sftmerge.eval.code:run_humaneval", ("pass@1", "pass@5", "pass@10", "pass@100"),
             hub="openai/openai_humaneval", local_dir="humaneval", local_files={"test": "HumanEval.jsonl.gz"},
             executes_code=True),
    TaskSpec("mbpp", "MBPP", "sftmerge.eval.code:run_mbpp", ("pass@1", "pass@5", "pass@10", "pass@100"),
             hub="google-research-datasets/mbpp", local_dir="mbpp", local_files={"test": "mbpp.jsonl"},
             executes_code=True),
    TaskSpec("alpaca", "AlpacaEval", "sftmerge.eval.alpaca:run", ("win_rate", "lc_win_rate", "win_prob", "output_chars"),
             hub="tatsu-lab/alpaca_eval", local_dir="alpaca_eval",
             local_files={"prompts": "alpaca_eval_805.jsonl", "references": "gpt4_1106_preview_model_outputs.json"}),
    TaskSpec("arith", "Arithmetic word problems (built-in)", "sftmerge.eval.arith:run", ("exact_match", "loss"),
             lower_is_better=frozenset({"loss"})),
)}

# Metric names where lower is better, whatever the task (the summary marks the best per column).
LOWER_IS_BETTER: FrozenSet[str] = frozenset().union(*(t.lower_is_better for t in TASKS.values()))


def task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise SftmergeError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def parse_tasks(text: str) -> list:
    """`--tasks a,b`: known names, duplicates dropped, order kept."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise SftmergeError("--tasks is empty")
    for name in names:
        task(name)
    return list(dict.fromkeys(names))


def local_files(name: str, data_dir: Path) -> Dict[str, str]:
    """{role: absolute path} of the task's files under DATA_DIR/<local_dir>/; a missing one is an error."""
    spec = task(name)
    out = {}
    for role, file in spec.local_files.items():
        path = Path(data_dir) / spec.local_dir / file
        if not path.is_file():
            raise SftmergeError(f"task {name}: data file {path} not found (--data-dir)")
        out[role] = str(path.resolve())
    return out


@dataclass(frozen=True)
class TrainingData:
    """A training data spec name (`sftmerge.data.pairs`), its sources, and the task that scores it."""

    name: str
    eval_task: str
    hub: Optional[str] = None  # Hub dataset id; None: built in
    hub_config: Optional[str] = None
    local_dir: Optional[str] = None  # folder of a --data-dir (the layout of ../shared/data)
    eval_tasks: Tuple[str, ...] = ()  # `sftmerge eval --tasks auto`: every task this data supports

    def __post_init__(self):
        if not self.eval_tasks:
            object.__setattr__(self, "eval_tasks", (self.eval_task,))


TRAINING: Dict[str, TrainingData] = {d.name: d for d in (
    # arith problems are GSM8K-style (reasoning, then `#### N`): GSM8K in both variants applies too.
    TrainingData("arith", "arith", eval_tasks=("arith", "gsm8k", "gsm8k_trained")),
    # A 135M model's GSM8K accuracy is near 0: its runs are judged by the held-out loss first.
    TrainingData("gsm8k", "gsm8k_heldout", "openai/gsm8k", "main", "gsm8k",
                 eval_tasks=("gsm8k_heldout", "gsm8k", "gsm8k_trained")),
    TrainingData("alpaca", "alpaca", "tatsu-lab/alpaca", None, "alpaca"),
    TrainingData("code", "mbpp", "google-research-datasets/mbpp", "full", "mbpp", eval_tasks=("mbpp", "humaneval")),
)}
