"""`sftmerge results ...`: keep a run's result files, and render the README's tables from kept files."""

from __future__ import annotations

import sys

import click


@click.group("results")
def results() -> None:
    """Results kept as files (docs/results/) and the README tables rendered from them."""


@results.command("keep")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it holds an earlier kept copy.")
def keep_command(run: str, dest: str, overwrite: bool) -> None:
    """Copy RUN's small result files (no weights) into DEST, e.g. docs/results/<run>/."""
    from sftmerge.pipelines.results import keep

    kept = keep(run, dest, overwrite)
    size = sum(p.stat().st_size for p in kept)
    click.echo(f"kept {len(kept)} files ({size / 1e6:.1f} MB) in {dest}")


@results.command("readme")
@click.argument("readme", default="README.md", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a table differs from its files.")
def readme_command(readme: str, check: bool) -> None:
    """Render README's `<!-- results FOLDER KIND -->` blocks from the kept files."""
    from sftmerge.pipelines.results import render_readme

    stale = render_readme(readme, check)
    if check and stale:
        click.echo(f"error: {readme}: {len(stale)} results table(s) differ from their files, first: "
                   f"{stale[0]!r} (run `sftmerge results readme`)", err=True)
        sys.exit(1)
    click.echo(f"{readme}: {'up to date' if not stale else f'{len(stale)} table(s) rewritten'}")
