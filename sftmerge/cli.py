"""The `sftmerge` command line: one group, one subcommand per stage.

Heavy imports (torch, mergekit, transformers) happen inside the commands, so
`sftmerge --help` stays fast.
"""

from __future__ import annotations

import sys

import click

from sftmerge import __version__
from sftmerge.errors import SftmergeError


class _Group(click.Group):
    """Turns SftmergeError into one `error: ...` line and exit status 1.

    Commands listed in `lazy` are built on first use, so commands that do not need
    mergekit (whose import takes seconds) start at once.
    """

    lazy = {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            self.lazy[name]()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SftmergeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftmerge")
def main() -> None:
    """Multi-order SFT, parameter-selection merging and evaluation."""


def _merge_command():
    from mergekit.options import MergeOptions, add_merge_options

    @main.command("merge")
    @click.argument("recipe", type=click.Path(dir_okay=False))
    @click.argument("out", type=click.Path(file_okay=False))
    @click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new merge is complete).")
    @click.option("--validate-only", is_flag=True, help="Check the recipe and its models, merge nothing.")
    @add_merge_options
    def merge(merge_options: MergeOptions, recipe: str, out: str, overwrite: bool, validate_only: bool) -> None:
        """Validate RECIPE strictly, then merge it into OUT (any mergekit option applies).

        Writes OUT/merge_report.json: per input model the fraction of elements taken
        from it, the fraction equal to the base before/after resampling, and the seed.
        """
        from sftmerge.merging import load_recipe, run_recipe

        parsed = load_recipe(recipe)
        if validate_only:
            click.echo(f"ok: {recipe} ({parsed.config.merge_method})")
            return
        merge_options.apply_global_options()
        report = run_recipe(parsed, out, merge_options, overwrite=overwrite)
        line = f"merged {recipe} -> {out} in {report['seconds']:.1f}s"
        if "fraction_from_model" in report:
            fr = ", ".join(f"{v:.3f}" for v in report["fraction_from_model"].values())
            line += f"; taken from each model: {fr}"
            if report.get("fraction_equal_base_after_resample") is not None:
                line += (
                    f"; equal to base: {report['fraction_equal_base_before_resample']:.4f}"
                    f" -> {report['fraction_equal_base_after_resample']:.4f}"
                )
        click.echo(line)


_Group.lazy["merge"] = _merge_command


def _train_commands():
    from sftmerge.train.cli import register

    register(main)


_train_commands()


@main.command("toy-models")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--k", "k", default=3, show_default=True, help="Number of sub-models.")
@click.option("--seed", default=0, show_default=True, help="Seed of the weights and deltas.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
@click.option("--overwrite", is_flag=True)
def toy_models(out: str, k: int, seed: int, dtype: str, overwrite: bool) -> None:
    """Write a tiny synthetic family (base + K sub-models) and its recipe set to OUT.

    Sub-models are the base plus seeded random deltas on ~70% of the elements (the rest
    stay exactly equal to the base, as after bf16 SFT). For trying merges in seconds.
    """
    from pathlib import Path

    from sftmerge.fsutil import atomic_output_dir
    from sftmerge.recipes import write_recipe_set
    from sftmerge.synthetic import FamilySpec, write_family

    if k < 2:
        raise SftmergeError(f"--k must be at least 2 (got {k})")
    spec = FamilySpec(k=k, seed=seed, dtype=dtype)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_family(tmp, spec)
        write_recipe_set(
            tmp / "recipes",
            base=f"{out}/base",
            models=[f"{out}/order-{i}" for i in range(k)],
            made_by=f"Made by `sftmerge toy-models {out} --k {k} --seed {seed}`.",
        )
    click.echo(f"wrote base + {k} sub-models and recipes to {Path(out)}")


if __name__ == "__main__":
    main()
