"""Logits only where a loss is taken: the positions whose next token is a trained (response) token.

An SFT sample's prompt (chat template, system prompt, question) is most of its tokens, and the
vocabulary projection with its log-softmax over SmolLM2's 49k tokens is a large share of a
CPU training step. Every HF causal LM of transformers 5 takes `logits_to_keep` as a tensor of
sequence positions and applies its own head (with any logit scaling or soft-capping) to those
only; the positions kept are the union over the batch, and the loss is the same sum over the
same (position, target) pairs as the model's own shifted cross-entropy.
"""

from __future__ import annotations

import torch

IGNORE = -100  # the label of a token that is not trained (prompt, padding)


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions t whose next token t+1 is trained in some row of the batch."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(-1)


def response_logits(model, inputs: dict, labels: torch.Tensor, positions: bool = True):
    """(model output, float logits [B, P, V] at the scored positions, their targets [B, P] with
    IGNORE where a row does not train that position); `inputs` are the model's, without labels.
    With `positions` False (a model without `logits_to_keep`) every position's logits are made."""
    if not positions:
        out = model(**inputs, use_cache=False)
        return out, out.logits[:, :-1].float(), labels[:, 1:]
    keep = scored_positions(labels)
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    return out, out.logits.float(), labels[:, keep + 1]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, P], 0 where the target is IGNORE."""
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)
