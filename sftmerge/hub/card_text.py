"""The Markdown sections of a merged model's card (the front matter is built in card.py)."""

from __future__ import annotations

import re
from typing import List, Optional

PAPER_URL = "https://arxiv.org/abs/2410.03743"
PAFT_URL = "https://arxiv.org/abs/2406.17923"
MERGEKIT_URL = "https://github.com/arcee-ai/mergekit"

_PARAM_SELECT = (
    "**Parameter-selection merging** ([Ju et al., 2024]({paper})). In the paper's setting the\n"
    "input models are fine-tuned from the same base on the same data, differing only in the\n"
    "order of the training examples. Instead of averaging them, every element of every weight tensor is\n"
    "copied whole from ONE input model, drawn at random with probability proportional to\n"
    "that model's `weight`; nothing is averaged. The draw for each element depends only on\n"
    "the recipe's `seed` and the tensor's name, so the same recipe gives the same model,\n"
    "bit for bit."
)
_RESAMPLE = (
    "With `resample: true`, an element whose drawn value still equals the base model's\n"
    "(a parameter that fine-tuning left unchanged) is drawn again among the input models\n"
    "that did change it."
)
_RELATED = (
    "Related: PAFT ([arXiv 2406.17923]({paft})) also combines models fine-tuned in\n"
    "parallel from one base by merging them."
)


def method_section(merge_method: str, parameters: dict) -> str:
    """What the method does, with its paper; mergekit's own methods get its reference."""
    if merge_method == "param_select":
        parts = [_PARAM_SELECT.format(paper=PAPER_URL)]
        if parameters.get("resample"):
            parts.append(_RESAMPLE)
        parts.append(_RELATED.format(paft=PAFT_URL))
        return "\n\n".join(parts)
    name, url = _mergekit_reference(merge_method)
    ref = f" ([reference]({url}))" if url else ""
    return (
        f"**{name}**{ref}, as implemented by [mergekit]({MERGEKIT_URL}). The parameter-selection\n"
        f"method this toolkit adds is described in [Ju et al., 2024]({PAPER_URL})."
    )


def _mergekit_reference(merge_method: str):
    from mergekit import merge_methods

    try:
        spec = merge_methods.get(merge_method).spec
    except RuntimeError:
        return merge_method, None
    url = (spec.reference_url or "").strip() or None
    return spec.pretty_name or spec.name, url


def inputs_table(base: Optional[str], models: List[str], report: dict) -> str:
    """One row per input: its role, path as in the recipe, weight and share of elements taken."""
    weights = report.get("weights") or {}
    taken = report.get("fraction_from_model") or {}
    lines = ["| Role | Model | Weight | Elements taken |", "|---|---|---:|---:|"]
    if base:
        lines.append(f"| base | `{base}` | – | – |")
    for m in models:
        w = weights.get(m)
        frac = taken.get(m)
        lines.append(
            f"| input | `{m}` | {w if w is not None else '–'} | {f'{frac:.2%}' if frac is not None else '–'} |"
        )
    return "\n".join(lines)


def base_share_line(report: dict) -> Optional[str]:
    """How many merged elements still equal the base, before and after resampling."""
    before = report.get("fraction_equal_base_before_resample")
    after = report.get("fraction_equal_base_after_resample")
    if before is None or after is None:
        return None
    if report.get("resample"):
        return f"Elements equal to the base: {before:.2%} as first drawn, {after:.2%} after resampling."
    return f"Elements equal to the base: {after:.2%}."


def yaml_block(text: str) -> str:
    """`text` verbatim inside a fenced block whose fence no line of the text can close."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}yaml\n{text.rstrip(chr(10))}\n{fence}"
