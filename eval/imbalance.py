"""Training-imbalance diagnostics (arXiv 2410.03743, figures 1 and 3) from a run folder.

Figure 1 (`position.png`, `position.csv`): each order's final per-sample loss against
the sample's position in that order's first epoch, with binned means and Spearman's rho.
Figure 3 (`anchor.png`, `anchor.csv`): on the x axis one anchor order's first-epoch
positions; plotted are every sub-model's and every merged model's loss on those samples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json
from sftmerge.io.layout import MODEL_CONFIG, ORDER_PREFIX, SAMPLE_LOSSES_NAME, RunLayout, is_model_folder


def order_losses(run: Path) -> Dict[str, List[Dict]]:
    """{"order-k": rows of the order's per-sample losses sorted by sample index}, in k order."""
    folders = RunLayout(run).orders(marker=SAMPLE_LOSSES_NAME)
    if not folders:
        raise SftmergeError(f"{run} has no finished orders ({ORDER_PREFIX}*/{SAMPLE_LOSSES_NAME})")
    out = {}
    for f in folders:
        text = RunLayout.sample_losses(f).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines()]
        out[f.name] = sorted(rows, key=lambda r: r["sample"])
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> Dict:
    """Spearman's rho, its p-value and 95% interval: Fisher's z with Bonett and Wright's (2000)
    variance (1 + rho^2 / 2) / (n - 3), which holds its coverage for rank correlations."""
    import math

    from scipy.stats import spearmanr

    from sftmerge.eval.stats import Z95

    res = spearmanr(x, y)
    rho, n = float(res.statistic), len(x)
    ci = None
    if n > 3 and math.isfinite(rho):
        z, se = math.atanh(max(-0.999999, min(0.999999, rho))), math.sqrt((1 + rho * rho / 2) / (n - 3))
        ci = [math.tanh(z - Z95 * se), math.tanh(z + Z95 * se)]
    return {"rho": rho, "p_value": float(res.pvalue), "n": n, "ci95": ci}


POOLED = "all orders"
FORMAT = 2  # imbalance.json's layout: 2 = Spearman intervals and the pooled row


def pooled_pairs(losses: Dict[str, List[Dict]]) -> Optional[List[tuple]]:
    """Every order's (position, loss minus the sample's mean loss over the orders): how hard a
    sample is does not depend on where an order put it, so taking it out leaves the position
    effect with K times the pairs of one order. None with fewer than 2 orders."""
    if len(losses) < 2:
        return None
    by_sample: Dict[int, List[float]] = {}
    for rows in losses.values():
        for r in rows:
            by_sample.setdefault(r["sample"], []).append(r["loss"])
    mean = {k: sum(v) / len(v) for k, v in by_sample.items()}
    return [(r["position"], r["loss"] - mean[r["sample"]]) for rows in losses.values() for r in rows]


def pooled_spearman(pairs: List[tuple]) -> Dict:
    """Spearman's rho over `pooled_pairs`."""
    return spearman([p for p, _ in pairs], [d for _, d in pairs])


