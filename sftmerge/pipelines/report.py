"""RUN/REPORT.md of the demo: results with 95% intervals, paired comparisons, plots, recipes, times, machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from sftmerge.eval.paired_table import LABELS, paired_table_markdown  # noqa: F401 (used by pipelines.paft)
from sftmerge.io.fsutil import write_json, write_text
from sftmerge.io.layout import RunLayout, is_order_name


def machine() -> Dict:
    import os
    import platform

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_times() -> Optional[List[int]]:
    """The machine's CPU time counters (/proc/stat's first line, in ticks), None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: Optional[List[int]], after: Optional[List[int]]) -> Optional[float]:
    """The share of CPU time the hypervisor gave to other machines between two `cpu_times`
    (steal, the 8th counter): stage times measured while it is high are not this machine's."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return round((after[7] - before[7]) / total, 3) if total > 0 else None


def paired_rows(run: Path, task: str, singles: List[str], merges: List[str], seed: int,
                keys=("correct", "loss"), within: bool = True) -> List[Dict]:
    """Every merge vs every single model and vs every other merge, from RUN/eval (eval/paired_table.py)."""
    from sftmerge.eval.paired_table import paired_rows as rows_of

    return rows_of(RunLayout(run).eval_root, task, singles, merges, seed, keys, within)


def write_report(run: Path, task: str, settings, times: Dict, host: Dict, config) -> Path:
    from sftmerge.eval.ensemble import ENSEMBLE
    from sftmerge.eval.imbalance import POOLED, spearman_lines
    from sftmerge.eval.paired_table import SINGLES_MEAN, best_single, vs_singles_mean
    from sftmerge.eval.sparsity import base_equal_lines
    from sftmerge.eval.summary import collect, markdown, table
    from sftmerge.pipelines.controls import COMPUTE_MATCHED, evaluated, seed_variants
    from sftmerge.pipelines.report_controls import legend_lines, model_order, seeds_lines, spread_lines
    from sftmerge.pipelines.steps import steps_lines

    layout = RunLayout(run)
    rows = [r for r in collect(layout.eval_root) if r["task"] == task]
    t = table(rows)
    merges = [m for m in settings.merges if m in t["models"]]
    variants = seed_variants(merges, settings.merge_seeds)
    singles = [m for m in t["models"] if is_order_name(m)]
    base_name = Path(config.base).resolve().name  # as evaluation names a model: its folder's name
    base_name = base_name if base_name in t["models"] else "not evaluated"
    t["models"] = model_order(t["models"], base_name, singles, merges, variants)
    rows.sort(key=lambda r: t["models"].index(r["model_name"]))
    keys = tuple(dict.fromkeys(["correct", "loss", *(m for r in rows for m in r["metrics"])]))
    # Merges and the ensemble against the sub-models and the compute-matched single, and each other;
    # each seed's merge of the spread against the best sub-model.
    # A control is paired when its result is one of this run's settings (not left by an earlier run).
    ok = [m for m in (ENSEMBLE, COMPUTE_MATCHED)
          if m in t["models"] and evaluated(layout.eval_result(m, task), settings.eval_settings())]
    a_side = merges + [m for m in ok if m == ENSEMBLE]
    b_side = singles + [m for m in ok if m == COMPUTE_MATCHED]
    paired = paired_rows(run, task, b_side, a_side, settings.seed, keys)
    best = best_single(t, task, singles)
    spread_names = [v for vs in variants.values() for v in vs if v in t["models"]]
    spread = paired_rows(run, task, [best], spread_names, settings.seed, keys, within=False) if best else []
    to_mean = vs_singles_mean(layout.eval_root, task, singles, [*a_side, *(m for m in b_side if m not in singles)],
                              keys)
    # The ensemble's held-out loss is the members' mean by definition: a row that cannot differ.
    to_mean = [r for r in to_mean if not (r["a"] == ENSEMBLE and r["metric"] == LABELS["loss"])]
    write_json(layout.paired, to_mean + paired + spread)
    spearman = json.loads((layout.imbalance / "spearman.json").read_text())

    lines = [f"# {run.name}: multi-order SFT and merging", "",
             f"{len(singles)} sub-models (same base and settings, different data orders) and their merges "
             f"({', '.join(merges)}) through the stock `mergekit-yaml`, evaluated on `{task}`; "
             f"the base model (`{base_name}`) on the same problems for reference. Controls (below the table): "
             "the output ensemble of the sub-models, the seeded merges with more recipe seeds (merged by "
             "`sftmerge merge`'s driver in this process), one data order trained K x the epochs.", "",
             "## Results", ""]
    lines += markdown(t, rows).splitlines()[2:]
    lines += ["", "Controls:", ""] + legend_lines(layout, task, settings, config, t["models"], variants) + [""]
    lines += spread_lines(layout, t, task, variants, best, paired + spread)
    lines += ["## Paired comparisons", "",
              "Same problems for both models. Exact match: difference in accuracy, paired bootstrap 95% interval "
              f"(2000 resamples, seed {settings.seed}), McNemar exact p-value. Held-out loss: mean per-problem "
              "difference, t interval, paired t p-value (negative = A has the lower loss). **Bold**: the interval "
              "excludes 0.", ""]
    if to_mean:
        lines += [f"Against `{SINGLES_MEAN}`, the {len(singles)} sub-models' mean score on each problem (one SFT run "
                  "with an order not chosen; a paired t interval, for exact match too):", ""]
        lines += paired_table_markdown(to_mean) + ["", "Against each model:", ""]
    lines += paired_table_markdown(paired) if paired else ["(no per-sample scores to pair)"]
    lines += ["", "## Training imbalance", "",
              "Final per-sample training loss against the sample's position in the first epoch "
              "(Spearman's rho per order, with a 95% interval; a negative rho: samples seen later end with lower "
              f"loss; `{POOLED}`: every order's pairs, each loss minus the sample's mean over the orders, so that "
              "how hard a sample is drops out):", ""]
    lines += spearman_lines(spearman)
    if layout.base_equal.is_file():
        lines += ["", "Elements of the sub-models stored exactly equal to the base (in their saved dtype): a `select` "
                  "draw that lands on one keeps the base's value, and `resample` draws it again among the "
                  "sub-models that changed it:", ""]
        lines += base_equal_lines(json.loads(layout.base_equal.read_text()))
    lines += ["", "![loss vs first-epoch position](imbalance/position.png)", "",
              "![losses along order-0's data order, sub-models and merges](imbalance/anchor.png)", "",
              "![evaluation summary](eval/summary.png)", ""]
    if (layout.steps / "steps.png").is_file():
        lines += ["Held-out loss against training step, single runs and the `select` merge of their same-step "
                  "checkpoints (step 0: the base; a flat last epoch: converged):", ""]
        lines += steps_lines(json.loads((layout.steps / "steps.json").read_text()))
        lines += ["", "![loss vs step](steps/steps.png)", ""]
    lines += seeds_lines(layout, settings, config, [*merges, *spread_names])
    lines += ["## Recipes", ""]
    for m in merges:
        lines += [f"`recipes/{m}.yml`:", "", "```yaml", layout.recipe(m).read_text().rstrip(), "```", ""]
    if spread_names:
        lines += [f"{', '.join(f'`recipes/{v}.yml`' for v in spread_names)}: the same recipes with their own seed.", ""]
    lines += ["## Stage times", "", "| stage | seconds | what |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} | {v['result']} |" for k, v in times.items()]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in host.items()]
    write_text(layout.report, "\n".join(lines) + "\n")
    return layout.report
