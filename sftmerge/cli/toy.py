"""`sftmerge toy-models`: a tiny synthetic model family for trying merges in seconds."""

from __future__ import annotations

import click

from sftmerge.errors import SftmergeError


@click.command("toy-models")
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

    from sftmerge.io.fsutil import atomic_output_dir
    from sftmerge.io.layout import order_name
    from sftmerge.merge.recipes import write_recipe_set
    from sftmerge.data.synthetic import FamilySpec, write_family

    if k < 2:
        raise SftmergeError(f"--k must be at least 2 (got {k})")
    spec = FamilySpec(k=k, seed=seed, dtype=dtype)
    # Folders made before the output marker existed are recognised by their base and recipes.
    with atomic_output_dir(out, overwrite=overwrite, legacy_marks=("base/config.json", "recipes/select.yml")) as tmp:
        write_family(tmp, spec)
        write_recipe_set(
            tmp / "recipes",
            base=f"{out}/base",
            models=[f"{out}/{order_name(i)}" for i in range(k)],
            made_by=f"Made by `sftmerge toy-models {out} --k {k} --seed {seed}`.",
            shown_as=f"{out}/recipes",
        )
    click.echo(f"wrote base + {k} sub-models and recipes to {Path(out)}")
