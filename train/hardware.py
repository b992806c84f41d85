"""What the machine offers: accelerate's process state, and the training precision it supports.

Precisions (the config's `precision`):

| value | weights loaded in | autocast | fp32 master weights |
|---|---|---|---|
| fp32 | float32 | - | - (the weights are fp32) |
| bf16 | bfloat16 | bf16 | no: AdamW updates the bf16 weights |
| bf16-mixed | float32 | bf16 | yes (the fp32 weights are the master) |
| fp16 | float32 | fp16 + loss scaling | yes (fp16 weights cannot be trained with a scaler) |
| auto | bf16 where the hardware has it, else fp16 on older GPUs, fp32 on CPUs | | |
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from sftmerge.errors import SftmergeError

BF16_PRECISIONS = ("bf16", "bf16-mixed")
# bf16 training computed in software against fp32, one step of SmolLM2-135M (make bench-bf16).
EMULATED_SLOWER = "1.2x"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_bf16() -> bool:
    """Does the device training runs on compute in bf16 natively (a GPU that supports it, or such a CPU)?"""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def process_state():
    """accelerate's process state; on a machine without CUDA, CPU processes (gloo under torchrun)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def resolve_precision(precision: str) -> str:
    """auto: bf16 where the hardware has it; else fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if has_bf16():
        return "bf16"
    return "fp16" if torch.cuda.is_available() else "fp32"


def check_precision(precision: str, allow_emulated: bool = False) -> None:
    """One line, before anything is loaded, for a precision the hardware cannot train in. A CPU
    without bf16 instructions computes bf16 in software (train/bf16_gemm.py), slower than fp32 and
    no more precise: only when asked (`allow_emulated_bf16`)."""
    if precision not in BF16_PRECISIONS or has_bf16():
        return
    if torch.cuda.is_available():
        raise SftmergeError(f"precision {precision} needs bf16 hardware; this GPU has none (use precision: auto "
                            "or fp16)")
    if not allow_emulated:
        raise SftmergeError(f"precision {precision} needs bf16 hardware; this CPU (no AVX512-BF16 or AMX) has none "
                            "(use precision: auto or fp32, or allow_emulated_bf16: true to train about "
                            f"{EMULATED_SLOWER} slower)")


def emulates_bf16(precision: str) -> bool:
    """Is `precision` bf16 on a CPU that computes bf16 in software (no AVX512-BF16 or AMX)?"""
    return precision in BF16_PRECISIONS and not torch.cuda.is_available() and not has_bf16()


def emulation_note(precision: str) -> Optional[str]:
    """The line a new run prints before it trains bf16 in software (its GEMMs as fp32 ones:
    train/bf16_gemm.py); None where nothing is emulated."""
    if not emulates_bf16(precision):
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"note: precision {precision} is computed in software on this CPU (torch: {capability}; no "
            f"AVX512-BF16 or AMX), its matrix products as fp32 GEMMs: training is about {EMULATED_SLOWER} "
            "slower than fp32 (docs/train.md)")


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype the base is loaded in for a resolved precision: bf16 only for pure bf16 training;
    every other precision keeps fp32 weights (the master copy under autocast)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32
