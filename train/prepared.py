"""A finished run's training dataset exactly as its trainer saw it (tokens and loss mask).

The run's config.yaml records everything that decides the prepared rows (data spec,
sample count, seed, base tokenizer, max_length, format and text template). Rather than re-implement TRL's chat
templating and completion masking, the same SFTTrainer is built with the same
arguments and its prepared `train_dataset` is taken; nothing is trained.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from sftmerge.data.pairs import Pair, load_pairs
from sftmerge.errors import SftmergeError
from sftmerge.io.layout import RunLayout
from sftmerge.train.config import SFTRunConfig, load_config


def run_config(run: Path) -> SFTRunConfig:
    path = RunLayout(run).config
    if not path.is_file():
        raise SftmergeError(f"{run} is not a training run (no {path.name})")
    return load_config(path)


def prepared_dataset(config: SFTRunConfig, pairs: Optional[List[Pair]] = None) -> Tuple[List[Pair], object]:
    """(pairs, prepared dataset with input_ids and labels), row i = pair i, as in training.

    `pairs` default to the run's training pairs; others (held-out ones) are prepared alike.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from sftmerge.train.trainer_inputs import sft_args, training_dataset

    if pairs is None:
        pairs = load_pairs(config.data, "train", config.num_samples, config.data_seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="sftmerge-prepare-") as tmp:
        trainer = SFTTrainer(model=model, args=sft_args(config, Path(tmp), "fp32"),
                             train_dataset=training_dataset(config, pairs), processing_class=tokenizer)
    dataset = trainer.train_dataset
    if len(dataset) != len(pairs):
        raise SftmergeError(f"{len(pairs)} pairs became {len(dataset)} prepared rows")
    return pairs, dataset
