"""The parts of RUN/REPORT.md about the controls: row order and legend, the merge-seed spread, the seeds."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

from sftmerge.eval.ensemble import ENSEMBLE, SUPPORTED
from sftmerge.eval.paired_table import LABELS
from sftmerge.io.layout import RunLayout
from sftmerge.pipelines.controls import COMPUTE_MATCHED, compute_matched_model, merge_seed

# The summary's metric -> the per-sample key paired tests read (arith scores 0/1 as `correct`).
SAMPLE_KEY = {"exact_match": "correct"}


def model_order(models: Sequence[str], base: str, singles: Sequence[str], merges: Sequence[str],
                variants: Dict[str, List[str]]) -> List[str]:
    """Rows in reading order: base, sub-models, compute-matched, each merge then its other seeds, ensemble."""
    wanted = [base, *singles, COMPUTE_MATCHED]
    for m in merges:
        wanted += [m, *variants.get(m, [])]
    wanted.append(ENSEMBLE)
    present = [m for m in wanted if m in models]
    return present + [m for m in models if m not in present]


def legend_lines(run: RunLayout, task: str, settings, config, models: Sequence[str],
                 variants: Dict[str, List[str]]) -> List[str]:
    """What the control rows are, and why a control is missing."""
    k, epochs = config.orders, config.num_train_epochs
    lines = []
    for method, names in variants.items():
        shown = [n for n in names if n in models]
        if shown:
            seeds = ", ".join(str(merge_seed(run, n)) for n in shown)
            lines.append(f"- {', '.join(f'`{n}`' for n in shown)}: `{method}` with recipe seed {seeds} "
                         f"(`{method}` itself: seed {merge_seed(run, method)}); the merge-seed spread, below.")
    if ENSEMBLE in models:
        lines.append(f"- `{ENSEMBLE}`: output ensemble of the {k} sub-models, greedy decoding on the mean of their "
                     f"next-token log-probabilities (not a merge: all {k} models run at every step); held-out loss = "
                     "the mean of their per-sample losses.")
    elif not settings.ensemble:
        lines.append(f"- `{ENSEMBLE}`: off (`--no-ensemble`).")
    elif task not in SUPPORTED:
        lines.append(f"- `{ENSEMBLE}`: skipped: the output ensemble decodes greedily and runs "
                     f"{', '.join(SUPPORTED)} only, not `{task}`.")
    if COMPUTE_MATCHED in models:
        steps = _steps(compute_matched_model(run))
        orders = [_steps(run.order(i)) for i in range(k)]
        total = sum(s for s in orders if s is not None) if None not in orders else None
        lines.append(f"- `{COMPUTE_MATCHED}`: one data order trained {k} x {epochs} = {k * epochs} epochs "
                     f"({steps} optimizer steps; the {k} sub-models together: {total}), `{COMPUTE_MATCHED}/order-0/`.")
    else:
        lines.append(f"- `{COMPUTE_MATCHED}` (one order trained {k} x the epochs): not trained in this run "
                     "(`sftmerge demo --compute-matched`; on in `make reproduce`).")
    return lines


def _steps(model) -> Optional[int]:
    path = RunLayout.summary(model)
    return json.loads(path.read_text()).get("steps") if path.is_file() else None


def spread_lines(run: RunLayout, t: Dict, task: str, variants: Dict[str, List[str]], best: Optional[str],
                 rows: List[Dict]) -> List[str]:
    """One row per seeded merge and metric: mean [min, max] over seeds, and A - best single per seed."""
    groups = {m: [m, *v] for m, v in variants.items() if m in t["models"]}
    groups = {m: [x for x in names if x in t["models"]] for m, names in groups.items()}
    groups = {m: names for m, names in groups.items() if len(names) > 1}
    if not groups:
        return []
    vs = f"vs best single (`{best}`): A - B per seed (p)" if best else "vs best single"
    lines = ["## Merge-seed spread", "",
             "The seeded merges with each recipe seed (the same inputs, another random draw). Mean and [min, max] "
             f"over the seeds; paired comparison of each seed's merge with the best sub-model ({best or 'none'}), "
             "**bold** where its interval excludes 0.", "",
             f"| merge (seeds) | metric | mean [min, max] | {vs} |", "|---|---|---|---|"]
    for method, names in groups.items():
        seeds = ", ".join(str(merge_seed(run, n)) for n in names)
        for col in [c for c in t["columns"] if c.startswith(f"{task}/")]:
            metric = col.split("/", 1)[1]
            values = [t["cells"][n][col]["value"] for n in names if t["cells"][n].get(col, {}).get("value") is not None]
            if not values:
                continue
            d = 3 if metric != "loss" else 4
            label = LABELS.get(SAMPLE_KEY.get(metric, metric), metric)
            per_seed = [_pair_cell(r, d) for n in names for r in rows
                        if r["a"] == n and r["b"] == best and r["metric"] == label]
            lines.append(f"| {method} ({seeds}) | {metric} | {sum(values) / len(values):.{d}f} "
                         f"[{min(values):.{d}f}, {max(values):.{d}f}] | {'; '.join(per_seed) or '-'} |")
    return lines + [""]


def _pair_cell(r: Dict, d: int) -> str:
    lo, hi = r["ci95"]
    text = f"{r['diff']:+.{d}f} (p {r['p_value']:.2g})"
    return f"**{text}**" if lo > 0 or hi < 0 else text


def seeds_lines(run: RunLayout, settings, config, merges: Sequence[str]) -> List[str]:
    """Every seed behind the numbers, in one place."""
    from sftmerge.pipelines.controls import MERGEKIT_RANDOM_SEED

    recipe_seeds = {m: merge_seed(run, m) for m in merges if merge_seed(run, m) is not None}
    ev = settings.eval_settings()
    lines = ["## Seeds", "",
             f"- training: `seed` {config.seed} (init, dropout), data orders from `order_seed` {config.order_seed} "
             f"and the order index, data generator `data_seed` {config.data_seed}",
             "- merges: recipe seed (param_select's draw) "
             + (", ".join(f"`{m}` {s}" for m, s in recipe_seeds.items()) or "none")
             + f"; mergekit's global seed {MERGEKIT_RANDOM_SEED} for the stock `mergekit-yaml` merges "
               "(`--random-seed`), the recipe seed for those of `sftmerge merge`; both in "
               "`merged/<name>/merge_report.json`",
             f"- evaluation: lm-eval seed {ev.seed}, arith problems seed {ev.arith_seed}; greedy decoding",
             f"- paired bootstrap: seed {settings.seed}"]
    return lines + [""]
