"""`sftmerge merge`: mergekit's own options, strict recipe validation, atomic output."""

from __future__ import annotations

import click
from mergekit.options import MergeOptions, add_merge_options


@click.command("merge")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True,
              help="Replace OUT if an earlier sftmerge command wrote it (only once the new merge is complete).")
@click.option("--validate-only", is_flag=True, help="Check the recipe and its models, merge nothing.")
@add_merge_options
def merge(merge_options: MergeOptions, recipe: str, out: str, overwrite: bool, validate_only: bool) -> None:
    """Validate RECIPE strictly, then merge it into OUT (any mergekit option applies).

    Writes OUT/merge_report.json: per input model the fraction of elements taken
    from it, the fraction equal to the base before/after resampling, and the seeds.
    mergekit's global seed (--random-seed) is the recipe's parameters.seed where the
    method has one, else --random-seed, else 0, so a rerun gives the same weights.
    OUT must lie outside every input; --overwrite replaces only an earlier sftmerge output.
    """
    from sftmerge.hub.card import merge_with_card
    from sftmerge.merge.driver import load_recipe

    parsed = load_recipe(recipe)
    if validate_only:
        click.echo(f"ok: {recipe} ({parsed.config.merge_method})")
        return
    merge_options.apply_global_options()
    report = merge_with_card(parsed, out, merge_options, overwrite=overwrite)
    line = f"merged {recipe} -> {out} in {report['seconds']:.1f}s (random seed {report['random_seed']})"
    if "fraction_from_model" in report:
        fr = ", ".join(f"{v:.3f}" for v in report["fraction_from_model"].values())
        line += f"; taken from each model: {fr}"
        if report.get("fraction_equal_base_after_resample") is not None:
            line += (
                f"; equal to base: {report['fraction_equal_base_before_resample']:.4f}"
                f" -> {report['fraction_equal_base_after_resample']:.4f}"
            )
    click.echo(line)
