"""`sftmerge plan`: memory per GPU and time per order of a fine-tuning run, before running it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import click

from sftmerge.errors import SftmergeError

PARTS = [("weights", "weights (compute copy)"), ("master", "fp32 master weights"), ("gradients", "gradients"),
         ("optimizer", "AdamW moments"), ("gathered", "gathered blocks (sharded)"), ("activations", "activations")]
PRECISION_WORDS = {"fp32": "fp32", "mixed": "bf16/fp16 compute, fp32 master weights, gradients and moments",
                   "bf16": "bf16 weights, gradients and moments, no master"}


def _is_training_config(ref: str) -> bool:
    return Path(ref).suffix in (".yaml", ".yml")


def _settings(ref: str, base: str | None, overrides: dict):
    """(architecture, training settings) from a training config YAML, or from a model with defaults."""
    from dataclasses import fields

    from sftmerge.train.config import SFTRunConfig, load_config
    from sftmerge.train.plan_model import read_architecture

    if _is_training_config(ref):
        cfg = load_config(ref)
        base = base or cfg.base
        try:
            arch = read_architecture(base)
        except SftmergeError as e:
            raise SftmergeError(f"base of {ref}: {e}") from None
    else:
        arch = read_architecture(base or ref)
        # A bare model: the training config's defaults, and no data set to count tokens of.
        defaults = {f.name: f.default for f in fields(SFTRunConfig)}
        cfg = SimpleNamespace(**{**defaults, "data": None})
    settings = dict(batch=cfg.per_device_train_batch_size, max_length=cfg.max_length, epochs=cfg.num_train_epochs,
                    orders=cfg.orders, checkpointing=cfg.gradient_checkpointing, data=cfg.data,
                    num_samples=cfg.num_samples, precision=None, config_precision=cfg.precision)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return arch, settings


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}" if n else "-"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{seconds / 60:.1f} min" if seconds < 600 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{seconds / 86400:.1f} days"


def render(result: dict) -> str:
    """The plan as a plain-text table (GiB per device, one column per strategy)."""
    from sftmerge.train.plan_model import Architecture

    arch = Architecture(**result["architecture"])
    s = result["setup"]
    rows = result["per_device_bytes"]
    names = list(rows)
    lines = [
        f"model: {result['model']} ({arch.describe()})",
        f"setup: {s['devices']} GPU(s) x {result['gpu_memory_gib']:g} GiB; per device {s['batch']} x "
        f"{s['max_length']} tokens; precision {s['precision']} ({PRECISION_WORDS[s['precision']]}); "
        f"activation checkpointing {'on' if s['checkpointing'] else 'off'}",
        "",
    ]
    width = max(len(label) for _, label in PARTS) + 2
    head = "per device (GiB)".ljust(width) + "".join(n.rjust(9) for n in names)
    lines += [head, "-" * len(head)]
    for key, label in PARTS:
        lines.append(label.ljust(width) + "".join(_gib(rows[n][key]).rjust(9) for n in names))
    lines.append("total".ljust(width) + "".join(_gib(rows[n]["total"]).rjust(9) for n in names))
    lines.append(f"fits (+{result['runtime_reserve_gib']:g} reserve)".ljust(width)
                 + "".join(("yes" if rows[n]["fits"] else "NO").rjust(9) for n in names))
    tokens = result.get("tokens")
    if tokens:
        lines += ["", f"tokens per order: {tokens['samples']} samples ({tokens['samples_from']}) x "
                      f"{tokens['mean_tokens']:.0f} mean tokens ({tokens['mean_from']}) x {tokens['epochs']} "
                      f"epochs = {tokens['per_order'] / 1e6:.2f}M"]
    time = result.get("time")
    if time:
        lines.append(f"time at {time['tokens_per_second']:g} tokens/s (all {s['devices']} GPU(s) together): "
                     f"{_duration(time['seconds_per_order'])} per order, "
                     f"{_duration(time['seconds_all_orders'])} for {result['orders']} orders one after another")
    elif tokens:
        lines.append("time: give --tokens-per-second (measured, e.g. tokens_per_second in a short run's summary.json)")
    return "\n".join(lines)


@click.command("plan")
@click.argument("config")
@click.option("--base", default=None, help="Model folder, config.json or Hub id (overrides the config's base).")
@click.option("--gpus", type=int, default=1, show_default=True, help="Devices the run is spread over (N).")
@click.option("--gpu-memory", type=float, required=True, help="Memory per device in GiB (nvidia-smi's MiB / 1024).")
@click.option("--strategy", default=None, help="ddp | zero2 | fsdp | zero3 (default: all four).")
@click.option("--tokens-per-second", type=float, default=None, help="Measured training throughput of all N devices.")
@click.option("--samples", type=int, default=None, help="Training samples per epoch (default: the config's or the data set's).")
@click.option("--mean-tokens", type=float, default=None, help="Mean tokens per sample (default: max_length, an upper bound).")
@click.option("--batch-size", type=int, default=None, help="Per-device batch (default: the config's).")
@click.option("--max-length", type=int, default=None, help="Tokens per sequence (default: the config's).")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the config's).")
@click.option("--orders", type=int, default=None, help="K orders (default: the config's).")
@click.option("--precision", default=None, help="fp32 | mixed | bf16 (default: from the config's precision).")
@click.option("--checkpointing/--no-checkpointing", default=None,
              help="Activation checkpointing (default: the config's gradient_checkpointing).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(config, base, gpus, gpu_memory, strategy, tokens_per_second, samples, mean_tokens, batch_size,
                 max_length, epochs, orders, precision, checkpointing, as_json) -> None:
    """Memory per device and time per order for CONFIG, from the model's config.json alone.

    CONFIG is a training config YAML (its `base` names the model), a model folder, a
    config.json or a Hub id. No weights are read. Figures are GiB per device for DDP,
    DeepSpeed ZeRO-2, FSDP full shard and ZeRO-3; see docs/scale.md for the formulas.
    """
    from sftmerge.train.plan import STRATEGIES, Setup, plan, precision_of, tokens_per_order

    if strategy is not None and strategy not in STRATEGIES:
        raise SftmergeError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if gpus < 1:
        raise SftmergeError(f"--gpus must be at least 1 (got {gpus})")
    arch, s = _settings(config, base, dict(batch=batch_size, max_length=max_length, epochs=epochs, orders=orders,
                                     checkpointing=checkpointing, precision=precision))
    if s["max_length"] is None:
        raise SftmergeError("the config has no max_length: give --max-length")
    setup = Setup(devices=gpus, batch=s["batch"], max_length=s["max_length"],
                  precision=s["precision"] or precision_of(s["config_precision"]), checkpointing=s["checkpointing"])
    tokens = None
    if s["data"] is not None or samples is not None:
        tokens = tokens_per_order(s["data"] or "", s["num_samples"], s["max_length"], s["epochs"], samples, mean_tokens)
    result = plan(arch, setup, gpu_memory, strategies=[strategy] if strategy else STRATEGIES, tokens=tokens,
                  tokens_per_second=tokens_per_second, orders=s["orders"])
    click.echo(json.dumps(result, indent=1) if as_json else render(result))
