"""What a TRL trainer gets from a run config: its arguments, and the dataset in the run's format
(chat: the tokenizer's chat template; text: the config's text_template)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import torch

from sftmerge.data.pairs import Pair
from sftmerge.train.config import SFTRunConfig


def common_trainer_args(config, output_dir: Path, precision: str) -> Dict:
    """The TRL/transformers arguments that sftmerge's run configs (SFT, DPO) share, by the same names."""
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision in ("bf16", "bf16-mixed"),  # pure bf16 weights are cast no further by autocast
        fp16=precision == "fp16",
        logging_steps=config.logging_steps,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        # Always by its current name: TRL's configs default the old alias `gradient_checkpointing`
        # to True, which transformers takes (with a warning) whenever the new name is unset.
        activation_checkpointing=config.gradient_checkpointing,
    )


def checkpoint_args(config) -> Dict:
    """Resume checkpoints every `save_steps` optimizer steps, only the newest kept (SFT and DPO alike)."""
    return dict(save_strategy="steps", save_steps=config.save_steps, save_total_limit=1)


def sft_args(config: SFTRunConfig, output_dir: Path, precision: str):
    from trl import SFTConfig

    return SFTConfig(
        **common_trainer_args(config, output_dir, precision),
        **checkpoint_args(config),
        completion_only_loss=True,
        packing=False,
        **config.sft_args,
    )


def to_chat_dataset(pairs: Sequence[Pair]):
    """TRL's conversational prompt-completion format: loss on the completion only."""
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": p.prompt}],
         "completion": [{"role": "assistant", "content": p.response}]}
        for p in pairs
    ])


def to_text_dataset(pairs: Sequence[Pair], template: str):
    """TRL's plain prompt-completion format from `template` ("... {prompt} ... {response}"):
    the prompt is the text before {response}, loss on the response (TRL appends the EOS token).
    Spaces just before {response} go with the response, as a tokenizer joins them to its first word."""
    from datasets import Dataset

    head = template[: -len("{response}")]
    stem = head.rstrip(" ")
    gap = head[len(stem):]
    return Dataset.from_list([
        {"prompt": stem.format(prompt=p.prompt), "completion": gap + p.response} for p in pairs
    ])


def training_dataset(config: SFTRunConfig, pairs: Sequence[Pair]):
    """The dataset an SFT run trains on, in the config's format."""
    if config.format == "text":
        return to_text_dataset(pairs, config.text_template)
    return to_chat_dataset(pairs)
