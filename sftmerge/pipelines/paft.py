"""The PAFT pipeline (arXiv 2406.17923) next to its usual baseline, on one base:

    sft/order-0         plain SFT                       (sftmerge train sft)
    sft-l1/order-0      SFT with the L1 delta penalty   (sftmerge train sft --l1)
    dpo                 DPO from the base               (sftmerge train dpo), independent of SFT
    sft-dpo             DPO from the plain SFT model    (the usual sequential pipeline)
    merged/paft         base + sparse SFT + DPO, TIES   (recipes/paft.yml over these folders)
    merged/paft_task_arithmetic

then `sftmerge eval`'s arith task (exact match, held-out loss, 95% intervals) for each,
the delta sparsity against the base (`sftmerge analyze sparsity`), and OUT/report.md.
Every step skips what a previous invocation finished, so a rerun resumes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json, write_text
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.dpo_config import DPORunConfig

MERGES = ("paft", "paft_task_arithmetic")


def _labelled_models(out: Path, base: str) -> Dict[str, str]:
    models = {"base": base, "sft": f"{out}/sft/order-0", "sft-l1": f"{out}/sft-l1/order-0",
              "dpo": f"{out}/dpo", "sft-dpo": f"{out}/sft-dpo"}
    models.update({m: f"{out}/merged/{m}" for m in MERGES})
    return models


def train_all(sft: SFTRunConfig, dpo: DPORunConfig, l1: float, out: Path, echo: Callable) -> None:
    from sftmerge.train.dpo import run_dpo
    from sftmerge.eval.losses import sample_losses
    from sftmerge.train.sft import run_multi_order

    if l1 <= 0:
        raise SftmergeError(f"PAFT needs an L1 strength > 0 (got {l1})")
    base = sft.base
    run_multi_order(replace(sft, orders=1, l1=0.0, output_dir=str(out / "sft")), echo=echo,
                    score_samples=sample_losses)
    run_multi_order(replace(sft, orders=1, l1=l1, output_dir=str(out / "sft-l1")), echo=echo,
                    score_samples=sample_losses)
    run_dpo(replace(dpo, base=base, output_dir=str(out / "dpo")), echo=echo)
    run_dpo(replace(dpo, base=str(out / "sft" / "order-0"), output_dir=str(out / "sft-dpo")), echo=echo)


def merge_all(base: str, out: Path, echo: Callable) -> None:
    from mergekit.options import MergeOptions

    from sftmerge.hub.card import merge_with_card
    from sftmerge.merge.driver import load_recipe
    from sftmerge.merge.recipes import write_paft_recipes

    recipes = write_paft_recipes(out / "recipes", base, f"{out}/sft-l1/order-0", f"{out}/dpo",
                                 made_by=f"Made by `sftmerge train paft` for {out}.")
    for method in MERGES:
        target = out / "merged" / method
        if (target / "config.json").is_file():
            echo(f"{target}: already merged, skipped")
            continue
        report = merge_with_card(load_recipe(recipes[method]), target, MergeOptions(copy_tokenizer=True))
        echo(f"merged {recipes[method]} -> {target} in {report['seconds']:.1f}s")


def evaluate_all(models: Dict[str, str], out: Path, limit: Optional[int], max_new_tokens: Optional[int],
                 echo: Callable) -> Dict[str, Dict]:
    """arith for every model, each into OUT/eval/<label>/ (the SFT folders share the name order-0)."""
    from sftmerge.eval.backends import model_name, resolve_backend
    from sftmerge.eval.runner import evaluate_models
    from sftmerge.eval.tasks import EvalSettings

    settings = EvalSettings(limit=limit, max_new_tokens=max_new_tokens)
    backend = resolve_backend("auto")
    results = {}
    for label, folder in models.items():
        path = out / "eval" / label / model_name(folder) / "arith.json"
        if not path.is_file():
            failures = evaluate_models([folder], ["arith"], settings, backend, out / "eval" / label, echo=echo,
                                       summary=False)  # one model per folder: REPORT.md is the comparison
            if failures:
                raise SftmergeError(f"evaluation of {label} failed: {failures[0]}")
        results[label] = json.loads(path.read_text())
    return results


def sparsity_all(models: Dict[str, str], base: str, out: Path, tolerance: float) -> Dict[str, Dict]:
    from sftmerge.eval.sparsity import OVERALL, delta_sparsity, write_outputs

    table = {label: delta_sparsity(folder, base, tolerance) for label, folder in models.items() if label != "base"}
    write_outputs(table, base, tolerance, out / "sparsity")
    return {label: counts[OVERALL].as_dict() for label, counts in table.items()}


def _cell(metric: Dict) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def report_markdown(results: Dict[str, Dict], sparsity: Dict[str, Dict], tolerance: float,
                    setup: str = "") -> str:
    n = next(iter(results.values()))["n"]
    lines = [setup, ""] if setup else []
    lines += [
        f"arith, {n} held-out problems: exact match and held-out loss (mean per-token NLL of the reference),",
        "value [95% interval]; delta sparsity against the base: fraction of elements exactly",
        f"unchanged / within {tolerance:g}.",
        "",
        "| model | exact match | held-out loss | delta = 0 | abs(delta) <= tol |",
        "|---|---|---|---|---|",
    ]
    for label, doc in results.items():
        m = doc["metrics"]
        sp = sparsity.get(label)
        zero = f"{sp['fraction_zero']:.3f}" if sp else "-"
        small = f"{sp['fraction_small']:.3f}" if sp else "-"
        lines.append(f"| {label} | {_cell(m['exact_match'])} | {_cell(m['loss'])} | {zero} | {small} |")
    return "\n".join(lines) + "\n"


BASELINE = "sft-dpo"  # the usual sequential pipeline


def paired_vs_sequential(models: Dict[str, str], out: Path, seed: int = 0) -> List[Dict]:
    """Each PAFT merge against sequential SFT -> DPO and plain SFT, on the same problems."""
    from sftmerge.pipelines.report import paired_rows
    from sftmerge.eval.backends import model_name

    # eval/<label>/<model folder name>/arith.samples.jsonl, as `evaluate_all` writes them.
    where = {label: f"{label}/{model_name(folder)}" for label, folder in models.items()}
    label_of = {v: k for k, v in where.items()}
    rows = paired_rows(out, "arith", [where[BASELINE], where["sft"]], [where[m] for m in MERGES], seed)
    return [{**r, "a": label_of[r["a"]], "b": label_of[r["b"]]} for r in rows]


def verdict(rows: List[Dict], merge: str) -> str:
    """One sentence: did `merge` beat the sequential baseline (95% intervals of the paired differences)?"""
    from sftmerge.pipelines.report import LABELS

    better, worse = [], []
    for r in rows:
        if r["a"] != merge or r["b"] != BASELINE:
            continue
        lo, hi = r["ci95"]
        lower_is_better = r["metric"] != LABELS["correct"]
        good, bad = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
        if good:
            better.append(r["metric"])
        elif bad:
            worse.append(r["metric"])
    if better and not worse:
        return f"**{merge} beat sequential SFT -> DPO** here ({', '.join(better)}; the 95% interval excludes 0)."
    if worse and not better:
        return f"**{merge} did worse than sequential SFT -> DPO** here ({', '.join(worse)}; the 95% interval excludes 0)."
    if better and worse:
        return (f"**Mixed**: {merge} was better in {', '.join(better)} and worse in {', '.join(worse)} than "
                "sequential SFT -> DPO.")
    return (f"**{merge} did not beat sequential SFT -> DPO** here: no difference is clear at this size "
            "(every 95% interval of the paired differences includes 0).")


def paired_markdown(rows: List[Dict]) -> str:
    from sftmerge.pipelines.report import paired_table_markdown

    lines = ["", "## PAFT against sequential training", ""]
    lines += [f"* {verdict(rows, m)}" for m in MERGES]
    lines += ["", "Paired on the same problems: exact match, difference in accuracy with a paired bootstrap "
              "95% interval and McNemar's exact p; loss, mean paired difference with a t interval "
              "(negative: A has the lower loss). **Bold**: the interval excludes 0.", ""]
    lines += paired_table_markdown(rows)
    return "\n".join(lines) + "\n"


def run_paft(sft: SFTRunConfig, dpo: DPORunConfig, l1: float, out: str, eval_limit: Optional[int] = None,
             max_new_tokens: Optional[int] = None, tolerance: float = 1e-6,
             echo: Callable[[str], None] = print) -> str:
    """Train, merge, evaluate and tabulate; returns the report's markdown (also OUT/report.md)."""
    out = Path(out)
    base = sft.base
    if dpo.base != base:
        raise SftmergeError(f"the SFT config's base {base} and the DPO config's base {dpo.base} differ; "
                            "PAFT trains both from the same base")
    train_all(sft, dpo, l1, out, echo)
    merge_all(base, out, echo)
    models = _labelled_models(out, base)
    results = evaluate_all(models, out, eval_limit, max_new_tokens, echo)
    sparsity = sparsity_all(models, base, out, tolerance)
    paired = paired_vs_sequential(models, out)
    setup = (f"PAFT on {base}: SFT {sft.num_samples or 'all'} samples x {sft.num_train_epochs} epochs (lr "
             f"{sft.learning_rate:g}), L1 strength {l1:g} for sft-l1; DPO {dpo.num_samples or 'all'} pairs x "
             f"{dpo.num_train_epochs} epoch(s) (lr {dpo.learning_rate:g}, beta {dpo.beta:g}).")
    md = report_markdown(results, sparsity, tolerance, setup) + paired_markdown(paired)
    write_text(out / "report.md", md)
    write_json(out / "report.json", {
        "base": base, "l1": l1, "tolerance": tolerance,
        "arith": {label: doc["metrics"] for label, doc in results.items()},
        "n": {label: doc["n"] for label, doc in results.items()},
        "sparsity": sparsity,
        "paired": paired,
        "verdict": {m: verdict(paired, m) for m in MERGES},
    })
    return md
