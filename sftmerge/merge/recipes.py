"""The recipe set: one mergekit YAML per method, over the same K sub-models and base.

`recipes/` in the repository is this set for the documented default paths; training
writes the same set into each run folder (`RUN/recipes/`), pointing at its checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import yaml

DEFAULT_BASE = "models/smollm2-135m-instruct"
DEFAULT_RUN = "runs/demo"
DEFAULT_K = 3
DEFAULT_SEED = 42

_HEADERS = {
    "select": (
        "Parameter-selection merging (arXiv 2410.03743): every weight element is copied\n"
        "whole from ONE sub-model, drawn with probability proportional to its weight;\n"
        "nothing is averaged. The base is not a candidate; it is used only for the\n"
        "report's count of elements equal to the base."
    ),
    "resample": (
        "Parameter-selection merging with resampling (arXiv 2410.03743): as select.yml,\n"
        "but where the drawn value equals the base model's (an unchanged parameter) the\n"
        "element is drawn again among the sub-models that did change it."
    ),
    "average": (
        "Weighted average of the sub-models (mergekit `linear`): the paper's baseline\n"
        "that parameter selection is compared against."
    ),
    "ties": (
        "TIES merging (arXiv 2306.01708) of the sub-models' deltas from the base, for\n"
        "comparison: keep the largest 70% of each delta, elect signs, average agreeing."
    ),
    "dare_ties": (
        "DARE-TIES (arXiv 2311.03099), for comparison: random 70% of each delta kept and\n"
        "rescaled, then TIES sign election. Its drop mask uses mergekit's global seed:\n"
        "run with `--random-seed 42` to reproduce (the mask also depends on tensor order)."
    ),
}

METHODS = tuple(_HEADERS)
# What `sftmerge demo` merges by default: the paper's baseline, its method with and
# without resampling, and TIES for reference (dare_ties needs mergekit's global seed).
DEMO_METHODS = ("average", "select", "resample", "ties")
# Methods whose merge depends on the recipe's own seed (param_select's draw): the demo merges
# them with several seeds to show the spread. average and ties draw nothing.
SEEDED_METHODS = ("select", "resample")
SEED_MARK = "-seed"  # select-seed43: `select` with recipe seed 43


def spread_seeds(n: int, first: int = DEFAULT_SEED) -> List[int]:
    """The recipe seeds of an n-seed spread: the default recipes' seed, then the next ones."""
    return [first + i for i in range(n)]


def seeded_name(method: str, seed: int) -> str:
    """Recipe and merge name of `method` with recipe seed `seed`; the plain name for the default seed."""
    return method if seed == DEFAULT_SEED else f"{method}{SEED_MARK}{seed}"


def recipe(method: str, base: str, models: Sequence[str], seed: int = DEFAULT_SEED) -> Dict:
    """The recipe for one method as a plain dict (what mergekit's YAML parses to)."""
    entries: List[Dict] = [{"model": m, "parameters": {"weight": 1.0}} for m in models]
    if method in ("select", "resample"):
        return {
            "merge_method": "param_select",
            "base_model": base,
            "models": entries,
            "parameters": {"resample": method == "resample", "seed": seed},
        }
    if method == "average":
        return {"merge_method": "linear", "models": entries, "parameters": {"normalize": True}}
    if method in ("ties", "dare_ties"):
        for e in entries:
            e["parameters"]["density"] = 0.7
        return {
            "merge_method": method,
            "base_model": base,
            "models": entries,
            "parameters": {"normalize": True},
        }
    raise ValueError(f"unknown recipe method {method!r}; known: {', '.join(METHODS)}")


def render(method: str, base: str, models: Sequence[str], seed: int = DEFAULT_SEED,
           made_by: str = "", path: str = "THIS.yml") -> str:
    """YAML text with a header comment saying what the recipe does and expects."""
    return _commented(_HEADERS[method], f"base {base}; sub-models {', '.join(models)}", made_by, path,
                      recipe(method, base, models, seed))


