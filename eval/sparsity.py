"""How sparse is a fine-tuning delta? Fractions of `model - base` that are exactly zero or tiny.

PAFT (arXiv 2406.17923) reports DPO deltas naturally sparse, SFT deltas dense, and SFT
with an L1 penalty on its delta sparse; this measures it for any models against a base,
per layer type (q_proj, mlp.down_proj, input_layernorm, ...) and overall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from sftmerge.io import checkpoint
from sftmerge.errors import SftmergeError

OVERALL = "all"


@dataclass
class DeltaCount:
    elements: int = 0
    zero: int = 0  # exactly equal to the base in the stored dtype
    small: int = 0  # |delta| <= tolerance (zero included)

    def add(self, other: "DeltaCount") -> None:
        self.elements += other.elements
        self.zero += other.zero
        self.small += other.small

    def as_dict(self) -> dict:
        return {
            "elements": self.elements,
            "fraction_zero": self.zero / self.elements if self.elements else None,
            "fraction_small": self.small / self.elements if self.elements else None,
        }


def layer_type(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `self_attn.q_proj`."""
    name = re.sub(r"^model\.", "", name)
    name = re.sub(r"^layers\.\d+\.", "", name)
    return re.sub(r"\.weight$", "", name)


def delta_sparsity(model: str | Path, base: str | Path, tolerance: float) -> Dict[str, DeltaCount]:
    from tqdm import tqdm

    base_shapes, model_shapes = checkpoint.shapes(base), checkpoint.shapes(model)
    if set(base_shapes) != set(model_shapes) or any(model_shapes[n] != s for n, s in base_shapes.items()):
        raise SftmergeError(f"{model} does not have the same tensors and shapes as the base {base}")
    counts: Dict[str, DeltaCount] = {OVERALL: DeltaCount()}
    for name, (m, b) in tqdm(checkpoint.iter_tensors([model, base]), total=len(base_shapes),
                           desc=f"delta {Path(model).name}", leave=False):
        if not m.is_floating_point():
            continue
        c = DeltaCount(
            elements=m.numel(),
            zero=int((m == b).sum()),
            small=int(((m.float() - b.float()).abs() <= tolerance).sum()),
        )
        counts.setdefault(layer_type(name), DeltaCount()).add(c)
        counts[OVERALL].add(c)
    return counts


def base_equal_shares(models: Sequence[str | Path], base: str | Path) -> Dict:
    """What parameter selection meets in the sub-models: per model, the share of elements stored
    exactly equal to the base; the share of an equal-weight draw that lands on such an element
    (where `resample` draws again); and the share equal to the base in every model (what even
    `resample` keeps at the base). Compared in each model's stored dtype, the base cast to it."""
    from tqdm import tqdm

    total, in_all = 0, 0
    equal = [0] * len(models)
    for name, tensors in tqdm(checkpoint.iter_tensors([base, *models]), total=len(checkpoint.shapes(base)),
                              desc="base-equal elements", leave=False):
        b, subs = tensors[0], tensors[1:]
        if not b.is_floating_point():
            continue
        if any(t.shape != b.shape for t in subs):
            raise SftmergeError(f"tensor {name}: shapes differ between the base and the sub-models")
        everywhere = None
        for i, t in enumerate(subs):
            same = t == b.to(t.dtype)
            equal[i] += int(same.sum())
            everywhere = same if everywhere is None else everywhere & same
        total += b.numel()
        in_all += int(everywhere.sum())
    if not total:
        raise SftmergeError(f"no floating-point tensors shared by {base} and the sub-models")
    share = [e / total for e in equal]
    return {
        "base": str(base), "elements": total,
        "models": dict(zip(model_labels([str(m) for m in models]), share)),
        "drawn_equal_base": sum(share) / len(share),  # the run's recipes weigh the orders equally
        "equal_base_in_all": in_all / total,
    }


def write_base_equal(run: str, base: str, echo=print) -> List[str]:
    """RUN's sub-models' `base_equal_shares` into
    RUN/imbalance/base_equal.json; also a job for the evaluation's worker pool (eval/cpu_pool.py
    `Call`), which runs it beside the last evaluations. Returns failure lines."""
    from sftmerge.io.fsutil import write_json
    from sftmerge.io.layout import RunLayout

    layout = RunLayout(run)
    shares = base_equal_shares([str(f) for f in layout.orders()], base)
    layout.base_equal.parent.mkdir(parents=True, exist_ok=True)
    write_json(layout.base_equal, shares)
    echo(f"{len(shares['models'])} sub-models: {shares['drawn_equal_base']:.3f} of a draw equal to the base")
    return []


def base_equal_lines(shares: Dict) -> List[str]:
    """`base_equal_shares` as a markdown table."""
    lines = ["| elements stored equal to the base | share |", "|---|---|"]
    lines += [f"| in {name} | {value:.3f} |" for name, value in shares["models"].items()]
    lines += [f"| in a `select` draw (where `resample` draws again) | {shares['drawn_equal_base']:.3f} |",
              f"| in every sub-model (kept at the base by `resample` too) | {shares['equal_base_in_all']:.3f} |"]
    return lines


def model_labels(models: Sequence[str]) -> List[str]:
    """Folder names, with the parent prepended where two names collide."""
    names = [Path(m).name or str(m) for m in models]
    return [f"{Path(m).parent.name}/{n}" if names.count(n) > 1 else n for m, n in zip(models, names)]


def write_outputs(table: Dict[str, Dict[str, DeltaCount]], base: str, tolerance: float, out: Path) -> str:
    """sparsity.json / .csv / .md / .png in `out`; returns the markdown table."""
    import csv

    from sftmerge.io.fsutil import write_json

    out.mkdir(parents=True, exist_ok=True)
    models = list(table)
    types = sorted({t for counts in table.values() for t in counts if t != OVERALL}) + [OVERALL]
    write_json(out / "sparsity.json", {
        "base": base, "tolerance": tolerance,
        "models": {m: {t: c.as_dict() for t, c in counts.items()} for m, counts in table.items()},
    })
    with open(out / "sparsity.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "layer_type", "elements", "fraction_zero", "fraction_small"])
        for m in models:
            for t in types:
                d = table[m][t].as_dict()
                w.writerow([m, t, d["elements"], d["fraction_zero"], d["fraction_small"]])
    head = "| layer type | " + " | ".join(f"{m}: =0 / ≤tol" for m in models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 1)]
    for t in types:
        cells = []
        for m in models:
            d = table[m][t].as_dict()
            cells.append(f"{d['fraction_zero']:.3f} / {d['fraction_small']:.3f}")
        name = f"**{t}**" if t == OVERALL else t
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = (f"Fraction of delta elements against base `{base}` that are exactly zero / "
          f"at most {tolerance:g} in magnitude.\n\n" + "\n".join(lines) + "\n")
    (out / "sparsity.md").write_text(md)
    _plot(table, types, base, tolerance, out / "sparsity.png")
    return md


def _plot(table, types, base, tolerance, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(table)
    x = np.arange(len(types))
    width = 0.8 / len(models)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(types) + 3), 7), sharex=True)
    for ax, key, title in (
        (axes[0], "fraction_zero", "delta exactly zero (unchanged in the stored dtype)"),
        (axes[1], "fraction_small", f"|delta| ≤ {tolerance:g}"),
    ):
        for i, m in enumerate(models):
            values = [table[m][t].as_dict()[key] for t in types]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=m)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of elements")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x, types, rotation=35, ha="right")
    axes[0].legend(fontsize=8, ncol=min(4, len(models)))
    fig.suptitle(f"Delta sparsity against {Path(base).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
