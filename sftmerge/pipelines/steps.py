"""Figure 4 of arXiv 2410.03743: held-out loss against training step, single runs vs their merge.

At every step where all K orders kept a snapshot (`keep_checkpoint_steps`), plus the
final step, the K same-step models are merged with one recipe by `sftmerge merge`'s driver
(mergekit's run_merge, in this process), and every model's loss on held-out problems is computed as training
computes per-sample losses (token-weighted mean over the response tokens). Step 0 is the base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import write_json, write_text
from sftmerge.io.layout import STEP_PREFIX, SUMMARY_NAME, RunLayout, number_of, numbered, order_name, step_name


def snapshot_steps(run: Path) -> Dict[int, List[Path]]:
    """{step: [order-0's model at that step, order-1's, ...]} for steps every order has, and the final one."""
    orders = RunLayout(run).orders(marker=SUMMARY_NAME)
    if len(orders) < 2:
        raise SftmergeError(f"{run} needs at least 2 finished orders to merge (found {len(orders)})")
    per_order = [{number_of(s): s for s in numbered(RunLayout.snapshots(o), STEP_PREFIX)} for o in orders]
    common = sorted(set.intersection(*(set(d) for d in per_order)))
    if not common:
        raise SftmergeError(f"{run} kept no snapshots common to all orders: train with keep_checkpoint_steps")
    steps = {s: [d[s] for d in per_order] for s in common}
    final = json.loads(RunLayout.summary(orders[0]).read_text())["steps"]
    steps[final] = orders
    return steps


def held_out_pairs(config, limit: int):
    """The data's validation split, else its test split (never the training pairs)."""
    from sftmerge.data.pairs import load_pairs

    for split in ("validation", "test"):
        try:
            pairs = load_pairs(config.data, split, limit, config.data_seed)
        except SftmergeError:
            continue
        if pairs:
            return split, pairs
    raise SftmergeError(f"data {config.data!r} has no validation or test split to measure held-out loss on")


def mean_loss(model_dir: Path, dataset) -> float:
    from sftmerge.eval.losses import sample_losses

    rows = sample_losses(Path(model_dir), dataset)
    return sum(r["loss"] * r["tokens"] for r in rows) / max(sum(r["tokens"] for r in rows), 1)


def step_curves(run: Path, out: Path, method: str = "select", limit: int = 100, seed: int = 42) -> Dict:
    """Merge same-step snapshots with `method`, score everything, write steps.{csv,json,png}."""
    from tqdm.auto import tqdm

    from sftmerge.merge.recipes import METHODS, render
    from sftmerge.pipelines.controls import merge_in_process
    from sftmerge.train.prepared import prepared_dataset, run_config

    if method not in METHODS:
        raise SftmergeError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    config = run_config(run)
    steps = snapshot_steps(run)
    split, pairs = held_out_pairs(config, limit)
    _, dataset = prepared_dataset(config, pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes").mkdir(exist_ok=True)
    base_loss = mean_loss(Path(config.base), dataset)
    rows = [{"step": 0, "model": order_name(k), "loss": base_loss} for k in range(len(next(iter(steps.values()))))]
    rows.append({"step": 0, "model": method, "loss": base_loss})
    for step, models in tqdm(sorted(steps.items()), desc=f"step merges ({method})", unit="step"):
        recipe = out / "recipes" / f"{step_name(step)}.yml"
        write_text(recipe, render(method, config.base, [str(m) for m in models], seed,
                                  made_by=f"Made by `sftmerge analyze steps` for step {step} of {run}.",
                                  path=str(recipe)))
        merged = out / "merged" / step_name(step)
        merge_in_process(recipe, merged)  # the merge driver: no interpreter start per step
        for k, m in enumerate(models):
            rows.append({"step": step, "model": order_name(k), "loss": mean_loss(m, dataset)})
        rows.append({"step": step, "model": method, "loss": mean_loss(merged, dataset)})
    record = {"run": str(run), "method": method, "seed": seed, "split": split, "problems": len(pairs), "rows": rows}
    write_json(out / "steps.json", record)
    write_text(out / "steps.csv", "step,model,loss\n" + "".join(f"{r['step']},{r['model']},{r['loss']}\n" for r in rows))
    _plot(record, out / "steps.png", Path(run).resolve().name)
    return record


def _plot(record: Dict, path: Path, run_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    # Left: the whole curve from the base; right: the same without step 0, where the runs and the
    # merge differ by a few hundredths that the base's loss would flatten.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    models = list(dict.fromkeys(r["model"] for r in record["rows"]))
    for ax, first in zip(axes, (0, 1)):
        for name in models:
            pts = sorted((r["step"], r["loss"]) for r in record["rows"] if r["model"] == name)[first:]
            merged = name == record["method"]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-s" if merged else "--o", lw=2.4 if merged else 1.2,
                    ms=5 if merged else 3, label=f"merge of same-step checkpoints ({name})" if merged else name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_xlabel("training step (optimizer steps; 0 = base)")
        ax.set_ylabel("held-out loss (mean NLL per response token)")
    axes[0].set_title(f"{run_name}: {record['split']} loss on {record['problems']} problems", fontsize=10)
    axes[1].set_title("the same, from the first kept checkpoint", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def steps_lines(record: Dict) -> List[str]:
    """steps.json as a markdown table: one row per step, each single run's held-out loss, their
    mean, and the merge of the same-step checkpoints (a flat last epoch: training has converged)."""
    method = record["method"]
    singles = sorted({r["model"] for r in record["rows"]} - {method})
    at: Dict[int, Dict[str, float]] = {}
    for r in record["rows"]:
        at.setdefault(r["step"], {})[r["model"]] = r["loss"]
    lines = ["| step | " + " | ".join(singles) + f" | mean of singles | {method} |",
             "|---|" + "---|" * (len(singles) + 2)]
    for step in sorted(at):
        mean = sum(at[step][m] for m in singles) / len(singles)
        lines.append(f"| {step} | " + " | ".join(f"{at[step][m]:.4f}" for m in singles)
                     + f" | {mean:.4f} | {at[step][method]:.4f} |")
    return lines


def steps_line(record: Dict) -> Optional[str]:
    last = max(r["step"] for r in record["rows"])
    at = {r["model"]: r["loss"] for r in record["rows"] if r["step"] == last}
    singles = [v for k, v in at.items() if k != record["method"]]
    return (f"step {last}: merge ({record['method']}) {at[record['method']]:.4f}, "
            f"single runs {min(singles):.4f}..{max(singles):.4f}")
