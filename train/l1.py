"""PAFT's sparse SFT: an L1 penalty on the delta from the base weights (arXiv 2406.17923).

`penalty = l1 * sum |theta - theta_base|` over the trainable parameters, added to the loss.
The base copy is taken once, in the training dtype, and is the only extra memory: the
autograd function below keeps references to the parameter and its base copy and
recomputes `sign(theta - theta_base)` in backward instead of saving the difference, so a
step allocates one parameter-sized temporary at a time, never a second model.
"""

from __future__ import annotations

from typing import List, Tuple

import torch


class _AbsDelta(torch.autograd.Function):
    """sum |p - b| with gradient sign(p - b) (0 where p == b); b is a constant."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, b)
        return (p.detach() - b).abs().sum(dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, b = ctx.saved_tensors
        return grad.to(p.dtype) * torch.sign(p.detach() - b), None


class L1Delta:
    """Holds the base copy of a model's trainable parameters; `penalty()` is l1 * sum |delta|."""

    def __init__(self, model: torch.nn.Module, l1: float):
        self.l1 = float(l1)
        seen = set()
        self.pairs: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []
        for p in model.parameters():  # tied weights are one parameter: counted once
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self.pairs.append((p, p.detach().clone()))

    def _follow_device(self) -> None:
        # The Trainer moves the model after the copy was taken: move the copy once, too.
        if self.pairs and self.pairs[0][1].device != self.pairs[0][0].device:
            self.pairs = [(p, b.to(p.device)) for p, b in self.pairs]

    def penalty(self) -> torch.Tensor:
        self._follow_device()
        return self.l1 * sum(_AbsDelta.apply(p, b) for p, b in self.pairs)