def _commented(header: str, expects: str, made_by: str, path: str, body: Dict) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"# Expects: {expects}.")
    if made_by:
        lines.append(f"# {made_by}")
    lines.append(f"# Run: mergekit-yaml {path} OUT/   (or: sftmerge merge {path} OUT/)")
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def write_recipe_set(folder: Path, base: str, models: Sequence[str], seed: int = DEFAULT_SEED,
                     methods: Sequence[str] = METHODS, made_by: str = "",
                     shown_as: str | None = None) -> Dict[str, Path]:
    """Write one recipe per method into `folder`; `shown_as` is the folder's final path
    for the "Run:" line when `folder` is a temporary location."""
    return _write_all(folder, methods, lambda m, shown: render(m, base, models, seed, made_by, shown), shown_as)


def _write_all(folder: Path, methods: Sequence[str], render_one, shown_as: str | None) -> Dict[str, Path]:
    """`folder/<method>.yml` = render_one(method, the path shown in its "Run:" line)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for method in methods:
        path = folder / f"{method}.yml"
        shown = f"{shown_as}/{path.name}" if shown_as else str(path)
        path.write_text(render_one(method, shown), encoding="utf-8")
        written[method] = path
    return written


def default_models(run: str = DEFAULT_RUN, k: int = DEFAULT_K) -> List[str]:
    return [f"{run}/order-{i}" for i in range(k)]


# ---------------------------------------------------------------------------- PAFT

PAFT_SFT = "runs/paft/sft-l1/order-0"  # the SFT run folder runs/paft/sft-l1 holds order-0 (K = 1)
PAFT_DPO = "runs/paft/dpo"
PAFT_DENSITY = {"sft": 0.7, "dpo": 1.0}

_PAFT_HEADERS = {
    "paft": (
        "PAFT (arXiv 2406.17923): SFT and DPO trained in parallel from the same base, fused\n"
        "with TIES (mergekit `ties`) over that base. The SFT run used an L1 penalty on its\n"
        "delta (`sftmerge train sft --l1`), so its delta is sparse like DPO's.\n"
        "Densities: SFT 0.7 (TIES keeps the largest 70% of the L1-SFT delta per tensor),\n"
        "DPO 1.0 (its delta is already sparse: kept whole). Weights 1.0 each, normalize:\n"
        "where only one delta changed an element it is added whole; where both changed it\n"
        "with the same sign they are averaged; opposite signs: the larger total sign wins.\n"
        "A starting point, not tuned: the paper searches densities and weights per task."
    ),
    "paft_task_arithmetic": (
        "PAFT (arXiv 2406.17923) fused by task arithmetic (mergekit `task_arithmetic`):\n"
        "base + 1.0 * (L1-SFT delta) + 1.0 * (DPO delta), no trimming, no sign election\n"
        "(the comparison for paft.yml). Weights 1.0 each: both deltas added whole."
    ),
}

PAFT_METHODS = tuple(_PAFT_HEADERS)


def paft_recipe(method: str, base: str, sft: str, dpo: str) -> Dict:
    """base + sparse SFT delta + DPO delta, by TIES (`paft`) or task arithmetic."""
    if method == "paft":
        return {
            "merge_method": "ties",
            "base_model": base,
            "models": [{"model": sft, "parameters": {"weight": 1.0, "density": PAFT_DENSITY["sft"]}},
                       {"model": dpo, "parameters": {"weight": 1.0, "density": PAFT_DENSITY["dpo"]}}],
            "parameters": {"normalize": True},
        }
    if method == "paft_task_arithmetic":
        return {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": sft, "parameters": {"weight": 1.0}},
                       {"model": dpo, "parameters": {"weight": 1.0}}],
            "parameters": {"normalize": False},
        }
    raise ValueError(f"unknown PAFT recipe {method!r}; known: {', '.join(PAFT_METHODS)}")


def render_paft(method: str, base: str, sft: str, dpo: str, made_by: str = "", path: str = "THIS.yml") -> str:
    return _commented(_PAFT_HEADERS[method], f"base {base}; SFT (L1) {sft}; DPO {dpo}", made_by, path,
                      paft_recipe(method, base, sft, dpo))


def write_paft_recipes(folder: Path, base: str, sft: str, dpo: str, made_by: str = "",
                       shown_as: str | None = None) -> Dict[str, Path]:
    return _write_all(folder, PAFT_METHODS, lambda m, shown: render_paft(m, base, sft, dpo, made_by, shown), shown_as)
