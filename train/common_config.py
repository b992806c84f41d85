"""The settings every training run shares, declared once; SFT and DPO configs extend them.

Each field is declared with `knob(default, help, ...)`: its help text, its extra CLI
spellings and its bounds sit next to it. The YAML keys, the checks, and the CLI
override flags (generated from the fields by sftmerge/cli/config_options.py) all come
from these declarations, so their names, help and defaults cannot drift apart. This
follows mergekit's `MergeOptions` and TRL's configs, which extend `TrainingArguments`.
Field names follow TRL / transformers (`learning_rate`, `per_device_train_batch_size`,
...). Unknown keys and wrong types or values are rejected with one line naming the key.
"""

from __future__ import annotations

import os
import typing
from dataclasses import asdict, dataclass as plain_dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from sftmerge.errors import SftmergeError

RUN_CONFIG = ConfigDict(extra="forbid", strict=False, validate_assignment=True)


def knob(default, help: str, *, flags: Sequence[str] = (), at_least=None, above=None, below=None):
    """A config field: default, one-line help, extra CLI spellings (e.g. `--epochs`), bounds."""
    return field(default=default, metadata={"help": help, "flags": tuple(flags), "at_least": at_least,
                                            "above": above, "below": below})


def retuned(cls, name: str, default, help: Optional[str] = None):
    """Field `name` of `cls` with another default (and help), its flags and bounds kept."""
    meta = dict(cls.__dataclass_fields__[name].metadata)
    if help is not None:
        meta["help"] = help
    return field(default=default, metadata=meta)


@dataclass(config=RUN_CONFIG)
class TrainRunConfig:
    """What every training run (SFT, DPO) has: base, data, optimisation, logging, checkpoints."""

    # --- what to train on
    base: str = knob("models/smollm2-135m-instruct", "Base model: a local HF folder or a Hub id.")
    data: str = knob("arith", "Training data spec name[:path]: arith, gsm8k, alpaca, code.")
    num_samples: Optional[int] = knob(None, "Use the first N training pairs (arith: how many to generate).",
                                      at_least=1)
    data_seed: int = knob(0, "Seed of the arith generator (other data sets ignore it).")
    output_dir: str = knob("runs/demo", "Folder the run writes.", flags=("--out",))

    # --- optimisation (TRL / transformers names and meanings)
    num_train_epochs: int = knob(2, "Epochs over the training data.", flags=("--epochs",), at_least=1)
    per_device_train_batch_size: int = knob(8, "Samples per device and forward pass.", at_least=1)
    gradient_accumulation_steps: int = knob(1, "Forward passes per optimizer step.", at_least=1)
    learning_rate: float = knob(5e-5, "Peak learning rate.", above=0)
    lr_scheduler_type: str = knob("linear", "transformers learning-rate schedule (linear, cosine, constant, ...).")
    warmup_steps: float = knob(0.0, "Warmup steps; below 1: a fraction of the total steps.", at_least=0)
    weight_decay: float = knob(0.0, "AdamW weight decay.", at_least=0)
    max_grad_norm: float = knob(1.0, "Gradient clipping norm (0: no clipping).", at_least=0)
    optim: str = knob("adamw_torch", "transformers optimizer name.")
    max_length: Optional[int] = knob(512, "Tokens per sample; longer samples are truncated.", at_least=1)
    seed: int = knob(42, "Seed of everything random except the data order (LoRA init, dropout).")
    precision: Literal["auto", "bf16", "bf16-mixed", "fp16", "fp32"] = knob(
        "auto", "Training precision; bf16: bf16 weights; bf16-mixed, fp16: fp32 master weights under autocast; "
        "auto: bf16 where the hardware has it, else fp16 on GPUs, fp32 on CPUs.")
    allow_emulated_bf16: bool = knob(False, "Train in bf16 on a CPU without bf16 instructions (AVX512-BF16, "
                                            "AMX), its GEMMs as fp32 ones: about 1.2x slower than fp32, for "
                                            "experiments on the precision.")
    gradient_checkpointing: bool = knob(False, "Recompute activations in backward to save memory "
                                               "(activation checkpointing).")

    # --- logging and resume checkpoints
    logging_steps: int = knob(5, "Log the loss every N optimizer steps.", at_least=1)
    save_steps: int = knob(50, "Resume checkpoint every N optimizer steps (only the newest is kept).", at_least=1)

    def __post_init__(self):
        for ok, message in self.bound_checks() + self.cross_checks():
            if not ok:
                raise ValueError(message)

    def bound_checks(self) -> List[Tuple[bool, str]]:
        """The bounds declared with `knob`, as (holds, message)."""
        checks = []
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if meta.get("at_least") is not None:
                low = meta["at_least"]
                said = f"at least {low}" if isinstance(value, int) else f">= {low}"
                checks.append((value >= low, f"{f.name} must be {said} (got {value})"))
            if meta.get("above") is not None:
                checks.append((value > meta["above"], f"{f.name} must be > {meta['above']} (got {value})"))
            if meta.get("below") is not None:
                checks.append((value < meta["below"], f"{f.name} must be < {meta['below']} (got {value})"))
        return checks

    def cross_checks(self) -> List[Tuple[bool, str]]:
        """Rules beyond one field's bounds (subclasses extend them): names transformers must know."""
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        schedules, optimizers = [s.value for s in SchedulerType], [o.value for o in OptimizerNames]
        return [
            (self.lr_scheduler_type in schedules,
             f"lr_scheduler_type {self.lr_scheduler_type!r} is not a transformers schedule ({', '.join(schedules)})"),
            (self.optim in optimizers, f"optim {self.optim!r} is not a transformers optimizer name"),
        ]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- YAML

def parse_config(cls, raw: Dict[str, Any], where: str = "config"):
    """`cls(**raw)`; unknown keys and bad values: one line."""
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


def read_config(cls, path: str | os.PathLike, overrides: Optional[Dict[str, Any]] = None):
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
    return parse_config(cls, raw, where=f"config {path}")


def dump_config(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- CLI description

@plain_dataclass(frozen=True)
class Knob:
    """One scalar field as a command-line override: what the CLI generator needs to know."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    flags: Tuple[str, ...]
    choices: Optional[Tuple[str, ...]] = None


def knobs(cls, exclude: Sequence[str] = ()) -> List[Knob]:
    """The fields of `cls` a command line can set (scalars; lists and mappings only in YAML)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in exclude:
            continue
        kind, choices = hints[f.name], None
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is Literal:
            choices = tuple(typing.get_args(kind))
            kind = str
        if kind not in (int, float, str, bool):
            continue
        meta = f.metadata
        out.append(Knob(f.name, kind, f.default, meta.get("help", ""), tuple(meta.get("flags", ())), choices))
    return out
