"""bf16 computed in software: its GEMMs as fp32 ones, the forward and the backward pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sftmerge.train.bf16_gemm import GEMMS, Bf16GemmsInFp32, bf16_gemms
from sftmerge.train.hardware import emulates_bf16


class _Seen(Bf16GemmsInFp32):
    """The route, noting each GEMM it is handed and that operand's dtype."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            self.seen.append((func, args[-1].dtype))
        return super().__torch_dispatch__(func, types, args, kwargs)


def _operands(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 64, generator=g).to(dtype), torch.randn(64, 8, generator=g).to(dtype)


def test_a_bf16_product_is_an_fp32_gemm_rounded_once():
    a, b = _operands()
    with Bf16GemmsInFp32():
        routed = a @ b
    assert routed.dtype == torch.bfloat16
    assert torch.equal(routed, (a.float() @ b.float()).to(torch.bfloat16))


def test_the_backward_pass_is_routed_too():
    x, w = _operands()
    w.requires_grad_(True)
    mode = _Seen()
    with mode:
        (x @ w).float().square().sum().backward()
    assert len(mode.seen) >= 2 and all(dtype == torch.bfloat16 for _, dtype in mode.seen)  # forward + grad of w
    grad_out = 2 * (x.float() @ w.detach().float()).to(torch.bfloat16).float()
    assert w.grad.dtype == torch.bfloat16
    assert torch.equal(w.grad, (x.float().T @ grad_out.to(torch.bfloat16).float()).to(torch.bfloat16))


def test_other_dtypes_pass_untouched():
    a, b = _operands(torch.float32)
    with Bf16GemmsInFp32():
        out = a @ b
    assert out.dtype == torch.float32 and torch.equal(out, a @ b)


def test_a_layer_agrees_with_torchs_bf16_kernel():
    layer = torch.nn.Linear(64, 8, bias=True).to(torch.bfloat16)
    x, _ = _operands()
    with Bf16GemmsInFp32():
        routed = layer(x)
    plain = layer(x)
    assert routed.dtype == torch.bfloat16
    torch.testing.assert_close(routed, plain, rtol=1e-2, atol=1e-2)  # summation order only


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_no_route_where_nothing_is_emulated(precision):
    assert not emulates_bf16(precision)
    with bf16_gemms(precision):
        assert _get_current_dispatch_mode() is None


@pytest.mark.skipif(not emulates_bf16("bf16"), reason="bf16 is native here: nothing to route")
def test_the_route_is_on_where_bf16_is_emulated():
    with bf16_gemms("bf16"):
        assert isinstance(_get_current_dispatch_mode(), Bf16GemmsInFp32)
