"""Batched forward passes and greedy decoding on a transformers model (eval/hf_direct.py's engine).

A batch is a list of `Row`s: tokens fed in one pass (a prompt, then optionally a tail of more
tokens), the targets whose log-probs that pass scores, and where generation goes on (after
the prompt). `run_batch` runs each model's passes over the rows, PREFILL_ROWS rows at a time
with a prefix common to all rows run once, joins the passes' KV caches into one batch and
decodes greedily, dropping each row the step it ends; several models (an output ensemble)
decode together on the mean of their log-softmax.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch


@dataclass
class Row:
    """One sequence of a pass: `prompt + tail` is fed; its last n columns predict each target's n tokens."""

    index: int
    prompt: List[int]  # generation goes on after its last token
    tail: List[int]  # more tokens in the same pass, after the prompt (part of a scored continuation)
    targets: List[Tuple[int, List[int]]]  # (request index, scored tokens), all of one length; [] for none


class Model:
    """The transformers model, the id that fills padding, and the name its forward gives the KV cache."""

    def __init__(self, model, pad: Optional[int]):
        self.model, self.pad = model, pad or 0
        self.device = next(self.model.parameters()).device
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed within transformers 5

    @torch.no_grad()
    def __call__(self, cache, **kwargs):
        return self.model(**kwargs, **{self.cache_arg: cache}, use_cache=True).logits


def _scored(row: Row) -> int:
    return len(row.targets[0][1]) if row.targets else 0


def _common_prefix(rows: Sequence[Row]) -> int:
    """Tokens every row begins with (a chat template's system turn), short of the columns each
    row needs logits or a prompt token for."""
    limit = min(min(len(r.prompt) - 1, len(r.prompt) + len(r.tail) - _scored(r)) for r in rows)
    first = rows[0].prompt
    n = 0
    while n < limit and all(r.prompt[n] == first[n] for r in rows):
        n += 1
    return n if len(rows) > 1 else 0


def _layout(rows: Sequence[Row], shared: int, pad: int):
    """After the `shared` prefix: prompts left-padded so that they end in one column, tails
    right-padded after them. The mask and positions cover the prefix too."""
    width_p = max(len(r.prompt) for r in rows) - shared
    width = width_p + max(len(r.tail) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), shared + width, dtype=torch.long)
    mask[:, :shared] = 1
    for i, r in enumerate(rows):
        seq = (r.prompt + r.tail)[shared:]
        start = width_p - (len(r.prompt) - shared)
        ids[i, start:start + len(seq)] = torch.tensor(seq)
        mask[i, shared + start:shared + start + len(seq)] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)[:, shared:], width_p


# Rows per pass before decoding. A pass lays its prompts out to end in one column with their
# tails after them, so it is as wide as its longest prompt plus its longest tail; passes over
# fewer rows of similar length (rows come sorted by length) pad less, and the rows still
# decode as one batch.
PREFILL_ROWS = 25


@dataclass
class _Prefill:
    """One model's pass over a batch: its KV cache of the prompts, the logits of each row's first
    new token, and the targets' summed log-probs."""

    cache: object
    mask: torch.Tensor  # over the prompts' columns (prefix included)
    position: torch.Tensor  # of each prompt's last token
    next_logits: torch.Tensor  # (rows, vocab); empty without generation
    scores: Dict[int, float]


def _prefill(fwd: Model, rows: Sequence[Row], generating: bool) -> _Prefill:
    """Passes over prompts (+ tails), PREFILL_ROWS rows at a time; a prefix common to all rows
    is run once. The passes' caches are then joined into one batch for decoding."""
    import copy

    from transformers import DynamicCache

    prefix = DynamicCache(config=fwd.model.config)
    shared = _common_prefix(rows)
    if shared:
        fwd(prefix, input_ids=torch.tensor([rows[0].prompt[:shared]], device=fwd.device), logits_to_keep=1)
    parts = [_prefill_part(fwd, rows[i:i + PREFILL_ROWS], copy.deepcopy(prefix), shared, generating)
             for i in range(0, len(rows), PREFILL_ROWS)]
    scores = {request: value for part in parts for request, value in part.scores.items()}
    if not generating:
        return _Prefill(None, torch.zeros(0), torch.zeros(0), torch.zeros(0), scores)
    return _joined(parts, shared, scores)


