"""The distribution strategy a training process runs under, and what each one supports.

`accelerate launch` tells its processes the strategy through the environment
(ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED); a config can also ask for it through
`sft_args` (transformers' `fsdp` / `deepspeed` arguments). Under FSDP and DeepSpeed the
model's parameters are shards: whatever reads whole parameters must gather them (the
saved model and the snapshots do, collectively) or be refused before training starts.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

from sftmerge.errors import SftmergeError

SHARDED = ("fsdp", "deepspeed")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def sharding(config) -> Optional[str]:
    """"fsdp", "deepspeed", or None (one process, or DDP: every process holds whole parameters)."""
    extra = getattr(config, "sft_args", None) or {}
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or extra.get("deepspeed"):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP") or extra.get("fsdp"):
        return "fsdp"
    return None


def check_strategy(config) -> None:
    """One line, before anything is loaded or written, for a combination sharding does not support.

    The L1 term keeps a copy of each whole base parameter and is added to every process's
    loss; with sharded parameters both would be wrong (a rank's copy would not match its
    shard), so it runs under DDP or on one process only. LoRA adapters are merged into the
    whole weights by the main process alone, which FSDP's shards do not allow.
    """
    strategy = sharding(config)
    if strategy and getattr(config, "l1", 0):
        raise SftmergeError(f"l1 with {strategy} is not supported (the L1 term needs whole parameters on every "
                            "process): train it with DDP or on one process")
    if strategy == "fsdp" and getattr(config, "lora", False):
        raise SftmergeError("lora with fsdp is not supported (the adapters are merged into whole weights on the "
                            "main process): train it with DDP or on one process")
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise SftmergeError("deepspeed was asked for but is not installed here: pip install deepspeed "
                            "(on the GPU machine), or launch with ddp.yaml or fsdp.yaml")
