"""The multi-order SFT config: one YAML file maps 1:1 onto `SFTRunConfig`.

The shared fields (base, data, optimisation, logging, checkpoints) and their checks come
from `TrainRunConfig` (train/common_config.py); this adds the multi-order, snapshot, LoRA
and PAFT fields. Every field except `orders` is identical for all K orders of a run;
only the data order differs, and it is a function of (`order_seed`, order index, epoch).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic.dataclasses import dataclass

from sftmerge.train.common_config import (
    RUN_CONFIG, TrainRunConfig, dump_config, knob, parse_config, read_config,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "arith.yaml"
DEFAULT_TEXT_TEMPLATE = "Question: {prompt}\nAnswer: {response}"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

__all__ = ["DEFAULT_CONFIG", "DEFAULT_TEXT_TEMPLATE", "KNOWN_KEYS", "LORA_TARGETS", "SFTRunConfig", "config_from_dict", "dump_config",
           "load_config"]


@dataclass(config=RUN_CONFIG)
class SFTRunConfig(TrainRunConfig):
    """Everything that defines a multi-order SFT run (see train/configs/arith.yaml)."""

    # --- multi-order
    orders: int = knob(3, "K: how many data orders.", flags=("--k",), at_least=1)
    order_seed: int = knob(1234, "Order k's permutations come from (order_seed, k, epoch).")
    order_mode: Literal["sample", "batch"] = knob(
        "sample", "sample: each epoch a fresh permutation; batch: fixed batches, only their order permuted.")
    reshuffle_each_epoch: bool = knob(True, "Permute every epoch anew (off: every epoch repeats the first).")

    # --- how a pair becomes training text
    format: Literal["chat", "text"] = knob(
        "chat", "chat: the tokenizer's chat template; text: text_template, for bases without one.")
    text_template: str = knob(
        DEFAULT_TEXT_TEMPLATE, "format: text: the sample's text, {prompt} and then {response} at its end.")

    # --- how a CPU step runs its batch (train/packed_rows.py; GPUs take TRL's own loss)
    pack_rows: bool = knob(True, "On a CPU: the batch's shared prefix once, its rows packed without padding "
                                 "(the same loss, 1.5x fewer tokens for the demo's arith batches); "
                                 "off: TRL's padded batch.")

    # --- kept snapshots (the resume checkpoints are `save_steps`)
    keep_checkpoint_steps: Optional[int] = knob(
        None, "Also keep model-only snapshots every N steps (for same-step merges).",
        flags=("--checkpoint-steps",), at_least=1)
    sample_losses_at_checkpoints: bool = knob(False, "Per-sample losses under each kept snapshot too.")

    # --- LoRA (merged into full weights on save)
    lora: bool = knob(False, "Train LoRA adapters (merged into full weights on save).")
    lora_r: int = knob(16, "LoRA rank.", at_least=1)
    lora_alpha: int = knob(32, "LoRA alpha.", at_least=1)
    lora_dropout: float = knob(0.0, "LoRA dropout.", at_least=0, below=1)
    lora_target_modules: Optional[List[str]] = knob(None, "Modules that get adapters (default: LORA_TARGETS).")

    # --- PAFT: L1 penalty l1 * sum |theta - theta_base| over trainable parameters (0: off)
    l1: float = knob(0.0, "PAFT: add L1 * sum |theta - theta_base| to the loss, for a sparse delta.", at_least=0)

    # --- any other trl.SFTConfig argument, passed through unchanged
    sft_args: Optional[Dict[str, Any]] = knob(None, "Other trl.SFTConfig arguments, passed through.")

    def __post_init__(self):
        if self.lora_target_modules is None:
            self.lora_target_modules = list(LORA_TARGETS)
        if self.sft_args is None:
            self.sft_args = {}
        super().__post_init__()

    def cross_checks(self) -> List[Tuple[bool, str]]:
        checks = super().cross_checks() + [
            (not self.sample_losses_at_checkpoints or self.keep_checkpoint_steps,
             "sample_losses_at_checkpoints needs keep_checkpoint_steps"),
            (not (self.l1 and self.lora), "l1 penalises the full-weight delta: it needs lora: false"),
            template_check(self.text_template),
        ]
        reserved = sorted(_RESERVED & set(self.sft_args))
        checks.append((not reserved, f"sft_args: {', '.join(reserved)} are set by sftmerge (use the top-level keys)"))
        if not reserved:
            from trl import SFTConfig

            unknown = sorted(set(self.sft_args) - {f.name for f in fields(SFTConfig)})
            checks.append((not unknown, f"sft_args: {', '.join(unknown)} not an argument of trl.SFTConfig"))
        return checks

    def identity(self) -> Dict[str, Any]:
        """What must match for a rerun to resume or extend a run (K may grow)."""
        d = self.to_dict()
        d.pop("orders")
        return d


def template_check(template: str) -> Tuple[bool, str]:
    """text_template holds {prompt} once and ends with {response} (the completion follows the prompt)."""
    import string

    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return False, f"text_template is not a format string ({e}; write literal braces as {{{{ and }}}})"
    ok = names == ["prompt", "response"] and template.endswith("{response}")
    return ok, ("text_template must hold {prompt} once and end with {response}, and name nothing else "
                f"(got {template!r})")


# Set from the top-level keys above, or by sftmerge itself; not overridable through sft_args.
_RESERVED = {
    "output_dir", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim",
    "max_length", "seed", "data_seed", "bf16", "fp16", "use_cpu", "gradient_checkpointing", "logging_steps",
    "save_steps", "save_strategy", "save_total_limit", "completion_only_loss", "report_to", "packing",
    "train_sampling_strategy", "max_steps", "dataloader_drop_last",
}

KNOWN_KEYS = tuple(f.name for f in fields(SFTRunConfig))


def config_from_dict(raw: Dict[str, Any], where: str = "config", cls=SFTRunConfig):
    """`cls(**raw)` (a run config class, SFTRunConfig by default); unknown keys and bad values: one line."""
    return parse_config(cls, raw, where)


def load_config(path: str | os.PathLike, overrides: Optional[Dict[str, Any]] = None, cls=SFTRunConfig):
    """Read a YAML config; `overrides` (CLI options, None values ignored) win over the file."""
    return read_config(cls, path, overrides)
