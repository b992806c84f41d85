"""The multi-order SFT config: one YAML file maps 1:1 onto `SFTRunConfig`.

Field names follow TRL's `SFTConfig` / transformers' `TrainingArguments` where one
exists (`learning_rate`, `per_device_train_batch_size`, `save_steps`, ...), so a TRL user
reads a config without a glossary. Unknown keys and wrong types are rejected with one
line naming the key. Every field except `orders` is identical for all K orders of a run;
only the data order differs, and it is a function of (`order_seed`, order index, epoch).
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from sftmerge.errors import SftmergeError

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "arith.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(config=ConfigDict(extra="forbid", strict=False, validate_assignment=True))
class SFTRunConfig:
    """Everything that defines a multi-order SFT run (see train/configs/arith.yaml)."""

    # --- what to train on
    base: str = "models/smollm2-135m-instruct"  # HF id or local folder
    data: str = "arith"  # data spec name[:path]: arith, gsm8k, alpaca, code
    num_samples: Optional[int] = None  # first N training pairs (arith: how many to generate)
    data_seed: int = 0  # seed of the arith generator (other sets ignore it)
    output_dir: str = "runs/demo"  # the run folder: RUN/order-k/, RUN/recipes/

    # --- multi-order
    orders: int = 3  # K; the CLI's --orders overrides it
    order_seed: int = 1234  # order k's permutations come from (order_seed, k, epoch)
    order_mode: Literal["sample", "batch"] = "sample"  # batch: fixed batches, only their order permuted
    reshuffle_each_epoch: bool = True  # False: every epoch repeats the first epoch's order

    # --- optimisation (TRL / transformers names and meanings)
    num_train_epochs: int = 2
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0.0  # < 1: a fraction of the total steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    max_length: Optional[int] = 512  # tokens; longer samples are truncated
    seed: int = 42  # everything random except the data order (LoRA init, dropout)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where the hardware has it
    gradient_checkpointing: bool = False

    # --- logging and checkpoints
    logging_steps: int = 5
    save_steps: int = 50  # resume checkpoint every N optimizer steps (only the newest is kept)
    keep_checkpoint_steps: Optional[int] = None  # also keep model-only snapshots every N steps
    sample_losses_at_checkpoints: bool = False  # per-sample losses under each kept snapshot too

    # --- LoRA (merged into full weights on save)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Optional[List[str]] = None  # default: LORA_TARGETS

    # --- PAFT: L1 penalty l1 * sum |theta - theta_base| over trainable parameters (0: off)
    l1: float = 0.0

    # --- any other trl.SFTConfig argument, passed through unchanged
    sft_args: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.lora_target_modules is None:
            self.lora_target_modules = list(LORA_TARGETS)
        if self.sft_args is None:
            self.sft_args = {}
        checks = [
            (self.orders >= 1, f"orders must be at least 1 (got {self.orders})"),
            (self.num_train_epochs >= 1, f"num_train_epochs must be at least 1 (got {self.num_train_epochs})"),
            (self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
            (self.num_samples is None or self.num_samples >= 1, "num_samples must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.save_steps >= 1, "save_steps must be at least 1"),
            (self.logging_steps >= 1, "logging_steps must be at least 1"),
            (self.keep_checkpoint_steps is None or self.keep_checkpoint_steps >= 1,
             "keep_checkpoint_steps must be at least 1"),
            (not self.sample_losses_at_checkpoints or self.keep_checkpoint_steps,
             "sample_losses_at_checkpoints needs keep_checkpoint_steps"),
            (self.l1 >= 0, f"l1 must be >= 0 (got {self.l1})"),
            (not (self.l1 and self.lora), "l1 penalises the full-weight delta: it needs lora: false"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        reserved = _RESERVED & set(self.sft_args)
        if reserved:
            raise ValueError(f"sft_args: {', '.join(sorted(reserved))} are set by sftmerge (use the top-level keys)")
        from trl import SFTConfig

        known = {f.name for f in fields(SFTConfig)}
        unknown = sorted(set(self.sft_args) - known)
        if unknown:
            raise ValueError(f"sft_args: {', '.join(unknown)} not an argument of trl.SFTConfig")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def identity(self) -> Dict[str, Any]:
        """What must match for a rerun to resume or extend a run (K may grow)."""
        d = self.to_dict()
        d.pop("orders")
        return d


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
    """`cls(**raw)` (a pydantic dataclass, SFTRunConfig by default); unknown keys and bad values: one line."""
    if not isinstance(raw, dict):
        raise SftmergeError(f"{where}: must be a YAML mapping of {cls.__name__} keys")
    known = tuple(f.name for f in fields(cls))
    unknown = sorted(set(raw) - set(known))
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, known, n=1, cutoff=0.6) for k in unknown]
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints))
        raise SftmergeError(f"{where}: unknown key(s) {said}")
    try:
        return cls(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise SftmergeError(f"{where}: {loc + ': ' if loc else ''}{msg}") from None


def load_config(path: str | os.PathLike, overrides: Optional[Dict[str, Any]] = None, cls=SFTRunConfig):
    """Read a YAML config; `overrides` (CLI options, None values ignored) win over the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise SftmergeError(f"cannot read config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SftmergeError(f"config {path} is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if isinstance(raw, dict):
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(raw, where=f"config {path}", cls=cls)


def dump_config(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