def _prefill_part(fwd: Model, rows: Sequence[Row], cache, shared: int, generating: bool) -> _Prefill:
    """One pass over `rows` after the `shared` prefix already in `cache` (for one row)."""
    if shared:
        cache.batch_repeat_interleave(len(rows))
    ids, mask, positions, width_p = _layout(rows, shared, fwd.pad)
    # Vocabulary logits only where needed: the predictors of the targets, and the prompt's
    # last column (the first generated token).
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        end = width_p + len(r.tail)
        keep[i, end - _scored(r):end] = True
        if generating:
            keep[i, width_p - 1] = True
    ids, mask, positions = ids.to(fwd.device), mask.to(fwd.device), positions.to(fwd.device)
    logits = fwd(cache, input_ids=ids, attention_mask=mask, position_ids=positions,
                 logits_to_keep=keep.to(fwd.device))
    scores, next_logits, at = {}, [], 0
    for i, r in enumerate(rows):
        columns = keep[i].nonzero()[:, 0].tolist()  # the row's kept columns, in the order of `logits`
        block = logits[at:at + len(columns)]
        at += len(columns)
        if r.targets:
            n, end = _scored(r), width_p + len(r.tail)
            first = columns.index(end - n)
            log_probs = torch.log_softmax(block[first:first + n].float(), -1)
            for request, tokens in r.targets:
                scores[request] = float(log_probs.gather(-1, torch.tensor(tokens, device=fwd.device)[:, None]).sum())
        if generating:
            next_logits.append(block[columns.index(width_p - 1)])
    if generating and ids.shape[1] > width_p:
        cache.crop(width_p - ids.shape[1])  # drop the tails: negative = tokens to remove, in every transformers 5
    return _Prefill(cache, mask[:, :shared + width_p], positions[:, width_p - 1],
                    torch.stack(next_logits) if next_logits else logits[:0], scores)


def _joined(parts: Sequence[_Prefill], shared: int, scores: Dict[int, float]) -> _Prefill:
    """The parts' caches and masks as one batch: each part's prompts left-padded (masked columns
    after the shared prefix) to the widest part's width."""
    width = max(p.mask.shape[1] for p in parts)

    def padded(x: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - x.shape[dim]
        if not missing:
            return x
        head, rest = x.narrow(dim, 0, shared), x.narrow(dim, shared, x.shape[dim] - shared)
        gap = list(x.shape)
        gap[dim] = missing
        return torch.cat([head, x.new_zeros(gap), rest], dim=dim)

    cache = parts[0].cache
    for i, layer in enumerate(cache.layers):
        layer.keys = torch.cat([padded(p.cache.layers[i].keys, 2) for p in parts])
        layer.values = torch.cat([padded(p.cache.layers[i].values, 2) for p in parts])
    return _Prefill(cache, torch.cat([padded(p.mask, 1) for p in parts]), torch.cat([p.position for p in parts]),
                    torch.cat([p.next_logits for p in parts]), scores)


def _pick(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The next token of each row: the argmax of one model's logits; of several models (an output
    ensemble), the argmax of the sum (so of the mean) of their log-softmax."""
    if len(logits) == 1:
        return logits[0].argmax(-1)
    return sum(torch.log_softmax(x.float(), dim=-1) for x in logits).argmax(-1)


def run_batch(fwds: Sequence[Model], rows: Sequence[Row], stops, max_new: int):
    """Each model's pass over the batch, then greedy steps on all of them together that drop each
    row the step it ends.

    Returns ({row index: generated tokens}, {request index: summed log-prob of its target, the
    mean over the models})."""
    passes = [_prefill(fwd, rows, stops is not None) for fwd in fwds]
    scores = {request: sum(p.scores[request] for p in passes) / len(passes) for request in passes[0].scores}
    if not stops:
        return {}, scores
    first = passes[0]
    return _greedy(fwds, rows, [p.cache for p in passes], first.mask, first.position,
                   _pick([p.next_logits for p in passes]), stops, max_new), scores


def _greedy(fwds: Sequence[Model], rows, caches, mask, position, token, stops,
            max_new: int) -> Dict[int, List[int]]:
    out = {r.index: [] for r in rows}
    alive = list(range(len(rows)))
    for step in range(max_new):
        stay = []
        for j, (i, t) in enumerate(zip(alive, token.tolist())):
            out[rows[i].index].append(t)
            if not stops.ended(out[rows[i].index]):
                stay.append(j)
        if not stay or step == max_new - 1:
            break
        if len(stay) < len(alive):  # ended rows leave the batch (and the caches)
            keep = torch.tensor(stay, device=token.device)
            for cache in caches:
                cache.batch_select_indices(keep)
            alive = [alive[j] for j in stay]
            mask, position, token = mask[keep], position[keep], token[keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        position = position + 1
        token = _pick([fwd(cache, input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                           logits_to_keep=1)[:, -1] for fwd, cache in zip(fwds, caches)])
    return out


def batches(rows: List[Row], batch_size: int):
    """Rows of similar length together (longest first: a memory problem shows at once), in
    batches of at most `batch_size` and of equal size (100 rows at 64: 50 and 50, not 64 and 36)."""
    rows = sorted(rows, key=lambda r: (-len(r.prompt), -len(r.tail), r.index))
    if not rows:
        return []
    count = -(-len(rows) // batch_size)
    size = -(-len(rows) // max(count, 1))
    return [rows[i:i + size] for i in range(0, len(rows), size)]
