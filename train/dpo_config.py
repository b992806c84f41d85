"""The preference-training config: one YAML file maps 1:1 onto `DPORunConfig`.

The shared fields and their checks come from `TrainRunConfig` (train/common_config.py);
this adds the objective and retunes a few defaults. Read it with
`load_config(path, cls=DPORunConfig)` (train/config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic.dataclasses import dataclass

from sftmerge.train.common_config import RUN_CONFIG, TrainRunConfig, knob, retuned

DEFAULT_DPO_CONFIG = Path(__file__).resolve().parent / "configs" / "dpo_arith.yaml"


@dataclass(config=RUN_CONFIG)
class DPORunConfig(TrainRunConfig):
    """A DPO (or ORPO) run from one base: see train/configs/dpo_arith.yaml."""

    data: str = retuned(TrainRunConfig, "data", "ultrafeedback",
                        "Preference data: arith | ultrafeedback[:DIR] | jsonl:PATH.")
    num_samples: Optional[int] = retuned(TrainRunConfig, "num_samples", None,
                                         "Use the first N preference pairs (arith: how many to generate).")
    data_seed: int = retuned(TrainRunConfig, "data_seed", 0, "Seed of the arith generator and of its wrong steps.")
    output_dir: str = retuned(TrainRunConfig, "output_dir", "runs/paft/dpo", "Model folder the run writes.")
    num_train_epochs: int = retuned(TrainRunConfig, "num_train_epochs", 1)
    learning_rate: float = retuned(TrainRunConfig, "learning_rate", 5e-6)

    # --- the objective
    loss: Literal["dpo", "orpo"] = knob("dpo", "Objective; orpo: TRL's ORPOTrainer (no reference model).")
    beta: float = knob(0.1, "DPO: KL strength; ORPO: weight of the odds-ratio term.", above=0)
