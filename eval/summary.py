"""OUT/summary.{json,md,png}: every model x task result found under OUT, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from sftmerge.data.tasks import LOWER_IS_BETTER, TASKS
from sftmerge.io.fsutil import write_json, write_text
from sftmerge.io.layout import ResultsLayout


def collect(out: Path) -> List[Dict]:
    """All result files OUT/<model>/<task>.json, in model then task order."""
    rows = []
    for path in ResultsLayout(out).results():
        if path.stem not in TASKS:
            continue
        try:
            rows.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # a result being replaced right now; the next summary has it
    return rows


def columns(rows: List[Dict]) -> List[tuple]:
    """(task, metric) pairs in task order, then metric order of first appearance."""
    seen: Dict[tuple, None] = {}
    for task in TASKS:
        for r in rows:
            if r["task"] == task:
                for metric in r["metrics"]:
                    seen[(task, metric)] = None
    return list(seen)


def table(rows: List[Dict]) -> Dict:
    """{"models": [...], "columns": [...], "cells": {model: {"task/metric": metric dict}}, "best": {...}}."""
    models = list(dict.fromkeys(r["model_name"] for r in rows))
    cols = columns(rows)
    cells: Dict[str, Dict] = {m: {} for m in models}
    for r in rows:
        for metric, value in r["metrics"].items():
            cells[r["model_name"]][f"{r['task']}/{metric}"] = value
    best = {}
    for task, metric in cols:
        key = f"{task}/{metric}"
        scored = [(cells[m][key]["value"], m) for m in models if cells[m].get(key, {}).get("value") is not None]
        if len(scored) > 1:
            lower = TASKS[task].lower_is_better if task in TASKS else LOWER_IS_BETTER
            pick = min if metric in lower else max
            top = pick(v for v, _ in scored)
            best[key] = [m for v, m in scored if v == top]
    return {"models": models, "columns": [f"{t}/{m}" for t, m in cols], "cells": cells, "best": best}


def _fmt(cell: Optional[Dict]) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    text = f"{cell['value']:.3f}"
    if cell.get("ci95"):
        lo, hi = cell["ci95"]
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def markdown(t: Dict, rows: List[Dict]) -> str:
    lines = ["# Evaluation summary", "",
             "Value [95% interval: Wilson score interval for 0/1 scores, value +- 1.96 standard errors "
             "otherwise]; **bold** = best in its column "
             f"(lower is better for: {', '.join(sorted(LOWER_IS_BETTER))}).", ""]
    lines.append("| model | " + " | ".join(t["columns"]) + " |")
    lines.append("|---|" + "---|" * len(t["columns"]))
    for m in t["models"]:
        cells = []
        for c in t["columns"]:
            text = _fmt(t["cells"][m].get(c))
            cells.append(f"**{text}**" if m in t["best"].get(c, []) else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| model | task | n | backend | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model_name']} | {r['task']} | {r['n']} | {r['backend']} | {r['seconds']:.1f} |")
    judges = {r["judge"]["model"] for r in rows if r["task"] == "alpaca" and r.get("judge")}
    if judges:
        lines += ["", f"alpaca win rates are judged locally by: {', '.join(sorted(judges))} "
                      "(pairwise against the reference outputs, both orders); not the official AlpacaEval number."]
    return "\n".join(lines) + "\n"


def chart(t: Dict, path: Path) -> None:
    """Grouped bars: one group per task/metric, one bar per model, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols, models = t["columns"], t["models"]
    panel_width = max(2.6, 0.45 * len(models) + 1.0)
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(max(4.0, panel_width * len(cols)), 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes[0], cols):
        # Own axis per column: accuracies and losses do not share a scale.
        x = np.arange(len(models))
        for i, m in enumerate(models):
            cell = t["cells"][m].get(col)
            if not cell or cell.get("value") is None:
                continue
            v = cell["value"]
            lo, hi = cell.get("ci95") or (v, v)
            ax.bar(x[i], v, color=colors[i % len(colors)], yerr=[[v - lo], [hi - v]], capsize=3,
                   edgecolor="black" if m in t["best"].get(col, []) else None, label=m)
        tops = [c["ci95"][1] if c.get("ci95") else c["value"] for c in
                (t["cells"][m].get(col) for m in models) if c and c.get("value") is not None]
        # Rates share one 0-1 scale so panels compare at a glance; other metrics scale freely.
        ax.set_ylim(0, 1.05 if tops and max(tops) <= 1 else None)
        ax.set_title(col, fontsize=9)
        # Names under the bars rather than in a legend: no colour matching, nothing clipped.
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=35, ha="right", fontsize=8)
    fig.suptitle("95% intervals; black edge = best in the panel", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_summary(out: Path, with_chart: bool = True) -> Dict:
    """summary.json and summary.md of the results under `out`, and the chart unless `with_chart` is
    False (drawing it takes about a second, too long to redo after every model of a long list)."""
    layout = ResultsLayout(out)
    rows = collect(out)
    t = table(rows)
    write_json(layout.summary("json"), t)
    write_text(layout.summary("md"), markdown(t, rows))
    if with_chart:
        chart(t, layout.summary("png"))
    return t
