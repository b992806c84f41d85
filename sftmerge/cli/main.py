"""The `sftmerge` command line: one group, one subcommand per stage.

Heavy imports (torch, mergekit, transformers) happen inside the commands, so
`sftmerge --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from sftmerge import __version__
from sftmerge.errors import SftmergeError


class _Group(click.Group):
    """Lazily imported subcommands; SftmergeError becomes one `error: ...` line, exit 1.

    `lazy` maps a command name to ("module:attribute", one-line help), so `--help`
    lists it without importing torch or mergekit.
    """

    def __init__(self, *args, lazy=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(formatter.width - 20)))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SftmergeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


LAZY = {
    "merge": ("sftmerge.cli.merge:merge", "Validate a mergekit recipe strictly, then merge it (writes merge_report.json)."),
    "analyze": ("sftmerge.cli.analyze:analyze", "Diagnostics: delta sparsity, training imbalance."),
    "base": ("sftmerge.cli.train:base", "Write the embedded default base model (SmolLM2-135M-Instruct) as an HF folder."),
    "train": ("sftmerge.cli.train:train", "Training: multi-order SFT (optionally L1-sparse), DPO/ORPO, the PAFT pipeline."),
    "eval": ("sftmerge.cli.eval:eval_command", "Evaluate models on arith, GSM8K, HumanEval, MBPP and AlpacaEval."),
    "card": ("sftmerge.hub.card:card_command", "(Re)write the Hugging Face model card of a merged model folder."),
    "push": ("sftmerge.hub.push:push_command", "Upload a finished merge to the Hugging Face Hub (--dry-run lists it)."),
    "demo": ("sftmerge.cli.demo:demo_command", "The main job end to end: train K orders, merge, evaluate, REPORT.md."),
    "recipe": ("sftmerge.hub.push:recipe_group", "Recipes on the Hub: pull a shared merge's recipe into recipes/."),
}


@click.group(cls=_Group, lazy=LAZY, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftmerge")
def main() -> None:
    """Multi-order SFT, parameter-selection merging and evaluation."""


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

    from sftmerge.io.fsutil import atomic_output_dir
    from sftmerge.merge.recipes import write_recipe_set
    from sftmerge.data.synthetic import FamilySpec, write_family

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
            shown_as=f"{out}/recipes",
        )
    click.echo(f"wrote base + {k} sub-models and recipes to {Path(out)}")


if __name__ == "__main__":
    main()
