"""`sftmerge analyze ...`: diagnostics that read checkpoints and runs and write tables and plots."""

from __future__ import annotations

from pathlib import Path

import click

from sftmerge.errors import SftmergeError


@click.group("analyze")
def analyze() -> None:
    """Diagnostics: delta sparsity, training imbalance."""


@analyze.command("sparsity")
@click.argument("models", nargs=-1, required=True)
@click.option("--base", required=True, help="The base model folder the deltas are taken against.")
@click.option("--tol", "tolerance", default=1e-6, show_default=True, help="Magnitude counted as 'small'.")
@click.option("--out", default="results/sparsity", show_default=True, type=click.Path(file_okay=False))
def sparsity(models, base: str, tolerance: float, out: str) -> None:
    """Fraction of each MODEL's delta from --base that is exactly zero or tiny, per layer type."""
    from sftmerge.eval.sparsity import delta_sparsity, model_labels, write_outputs

    if tolerance < 0:
        raise SftmergeError(f"--tol must be >= 0 (got {tolerance})")
    from sftmerge.io.checkpoint import read_config, shapes

    for path in (base, *models):
        if not (Path(path) / "config.json").exists():
            raise SftmergeError(f"model folder not found: {path} (no config.json)")
        # Damaged config.json or weight headers: one line now, before any tensor is read.
        read_config(path)
        shapes(path)
    table = {label: delta_sparsity(m, base, tolerance) for label, m in zip(model_labels(models), models)}
    click.echo(write_outputs(table, base, tolerance, Path(out)), nl=False)
    click.echo(f"wrote {out}/sparsity.{{md,csv,json,png}}")


@analyze.command("imbalance")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--merged", "merged", multiple=True, type=click.Path(file_okay=False),
              help="Merged model folder (repeatable): its per-sample losses join figure 3.")
@click.option("--anchor", default=None, help="Order whose positions are figure 3's x axis (default: order-0).")
@click.option("--bins", default=10, show_default=True, help="Position bins for the binned means.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (default: RUN/imbalance).")
def imbalance_command(run: str, merged, anchor, bins: int, out) -> None:
    """Figures 1 and 3 of the paper: final loss vs first-epoch position, per order and along one order.

    Writes OUT/position.{png,csv}, OUT/anchor.{png,csv}, OUT/spearman.{json,csv}.
    """
    from sftmerge.eval.imbalance import imbalance

    if bins < 1:
        raise SftmergeError(f"--bins must be at least 1 (got {bins})")
    if not Path(run).is_dir():
        raise SftmergeError(f"run folder {run} not found")
    target = Path(out) if out else Path(run) / "imbalance"
    stats = imbalance(Path(run), list(merged), target, anchor, bins)
    for name, s in stats["position"].items():
        ci = f" [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]" if s.get("ci95") else ""
        click.echo(f"{name}: Spearman rho(position, loss) = {s['rho']:+.3f}{ci} (p = {s['p_value']:.3g}, n = {s['n']})")
    for name in merged:
        s = stats["anchor"][Path(name).name]
        click.echo(f"{Path(name).name}: along the anchor's order rho = {s['rho']:+.3f} (p = {s['p_value']:.3g})")
    click.echo(f"wrote {target}/position.{{png,csv}}, anchor.{{png,csv}}, spearman.{{json,csv}}")


@analyze.command("steps")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--method", default="select", show_default=True, help="Recipe used to merge same-step checkpoints.")
@click.option("--limit", default=100, show_default=True, help="Held-out problems the loss is measured on.")
@click.option("--seed", default=42, show_default=True, help="Merge seed written into each step's recipe.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (default: RUN/steps).")
def steps_command(run: str, method: str, limit: int, seed: int, out) -> None:
    """Figure 4 of the paper: held-out loss vs training step, single runs and the merge of same-step checkpoints.

    Needs a run trained with keep_checkpoint_steps. Writes OUT/steps.{png,csv,json},
    OUT/recipes/step-N.yml and the merges OUT/merged/step-N/ (reused on a rerun).
    """
    from sftmerge.pipelines.steps import step_curves, steps_line

    if limit < 1:
        raise SftmergeError(f"--limit must be at least 1 (got {limit})")
    if not Path(run).is_dir():
        raise SftmergeError(f"run folder {run} not found")
    target = Path(out) if out else Path(run) / "steps"
    record = step_curves(Path(run), target, method, limit, seed)
    click.echo(steps_line(record))
    click.echo(f"wrote {target}/steps.{{png,csv,json}}")
