"""The `sftmerge` command line: one group, one subcommand per stage.

Heavy imports (torch, mergekit, transformers) happen inside the commands, so
`sftmerge --help` stays fast, and a command whose optional extra is not installed
fails alone, with one line naming the extra (sftmerge/extras.py).
"""

from __future__ import annotations

import importlib
import sys

import click

from sftmerge import __version__
from sftmerge.errors import SftmergeError
from sftmerge.extras import missing_extra, require


class _Group(click.Group):
    """Lazily imported subcommands; SftmergeError becomes one `error: ...` line, exit 1.

    `lazy` maps a command name to ("module:attribute", one-line help, modules of extras
    it needs), so `--help` lists it without importing torch or mergekit. Those modules
    are looked up (not imported) before the command is, so a missing extra stops it
    before it writes anything; a module of an extra found missing later, on import or
    at run time, gives the same line.
    """

    def __init__(self, *args, lazy=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            target, _, *needs = self.lazy[name]  # `needs` may be left out: no extra needed
            module, attribute = target.split(":")
            what = f"`sftmerge {name}`"
            require(*(needs[0] if needs else ()), what=what)  # before the import, which may need them too
            try:
                command = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as e:
                raise missing_extra(e, what) or e
            self.add_command(command, name)
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
            try:
                return super().invoke(ctx)
            except ModuleNotFoundError as e:
                what = f"`sftmerge {ctx.invoked_subcommand}`" if ctx.invoked_subcommand else "this command"
                raise missing_extra(e, what) or e
        except SftmergeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


# name: (where the command is, its line in `--help`, modules of extras it cannot start without)
LAZY = {
    "merge": ("sftmerge.cli.merge:merge", "Validate a mergekit recipe strictly, then merge it (writes merge_report.json).",
              ()),
    "analyze": ("sftmerge.cli.analyze:analyze", "Diagnostics: delta sparsity, training imbalance.", ("matplotlib",)),
    "base": ("sftmerge.cli.train:base", "Write the embedded default base model (SmolLM2-135M-Instruct) as an HF folder.",
             ("gguf",)),
    "train": ("sftmerge.cli.train:train", "Training: multi-order SFT (optionally L1-sparse), DPO/ORPO, the PAFT pipeline.",
              ("trl",)),
    "eval": ("sftmerge.cli.eval:eval_command", "Evaluate models on arith, GSM8K, HumanEval, MBPP and AlpacaEval.",
             ("lm_eval",)),
    "card": ("sftmerge.hub.card:card_command", "(Re)write the Hugging Face model card of a merged model folder.", ()),
    "push": ("sftmerge.hub.push:push_command", "Upload a finished merge to the Hugging Face Hub (--dry-run lists it).", ()),
    "demo": ("sftmerge.cli.demo:demo_command", "The main job end to end: train K orders, merge, evaluate, REPORT.md.",
             ("trl", "gguf", "lm_eval", "matplotlib")),
    "recipe": ("sftmerge.hub.push:recipe_group", "Recipes on the Hub: pull a shared merge's recipe into recipes/.", ()),
    "toy-models": ("sftmerge.cli.toy:toy_models", "Write a tiny synthetic family (base + K sub-models) and its recipes.", ()),
    "results": ("sftmerge.cli.results:results",
                "Keep a run's result files (no weights) and render the README's tables from them.", ()),
    "plan": ("sftmerge.cli.plan:plan_command",
             "Memory per GPU and time per order of a training config, from the model's config alone.", ()),
}


@click.group(cls=_Group, lazy=LAZY, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftmerge")
def main() -> None:
    """Multi-order SFT, parameter-selection merging and evaluation."""


if __name__ == "__main__":
    main()
