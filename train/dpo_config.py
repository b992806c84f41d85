"""The preference-training config: one YAML file maps 1:1 onto `DPORunConfig`.

Same conventions as `SFTRunConfig` (train/config.py): TRL / transformers field names,
unknown keys and bad values rejected with one line (`load_config(path, cls=DPORunConfig)`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

DEFAULT_DPO_CONFIG = Path(__file__).resolve().parent / "configs" / "dpo_arith.yaml"


@dataclass(config=ConfigDict(extra="forbid", strict=False, validate_assignment=True))
class DPORunConfig:
    """A DPO (or ORPO) run from one base: see train/configs/dpo_arith.yaml."""

    # --- what to train on
    base: str = "models/smollm2-135m-instruct"  # HF id or local folder; the SAME base as the SFT run for PAFT
    data: str = "ultrafeedback"  # arith | ultrafeedback[:DIR] | jsonl:PATH (see sftmerge.data.preference)
    num_samples: Optional[int] = None  # first N preference pairs (arith: how many to generate)
    data_seed: int = 0  # seed of the arith generator and of its wrong steps
    output_dir: str = "runs/paft/dpo"  # the model folder written

    # --- the objective
    loss: Literal["dpo", "orpo"] = "dpo"  # orpo: TRL's ORPOTrainer (no reference model)
    beta: float = 0.1  # DPO: KL strength; ORPO: weight of the odds-ratio term

    # --- optimisation (TRL / transformers names and meanings)
    num_train_epochs: int = 1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0.0  # < 1: a fraction of the total steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    max_length: Optional[int] = 512  # tokens of prompt + answer
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    logging_steps: int = 5

    def __post_init__(self):
        checks = [
            (self.num_train_epochs >= 1, f"num_train_epochs must be at least 1 (got {self.num_train_epochs})"),
            (self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be at least 1"),
            (self.num_samples is None or self.num_samples >= 1, "num_samples must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.beta > 0, f"beta must be > 0 (got {self.beta})"),
            (self.logging_steps >= 1, "logging_steps must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
