"""bf16 training on a CPU without bf16 instructions: its matrix products done as fp32 GEMMs.

There torch's own kernel for a bf16 matrix product is a slow generic loop: in one training step
of SmolLM2-135M on an AVX2 CPU, `aten::mm` took 98% of the time, 14x-18x an fp32 step's. The
hardware kernels it stands in for accumulate in fp32 and round the result to bf16 once, and so
does an fp32 GEMM of the (exactly widened) bf16 operands: 99.98% of its elements are bitwise
equal to torch's bf16 kernel's, the rest differ by summation order. Everything else (weights,
activations, gradients, optimizer moments) stays bf16; only the products run at fp32's speed.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sftmerge.train.hardware import emulates_bf16

_aten = torch.ops.aten
# What linear layers, attention's matmuls and their backward passes reach below autograd.
GEMMS = frozenset({_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default})


def _is_cpu_bf16(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 and x.device.type == "cpu"


class Bf16GemmsInFp32(TorchDispatchMode):
    """Routes CPU bf16 GEMMs through fp32 ones, rounding each result to bf16 once. A dispatch
    mode sits below autograd, so the backward pass's products are routed too."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMMS and any(_is_cpu_bf16(a) for a in args):
            wide = [a.float() if _is_cpu_bf16(a) else a for a in args]
            return func(*wide, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


@contextmanager
def bf16_gemms(precision: str):
    """Around training: the fp32 route where `precision` is bf16 computed in software, else nothing."""
    with Bf16GemmsInFp32() if emulates_bf16(precision) else nullcontext():
        yield
