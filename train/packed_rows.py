"""A CPU training batch without padding or repeats: the rows' shared prefix once, the rest packed.

TRL pads a batch to its longest row, and every row of a chat-template batch begins with the same
system turn (SmolLM2's arith samples: 24 shared tokens of 79-112). On a CPU a step costs its
tokens, so here the shared prefix runs once (batch 1), its keys and values serve every row, and
the rows' remaining tokens run as packs of at most PACK_TOKENS tokens, each row at its own
positions with a block-diagonal causal mask (its own tokens and the prefix). The loss is the same
sum over the same (position, target) pairs as the padded batch's; only float summation orders
differ (gradients within about 1e-5 of the largest, as another batch size gives).

Used where the model runs SDPA with full attention in every layer and keeps a KV cache (no
sliding windows, no gradient checkpointing), in one process; anything else takes the padded pass.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from sftmerge.train.forward_args import base_of, cache_arg
from sftmerge.train.response_logits import IGNORE

# Tokens per pack (after the prefix). A pack's attention is dense over its rows, so its cost grows
# with the square of the pack: at 512, under a fifth of the linear layers' FLOPs for SmolLM2-135M,
# and a demo batch ran as fast in packs of 256 as in one; packs of about 140 (two rows) were slower.
PACK_TOKENS = 512


def packable(model) -> bool:
    """Whether `model` (a PEFT model's base is asked) runs packs: SDPA (a boolean 4D mask), every
    layer full attention, a KV cache in training (no gradient checkpointing)."""
    inner = base_of(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"  # renamed within transformers 5
    if getattr(inner, name, False):
        return False
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(config, "sliding_window", None) and not getattr(config, "attention_chunk_size", None)


def _lengths(attention_mask: torch.Tensor) -> Optional[List[int]]:
    """Each row's length when the batch is right-padded (real tokens first), else None."""
    lengths = attention_mask.sum(1)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), columns[None, :] < lengths[:, None]):
        return None
    return lengths.tolist()


def shared_prefix(input_ids: torch.Tensor, labels: torch.Tensor, lengths: List[int]) -> int:
    """Columns every row begins with, short of the first column that predicts a trained token and
    of each row's last token (every row keeps at least one token for its pack)."""
    trained = (labels[:, 1:] != IGNORE).any(0).nonzero()
    limit = min(min(lengths) - 1, int(trained[0]) if len(trained) else input_ids.shape[1])
    same = (input_ids[:, :max(limit, 0)] == input_ids[:1, :max(limit, 0)]).all(0)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else max(limit, 0)


def packs(lengths: List[int], prefix: int, budget: int = PACK_TOKENS) -> List[List[int]]:
    """Rows in batch order, grouped so that each group's tokens after the prefix stay within
    `budget` (a longer row alone)."""
    groups: List[List[int]] = []
    size = 0
    for row, n in enumerate(lengths):
        n -= prefix
        if groups and size + n <= budget:
            groups[-1].append(row)
            size += n
        else:
            groups.append([row])
            size = n
    return groups


def _pack_inputs(input_ids, labels, lengths, rows: List[int], prefix: int):
    """One pack: its token ids [1, T], positions [1, T], boolean mask [1, 1, T, prefix + T], the
    pack columns whose next token is trained, and those tokens."""
    device = input_ids.device
    ids = torch.cat([input_ids[r, prefix:lengths[r]] for r in rows])[None]
    positions = torch.cat([torch.arange(prefix, lengths[r], device=device) for r in rows])[None]
    segment = torch.cat([torch.full((lengths[r] - prefix,), i, device=device) for i, r in enumerate(rows)])
    order = torch.arange(len(segment), device=device)
    own = (segment[:, None] == segment[None, :]) & (order[:, None] >= order[None, :])
    mask = torch.cat([own.new_ones(len(segment), prefix), own], dim=1)[None, None]
    # Column c predicts the next token of its row; a row's last column predicts nothing.
    nxt = torch.cat([labels[r, prefix + 1:lengths[r]] for r in rows])
    last = torch.cat([torch.arange(lengths[r] - prefix, device=device) == lengths[r] - prefix - 1 for r in rows])
    targets = torch.full_like(segment, IGNORE)
    targets[~last] = nxt
    keep = (targets != IGNORE).nonzero().squeeze(-1)
    return ids, positions, mask, keep, targets[keep]


def packed_nll(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               budget: int = PACK_TOKENS) -> Optional[Tuple[torch.Tensor, int]]:
    """(summed NLL of the batch's trained tokens, their count) from the prefix pass and the packs;
    None when the batch is not right-padded or trains no token (the caller takes the padded pass)."""
    from transformers import DynamicCache

    lengths = _lengths(attention_mask)
    if lengths is None or not (labels[:, 1:] != IGNORE).any():
        return None
    prefix = shared_prefix(input_ids, labels, lengths)
    name, kv = cache_arg(model), None
    if prefix:
        cache = DynamicCache()
        model(input_ids=input_ids[:1, :prefix], **{name: cache}, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    total, count = None, 0
    for rows in packs(lengths, prefix, budget):
        ids, positions, mask, keep, targets = _pack_inputs(input_ids, labels, lengths, rows, prefix)
        if not len(keep):
            continue
        cache = DynamicCache(ddp_cache_data=kv) if kv else None
        logits = model(input_ids=ids, position_ids=positions, attention_mask=mask, **{name: cache},
                       use_cache=cache is not None, logits_to_keep=keep).logits[0]
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        total = nll if total is None else total + nll
        count += len(targets)
    return total, count
