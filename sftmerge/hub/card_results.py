"""Evaluation result files of one model, read for its model card.

The evaluation writes `RESULTS/<model_name>/<task>.json` (see docs/hub.md); here they
become table rows and the Hub's `EvalResult`s, which `ModelCardData` turns into the
`model-index` block the Hub shows beside the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from sftmerge.data.tasks import TASKS
from sftmerge.errors import SftmergeError

# The table's rows follow the task registry's order; an unknown task keeps its own name.
# Every task is scored on generated text.
HUB_TASK = ("text-generation", "Text Generation")


@dataclass(frozen=True)
class MetricRow:
    task: str
    metric: str
    value: float
    stderr: Optional[float]
    ci95: Optional[Tuple[float, float]]
    n: Optional[int]
    backend: Optional[str]

    @property
    def dataset(self) -> Tuple[str, str]:
        spec = TASKS.get(self.task)
        return (spec.dataset_id, spec.title) if spec else (self.task, self.task)


def read_results(results_dir: str | Path, model_name: str) -> List[MetricRow]:
    """All metrics of `model_name` under `results_dir`, in table order; errors if none."""
    folder = Path(results_dir) / model_name
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SftmergeError(f"no results for {model_name} in {results_dir} (expected {folder}/<task>.json)")
    rows: List[MetricRow] = []
    for path in files:
        rows += _rows_of(path, model_name)
    order = {t: i for i, t in enumerate(TASKS)}
    return sorted(rows, key=lambda r: (order.get(r.task, len(order)), r.task))


def _rows_of(path: Path, model_name: str) -> List[MetricRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SftmergeError(f"cannot read results file {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or not data.get("task"):
        raise SftmergeError(f"results file {path} lacks 'task' or a 'metrics' mapping")
    if data.get("model_name", model_name) != model_name:
        raise SftmergeError(f"results file {path} is for model {data['model_name']!r}, not {model_name!r}")
    rows = []
    for metric, entry in data["metrics"].items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SftmergeError(f"results file {path}: metric {metric!r} has no numeric 'value'")
        ci = entry.get("ci95")
        rows.append(
            MetricRow(
                task=str(data["task"]),
                metric=str(metric),
                value=float(value),
                stderr=_number(entry.get("stderr")),
                ci95=(float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None,
                n=data.get("n") if isinstance(data.get("n"), int) else None,
                backend=data.get("backend"),
            )
        )
    return rows


def _number(x) -> Optional[float]:
    return None if isinstance(x, bool) or not isinstance(x, (int, float)) else float(x)


def eval_results(rows: List[MetricRow]) -> list:
    """The rows as huggingface_hub EvalResults (one per task and metric)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=HUB_TASK[0],
            task_name=HUB_TASK[1],
            dataset_type=row.dataset[0],
            dataset_name=row.dataset[1],
            metric_type=row.metric,
            metric_name=row.metric.replace("_", " "),
            metric_value=round(row.value, 4),
        )
        for row in rows
    ]


def results_table(rows: List[MetricRow]) -> str:
    """Markdown table: task, metric, value with its uncertainty, sample size, backend."""
    lines = [
        "| Task | Metric | Value | ± stderr | 95% CI | n | Backend |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        stderr = f"{r.stderr:.4f}" if r.stderr is not None else "–"
        ci = f"[{r.ci95[0]:.4f}, {r.ci95[1]:.4f}]" if r.ci95 else "–"
        n = str(r.n) if r.n is not None else "–"
        lines.append(
            f"| {r.dataset[1]} | {r.metric} | {r.value:.4f} | {stderr} | {ci} | {n} | {r.backend or '–'} |"
        )
    return "\n".join(lines)
