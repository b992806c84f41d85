"""Paired comparisons of merges against single models, from an evaluation folder's per-sample files.

Shared by `sftmerge eval --run` (OUT/paired.{json,md}) and the demo's and PAFT's reports.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sftmerge.errors import SftmergeError
from sftmerge.io.layout import ResultsLayout, is_order_name

# Per-sample keys compared pairwise (arith: correct, loss; gsm8k: one key per answer filter).
LABELS = {"correct": "exact match", "loss": "held-out loss"}


def _samples(results_root: Path, name: str, task: str) -> List[Dict]:
    path = ResultsLayout(results_root).samples(name, task)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def paired_rows(results_root: Path, task: str, singles: Sequence[str], merges: Sequence[str], seed: int,
                keys=("correct", "loss"), within: bool = True) -> List[Dict]:
    """Every merge vs every single model and (`within`) vs every other merge, on the same problems."""
    from sftmerge.eval.paired import align, paired_continuous, paired_exact_match

    pairs = [(m, s) for m in merges for s in singles]
    if within:
        pairs += list(itertools.combinations(merges, 2))
    cache = {n: _samples(results_root, n, task) for n in {*singles, *merges}}
    rows = []
    for a, b in pairs:
        for key in keys:
            if not cache[a] or not cache[b] or key not in cache[a][0] or key not in cache[b][0]:
                continue
            va, vb = align(cache[a], cache[b], key, (a, b))
            # Judge scores (alpaca) and pass fractions (code, several samples) are not 0/1.
            binary = key != "loss" and all(v in (0, 1) for v in (*va, *vb))
            label = LABELS.get(key, key)
            res = paired_exact_match(va, vb, seed) if binary else paired_continuous(va, vb)
            rows.append({"a": a, "b": b, "metric": label, **res})
    return rows


SINGLES_MEAN = "mean-of-singles"


def _gains(cache: Dict[str, List[Dict]], model: str, singles: Sequence[str], key: str) -> Optional[Dict]:
    """{problem id: MODEL's score minus the singles' mean score on that problem}; None where a
    score is missing."""
    if any(not cache[n] or key not in cache[n][0] for n in (model, *singles)):
        return None
    scores = {n: {r["id"]: r[key] for r in cache[n]} for n in (model, *singles)}
    if any(set(scores[n]) != set(scores[model]) for n in singles):
        raise SftmergeError(f"{model} and the single models were scored on different problems; "
                            "evaluate all with the same settings")
    return {i: v - sum(scores[n][i] for n in singles) / len(singles) for i, v in scores[model].items()}


def _t_row(gains: Dict, **fields) -> Dict:
    from sftmerge.eval.paired import t_interval

    return {**fields, **t_interval([gains[i] for i in sorted(gains)]), "test": "paired t"}


def vs_singles_mean(results_root: Path, task: str, singles: Sequence[str], models: Sequence[str],
                    keys=("correct", "loss")) -> List[Dict]:
    """Each of MODELS against the single models' mean score on every problem: how a merge compares
    with one run of SFT, the order not chosen. A paired t interval on the per-problem differences,
    for 0/1 scores too (the mean of K 0/1 scores is not 0/1). Needs 2 singles or more."""
    if len(singles) < 2:
        return []
    cache = {n: _samples(results_root, n, task) for n in {*singles, *models}}
    rows = []
    for a in models:
        for key in keys:
            gains = _gains(cache, a, singles, key)
            if gains is not None:
                rows.append(_t_row(gains, a=a, b=SINGLES_MEAN, metric=LABELS.get(key, key)))
    return rows


def gain_difference(run_a: Path, run_b: Path, task: str, model: str, keys=("correct", "loss")) -> List[Dict]:
    """MODEL's gain over its own run's singles' mean (per problem) in run A minus that in run B,
    a paired t interval over the problems, which both runs must share: whether a change of the
    training (e.g. permuting only the batches' order) keeps a merge's gain. RUN_A, RUN_B:
    evaluation folders whose sub-models are named order-k."""
    runs = []  # (folder, its singles, their per-sample rows), each file read once
    for root in (Path(run_a), Path(run_b)):
        singles = sorted(p.name for p in root.iterdir() if p.is_dir() and is_order_name(p.name)) if root.is_dir() else []
        runs.append((root, singles, {n: _samples(root, n, task) for n in (model, *singles)}))
    rows = []
    for key in keys:
        gains = []
        for root, singles, cache in runs:
            g = _gains(cache, model, singles, key) if len(singles) >= 2 else None
            if g is None:
                raise SftmergeError(f"{root}: needs {model} and 2 sub-models or more scored on {task} "
                                    f"({LABELS.get(key, key)})")
            gains.append(g)
        if set(gains[0]) != set(gains[1]):
            raise SftmergeError(f"{run_a} and {run_b} scored different problems: their gains cannot be paired")
        mean_a, mean_b = (sum(g.values()) / len(g) for g in gains)
        rows.append(_t_row({i: gains[0][i] - gains[1][i] for i in gains[0]}, metric=LABELS.get(key, key),
                           gain_a=mean_a, gain_b=mean_b))
    return rows


def paired_table_markdown(rows: List[Dict]) -> List[str]:
    lines = ["| A | B | metric | A - B [95% interval] | p | test |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        clear = lo > 0 or hi < 0
        # Losses differ in the 4th decimal between close merges; accuracies move in steps of 1/n.
        d = 3 if r["metric"] == LABELS["correct"] else 4
        diff = f"{r['diff']:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"
        lines.append(f"| {r['a']} | {r['b']} | {r['metric']} | {f'**{diff}**' if clear else diff} | "
                     f"{r['p_value']:.3g} | {r['test']} |")
    return lines


def best_single(table: Dict, task: str, singles: Sequence[str]) -> Optional[str]:
    """The single model with the best value of the task's first metric (summary table's `best` rule)."""
    from sftmerge.data.tasks import TASKS

    metric = TASKS[task].metrics[0]
    key = f"{task}/{metric}"
    scored = [(table["cells"][s][key]["value"], s) for s in singles
              if table["cells"].get(s, {}).get(key, {}).get("value") is not None]
    if not scored:
        return None
    pick = min if metric in TASKS[task].lower_is_better else max
    return pick(scored)[1]


def write_paired(out: Path, singles: Sequence[str], merges: Sequence[str], seed: int = 0) -> Dict:
    """OUT/paired.{json,md}: per task, every merge vs each single model, and the rows against the best single."""
    from sftmerge.eval.summary import collect, table
    from sftmerge.io.fsutil import write_json, write_text

    layout = ResultsLayout(out)
    rows = collect(out)
    t = table(rows)
    doc: Dict = {"seed": seed, "tasks": {}}
    lines = ["# Paired comparisons", "",
             "Same problems for both models. 0/1 scores: difference in accuracy, paired bootstrap 95% interval "
             f"(2000 resamples, seed {seed}), McNemar exact p-value; other scores: mean per-problem difference, "
             "t interval, paired t p-value. **Bold**: the interval excludes 0.", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        keys = tuple(dict.fromkeys(["correct", "loss", *(m for r in rows if r["task"] == task for m in r["metrics"])]))
        present = [m for m in merges if m in t["models"]]
        have = [s for s in singles if s in t["models"]]
        paired = paired_rows(out, task, have, present, seed, keys)
        best = best_single(t, task, have)
        doc["tasks"][task] = {"best_single": best, "rows": paired}
        lines += [f"## {task}", ""]
        if best is not None:
            vs_best = [r for r in paired if r["b"] == best]
            lines += [f"Against the best single model (`{best}`):", ""]
            lines += paired_table_markdown(vs_best) if vs_best else ["(no merges)"]
            lines += ["", "All pairs:", ""]
        lines += paired_table_markdown(paired) if paired else ["(no pairs)"]
        lines.append("")
    write_json(layout.paired("json"), doc)
    write_text(layout.paired("md"), "\n".join(lines))
    return doc
