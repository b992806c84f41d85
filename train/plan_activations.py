"""Activation memory of a Llama-style decoder for one per-device batch, in bytes.

Counted per token, from the tensors a block saves for its backward pass (transformers'
Llama code, a fused attention kernel such as FlashAttention or SDPA, so no seq x seq
scores are kept):

* attention: the RMSNorm's input (residual dtype) and its fp32 normalised copy, the
  q/k/v input, q/k/v outputs, rotated q/k, the attention output -> a(4h + 3kv) + (r + 4)h
* MLP: the RMSNorm as above, the gate/up input, gate and up outputs, SiLU(gate), the
  product fed to down_proj -> a(h + 4i) + (r + 4)h

(a: compute dtype bytes, r: residual-stream bytes, h: hidden, kv: KV width, i: MLP width.)
With activation checkpointing each block keeps only its input (r * h per token) and one
block's activations are rebuilt during the backward pass. Either way, the backward pass
needs about one block's activations again for their gradients, and the loss holds the
logits in the compute dtype plus two fp32 copies (upcast, log-softmax / its gradient).
"""

from __future__ import annotations

from sftmerge.train.plan_model import Architecture


def block_bytes_per_token(arch: Architecture, a: int, r: int) -> int:
    """What one decoder block saves for backward, per token."""
    h, kv, i = arch.hidden, arch.kv_width, arch.intermediate
    norms = 2 * (r + 4) * h
    attention = a * (4 * h + 3 * kv)
    mlp = a * (h + 4 * i)
    return norms + attention + mlp


def activation_bytes(arch: Architecture, batch: int, max_length: int, a: int, r: int,
                     checkpointing: bool) -> int:
    """Peak activation bytes of one forward + backward on `batch` sequences of `max_length` tokens."""
    tokens = batch * max_length
    block = block_bytes_per_token(arch, a, r) * tokens
    if checkpointing:
        kept = arch.layers * r * arch.hidden * tokens + block  # block inputs + one rebuilt block
    else:
        kept = arch.layers * block
    backward_scratch = block  # gradients of one block's activations
    logits = tokens * arch.vocab * (a + 4 + 4)
    return kept + backward_scratch + logits
