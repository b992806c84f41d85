"""RUN/REPORT.md of the demo: results with 95% intervals, paired comparisons, plots, recipes, times, machine."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Dict, List

from sftmerge.io.fsutil import write_json, write_text
from sftmerge.io.layout import RunLayout, is_order_name

# Per-sample keys compared pairwise (arith: correct, loss; gsm8k: one key per answer filter).
LABELS = {"correct": "exact match", "loss": "held-out loss"}


def machine() -> Dict:
    import os
    import platform

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _samples(run: Path, name: str, task: str) -> List[Dict]:
    path = RunLayout(run).eval_samples(name, task)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def paired_rows(run: Path, task: str, singles: List[str], merges: List[str], seed: int,
                keys=("correct", "loss")) -> List[Dict]:
    """Every merge vs every single model and vs every other merge, on the same problems."""
    from sftmerge.eval.paired import align, paired_continuous, paired_exact_match

    pairs = [(m, s) for m in merges for s in singles] + list(itertools.combinations(merges, 2))
    cache = {n: _samples(run, n, task) for n in {*singles, *merges}}
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


def write_report(run: Path, task: str, settings, times: Dict, host: Dict) -> Path:
    from sftmerge.eval.summary import collect, markdown, table

    layout = RunLayout(run)
    rows = [r for r in collect(layout.eval_root) if r["task"] == task]
    t = table(rows)
    merges = [m for m in settings.merges if m in t["models"]]
    singles = [m for m in t["models"] if is_order_name(m)]
    base_name = next((m for m in t["models"] if m not in singles and m not in merges), "not evaluated")
    keys = ["correct", "loss", *dict.fromkeys(m for r in rows for m in r["metrics"])]
    paired = paired_rows(run, task, singles, merges, settings.seed, tuple(dict.fromkeys(keys)))
    write_json(layout.paired, paired)
    spearman = json.loads((layout.imbalance / "spearman.json").read_text())

    lines = [f"# {run.name}: multi-order SFT and merging", "",
             f"{len(singles)} sub-models (same base and settings, different data orders) and their merges "
             f"({', '.join(merges)}) through the stock `mergekit-yaml`, evaluated on `{task}`; "
             f"the base model (`{base_name}`) on the same problems for reference.", "",
             "## Results", ""]
    lines += markdown(t, rows).splitlines()[2:]
    lines += ["", "## Paired comparisons", "",
              "Same problems for both models. Exact match: difference in accuracy, paired bootstrap 95% interval "
              f"(2000 resamples, seed {settings.seed}), McNemar exact p-value. Held-out loss: mean per-problem "
              "difference, t interval, paired t p-value (negative = A has the lower loss). **Bold**: the interval "
              "excludes 0.", ""]
    lines += paired_table_markdown(paired) if paired else ["(no per-sample scores to pair)"]
    lines += ["", "## Training imbalance", "",
              "Final per-sample training loss against the sample's position in the first epoch "
              "(Spearman's rho per order; a negative rho: samples seen later end with lower loss):", "",
              "| order | rho | p | n |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['rho']:+.3f} | {v['p_value']:.3g} | {v['n']} |" for k, v in spearman.items()]
    lines += ["", "![loss vs first-epoch position](imbalance/position.png)", "",
              "![losses along order-0's data order, sub-models and merges](imbalance/anchor.png)", "",
              "![evaluation summary](eval/summary.png)", ""]
    if (layout.steps / "steps.png").is_file():
        lines += ["Held-out loss against training step, single runs and the `select` merge of their same-step "
                  "checkpoints:", "", "![loss vs step](steps/steps.png)", ""]
    lines += ["## Recipes", ""]
    for m in merges:
        lines += [f"`recipes/{m}.yml`:", "", "```yaml", layout.recipe(m).read_text().rstrip(), "```", ""]
    lines += ["## Stage times", "", "| stage | seconds | what |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} | {v['result']} |" for k, v in times.items()]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in host.items()]
    write_text(layout.report, "\n".join(lines) + "\n")
    return layout.report
