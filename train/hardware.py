"""What the machine offers: accelerate's process state, and the training precision it supports."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def process_state():
    """accelerate's process state; on a machine without CUDA, CPU processes (gloo under torchrun)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def resolve_precision(precision: str) -> str:
    """auto: bf16 where the hardware has it; else fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"
