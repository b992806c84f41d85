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
    for path in (base, *models):
        if not (Path(path) / "config.json").exists():
            raise SftmergeError(f"model folder not found: {path} (no config.json)")
    table = {label: delta_sparsity(m, base, tolerance) for label, m in zip(model_labels(models), models)}
    click.echo(write_outputs(table, base, tolerance, Path(out)), nl=False)
    click.echo(f"wrote {out}/sparsity.{{md,csv,json,png}}")