def binned_means(x: Sequence[float], y: Sequence[float], bins: int) -> List[tuple]:
    """(bin centre, mean y, count) over `bins` equal-width bins of x (empty bins left out)."""
    from scipy.stats import binned_statistic

    means, edges, _ = binned_statistic(x, y, statistic="mean", bins=bins)
    counts, _, _ = binned_statistic(x, y, statistic="count", bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    return [(float(c), float(m), int(n)) for c, m, n in zip(centres, means, counts) if n > 0]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_position(losses: Dict[str, List[Dict]], out: Path, run_name: str, bins: int = 10) -> Dict:
    """Figure 1: loss against first-epoch position per order; returns Spearman per order."""
    plt = _pyplot()
    stats = {}
    pairs = pooled_pairs(losses)  # the right panel, with 2 orders or more
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(13 if pairs else 7, 4.4), squeeze=False)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    csv_rows = []
    for i, (name, rows) in enumerate(losses.items()):
        x = [r["position"] for r in rows]
        y = [r["loss"] for r in rows]
        stats[name] = spearman(x, y)
        c = colors[i % len(colors)]
        ax.scatter(x, y, s=8, alpha=0.3, color=c)
        means = binned_means(x, y, bins)
        s = stats[name]
        ax.plot([m[0] for m in means], [m[1] for m in means], "-o", color=c, ms=4,
                label=f"{name} (binned mean; Spearman rho={s['rho']:+.2f}, p={s['p_value']:.2g})")
        csv_rows += [(name, r["sample"], r["id"], r["position"], r["loss"]) for r in rows]
    ax.set_xlabel("position in the first epoch (0 = trained first)")
    ax.set_ylabel("final loss on the sample (mean NLL per response token)")
    ax.set_title(f"{run_name}: final loss vs first-epoch position", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if pairs:
        stats[POOLED] = pooled_spearman(pairs)
        _plot_pooled(axes[0][1], pairs, stats[POOLED], bins)
    fig.tight_layout()
    _save(fig, out / "position.png")
    _write_csv(out / "position.csv", ("model", "sample", "id", "position", "loss"), csv_rows)
    write_json(out / "spearman.json", stats)
    _write_csv(out / "spearman.csv", ("model", "rho", "ci95_low", "ci95_high", "p_value", "n"),
               [(k, v["rho"], *(v["ci95"] or (None, None)), v["p_value"], v["n"]) for k, v in stats.items()])
    return stats


def _plot_pooled(ax, pairs: List[tuple], stat: Dict, bins: int) -> None:
    """Figure 1's right panel: every order's loss net of its sample's mean, binned, with 95% intervals."""
    import numpy as np
    from scipy.stats import binned_statistic

    from sftmerge.eval.stats import Z95

    x, y = np.array([p for p, _ in pairs], dtype=float), np.array([d for _, d in pairs])
    mean, edges, _ = binned_statistic(x, y, "mean", bins=bins)
    sd, _, _ = binned_statistic(x, y, lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, bins=edges)
    n, _, _ = binned_statistic(x, y, "count", bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    ok = n > 1
    ax.scatter(x, y, s=6, alpha=0.15, color="gray")
    ax.errorbar(centres[ok], mean[ok], yerr=Z95 * sd[ok] / np.sqrt(n[ok]), fmt="-o", color="black", ms=4,
                capsize=3, label="binned mean, 95% interval")
    ax.axhline(0, color="gray", lw=0.8, ls=":")
    lo, hi = stat["ci95"] or (float("nan"), float("nan"))
    ax.set_title(f"{POOLED}: loss minus the sample's mean over the orders\n"
                 f"Spearman rho={stat['rho']:+.3f} [{lo:+.3f}, {hi:+.3f}], p={stat['p_value']:.2g}, n={stat['n']}",
                 fontsize=10)
    ax.set_xlabel("position in the first epoch (0 = trained first)")
    ax.set_ylabel("loss - the sample's mean loss")
    ax.legend(fontsize=7, loc="best")


def figure_anchor(losses: Dict[str, List[Dict]], merged: Dict[str, List[float]], anchor: str, out: Path,
                  run_name: str, bins: int = 10) -> Dict:
    """Figure 3: every model's loss on the samples, placed at the anchor order's positions."""
    if anchor not in losses:
        raise SftmergeError(f"anchor {anchor} not in the run (have: {', '.join(losses)})")
    plt = _pyplot()
    position = [r["position"] for r in losses[anchor]]
    series = {name: [r["loss"] for r in rows] for name, rows in losses.items()}
    series.update(merged)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    stats = {}
    for i, (name, y) in enumerate(series.items()):
        if len(y) != len(position):
            raise SftmergeError(f"{name}: {len(y)} sample losses, the run has {len(position)}")
        stats[name] = spearman(position, y)
        means = binned_means(position, y, bins)
        merged_model = name in merged
        style = "-s" if merged_model else ("-o" if name == anchor else "--o")
        label = f"{name}{' (anchor)' if name == anchor else ''}{' (merged)' if merged_model else ''}"
        ax.plot([m[0] for m in means], [m[1] for m in means], style, color=colors[i % len(colors)], ms=4,
                lw=2.2 if merged_model or name == anchor else 1.2, label=f"{label}, rho={stats[name]['rho']:+.2f}")
    ax.set_xlabel(f"position in {anchor}'s first epoch (binned, {bins} bins)")
    ax.set_ylabel("final loss on the sample (mean NLL per response token)")
    ax.set_title(f"{run_name}: losses along {anchor}'s data order", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, out / "anchor.png")
    names = list(series)
    ids = [r["id"] for r in losses[anchor]]
    _write_csv(out / "anchor.csv", ("sample", "id", f"{anchor}_position", *names),
               [(i, ids[i], position[i], *(series[n][i] for n in names)) for i in range(len(position))])
    return stats


def merged_losses(run: Path, merged_dirs: Sequence[str], batch_size: int = 16) -> Dict[str, List[float]]:
    """Per-sample training losses of merged models, computed as training computes them; those
    `score_merged` wrote (RUN/imbalance/losses/) are read where newer than their model's files."""
    if not merged_dirs:
        return {}
    for d in merged_dirs:
        if not is_model_folder(d):
            raise SftmergeError(f"merged model {d} is not a model folder (no {MODEL_CONFIG})")
    todo = losses_to_score(run, merged_dirs)
    if todo:
        from sftmerge.train.prepared import prepared_dataset, run_config

        _, dataset = prepared_dataset(run_config(run))
        for d in todo:
            _write_losses(run, Path(d), dataset, batch_size)
    files = [RunLayout(run).merged_losses(Path(d).name) for d in merged_dirs]
    return {f.stem: [json.loads(line)["loss"] for line in f.read_text(encoding="utf-8").splitlines()] for f in files}


def _fresh(run: Path, model_dir: Path) -> bool:
    losses = RunLayout(run).merged_losses(model_dir.name)
    newest = max((f.stat().st_mtime for f in model_dir.iterdir() if f.is_file()), default=0.0)
    return losses.is_file() and losses.stat().st_mtime >= newest


def _write_losses(run: Path, model_dir: Path, dataset, batch_size: int = 16) -> None:
    from sftmerge.eval.losses import sample_losses
    from sftmerge.io.fsutil import write_jsonl

    losses = RunLayout(run).merged_losses(model_dir.name)
    losses.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(losses, sample_losses(model_dir, dataset, batch_size))


def score_merged(run: str, merged_dir: str, echo=print) -> List[str]:
    """A job for the evaluation's worker pool (eval/cpu_pool.py `Call`): MERGED's per-sample losses
    on RUN's training data into RUN/imbalance/losses/, for figure 3; returns failure lines."""
    from sftmerge.train.prepared import prepared_dataset, run_config

    _, dataset = prepared_dataset(run_config(Path(run)))
    _write_losses(Path(run), Path(merged_dir), dataset)
    echo(f"{Path(merged_dir).name}: per-sample training losses ({len(dataset)}) for figure 3")
    return []


def losses_to_score(run: Path, merged_dirs: Sequence[str]) -> List[str]:
    """The merged models whose figure-3 losses are missing or older than the model."""
    return [d for d in merged_dirs if is_model_folder(d) and not _fresh(run, Path(d))]


def imbalance(run: Path, merged_dirs: Sequence[str], out: Path, anchor: Optional[str] = None,
              bins: int = 10) -> Dict:
    """Write figures 1 and 3 (+ CSVs, spearman.{json,csv}) to OUT; returns the statistics."""
    losses = order_losses(run)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(run).resolve().name
    stats = {"position": figure_position(losses, out, name, bins)}
    merged = merged_losses(run, merged_dirs)
    stats["anchor"] = figure_anchor(losses, merged, anchor or next(iter(losses)), out, name, bins)
    write_json(out / "imbalance.json", {"run": str(run), "merged": list(merged_dirs), "bins": bins,
                                        "format": FORMAT, **stats})
    return stats


def is_current(out: Path, merged_dirs: Sequence[str]) -> bool:
    """OUT/imbalance.json is there, of this format and these merged models."""
    path = out / "imbalance.json"
    if not path.is_file():
        return False
    done = json.loads(path.read_text(encoding="utf-8"))
    return done.get("format") == FORMAT and done.get("merged") == list(merged_dirs)


def spearman_lines(stats: Dict[str, Dict]) -> List[str]:
    """spearman.json as a markdown table: rho [95% interval], p, n per order and pooled."""
    lines = ["| order | rho [95% interval] | p | n |", "|---|---|---|---|"]
    for name, v in stats.items():
        ci = f" [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" if v.get("ci95") else ""
        lines.append(f"| {name} | {v['rho']:+.3f}{ci} | {v['p_value']:.3g} | {v['n']} |")
    return lines
