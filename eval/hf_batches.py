"""Batched forward passes and greedy decoding on a transformers model (eval/hf_direct.py's engine).

A batch is a list of `Row`s: tokens fed in one pass (a prompt, then optionally a tail of more
tokens), the targets whose log-probs that pass scores, and where generation goes on (after
the prompt). `run_batch` runs each model's passes over the rows, PREFILL_ROWS rows at a time
with a prefix common to all rows run once, joins the passes' KV caches into one batch and
decodes greedily, dropping each row the step it ends; several models (an output ensemble)
decode together on the mean of their log-softmax.

A tail that is the reference answer drafts the answer: the pass has the greedy pick after each
of its tokens, so the answer's tokens up to where it leaves the reference come from the pass
and only the rest from decoding steps (`_drafted`). Decoding writes into KV buffers with room
for the new tokens (`_RoomyLayer`) instead of copying the cache at every step. Neither changes
a computed value's formula; the drafted picks come from the pass's batched products rather than
one-token steps, so they may differ from stepwise logits in the last bits, as logits from
another batch size do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from transformers.cache_utils import DynamicLayer

from sftmerge.train.forward_args import cache_arg


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
        self.cache_arg = cache_arg(self.model)

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
class _Pass:
    """One model's pass over a part of the batch: its KV cache of the prompts and tails, their
    mask and positions, and the targets' summed log-probs; when generating, each row's logits
    from its prompt's last column to its end (the greedy picks after the prompt and after each
    tail token)."""

    cache: object
    mask: torch.Tensor  # over every column, the prefix included
    positions: torch.Tensor  # of the columns after the prefix
    width_p: int  # columns of the prompts after the prefix; the tails follow
    drafts: List[torch.Tensor]  # per row (vocabulary logits, one row per column); [] without generation
    scores: Dict[int, float]


@dataclass
class _Part:
    """Rows' KV cache ready to decode from: mask over its columns, position of each row's last token."""

    cache: object
    mask: torch.Tensor
    position: torch.Tensor


def _prefix(fwd: Model, rows: Sequence[Row], shared: int):
    """A KV cache of the `shared` tokens every row begins with, run once (for one row)."""
    from transformers import DynamicCache

    prefix = DynamicCache(config=fwd.model.config)
    if shared:
        fwd(prefix, input_ids=torch.tensor([rows[0].prompt[:shared]], device=fwd.device), logits_to_keep=1)
    return prefix


def _prefill_part(fwd: Model, rows: Sequence[Row], cache, shared: int, generating: bool) -> _Pass:
    """One pass over `rows` after the `shared` prefix already in `cache` (for one row)."""
    if shared:
        cache.batch_repeat_interleave(len(rows))
    ids, mask, positions, width_p = _layout(rows, shared, fwd.pad)
    # Vocabulary logits only where needed: the predictors of the targets and, when generating,
    # every column from the prompt's last one (the first generated token, then the draft).
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        end = width_p + len(r.tail)
        keep[i, end - _scored(r):end] = True
        if generating:
            keep[i, width_p - 1:end] = True
    ids, mask, positions = ids.to(fwd.device), mask.to(fwd.device), positions.to(fwd.device)
    logits = fwd(cache, input_ids=ids, attention_mask=mask, position_ids=positions,
                 logits_to_keep=keep.to(fwd.device))
    scores, drafts, at = {}, [], 0
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
            drafts.append(block[columns.index(width_p - 1):])
    return _Pass(cache, mask, positions, width_p, drafts, scores)


def _drafted(passes: Sequence[_Pass], rows: Sequence[Row], stops, max_new: int,
             out: Dict[int, List[int]]) -> List[Optional[int]]:
    """Each row's first greedy tokens from the pass alone. A row's tail is the reference answer
    that follows its prompt; where the greedy pick after the prompt is the tail's first token,
    the pass has already computed the next pick (after that token), and so on: the picks up to
    the first one that leaves the tail are the tokens step-by-step decoding would give, without
    its steps (a third of a trained SmolLM2-135M's arith answer). They go to `out`; returns per
    row how many tail tokens stay in the cache, None for a row that has ended."""
    kept: List[Optional[int]] = []
    for i, r in enumerate(rows):
        picks = _pick([p.drafts[i] for p in passes]).tolist()
        n = 0
        while n < len(r.tail) and picks[n] == r.tail[n]:
            n += 1
        tokens = out[r.index] = []
        ended = False
        for t in picks[:n + 1]:
            tokens.append(t)
            ended = stops.ended(tokens) or len(tokens) >= max_new
            if ended:
                break
        kept.append(None if ended else n)
    return kept


def _trimmed(p: _Pass, kept: Sequence[Optional[int]], shared: int) -> _Part:
    """The pass's cache without the tail tokens no row keeps, masked where a row keeps fewer."""
    n = [k or 0 for k in kept]
    width = shared + p.width_p + max(n, default=0)
    if p.mask.shape[1] > width:
        p.cache.crop(width - p.mask.shape[1])  # negative = tokens to remove, in every transformers 5
    mask = p.mask[:, :width].clone()
    for i, k in enumerate(n):
        mask[i, shared + p.width_p + k:] = 0
    return _Part(p.cache, mask, p.positions[:, p.width_p - 1] + torch.tensor(n, device=p.positions.device))


def _joined(parts: Sequence[_Part], shared: int, room: int) -> _Part:
    """The parts' caches and masks as one batch: each part's columns left-padded (masked columns
    after the shared prefix) to the widest part's width, with `room` for as many decoded tokens."""
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
        keys = torch.cat([padded(p.cache.layers[i].keys, 2) for p in parts])
        values = torch.cat([padded(p.cache.layers[i].values, 2) for p in parts])
        if type(layer) is DynamicLayer:
            cache.layers[i] = _RoomyLayer(keys, values, room)
        else:  # another kind (a sliding window): as it was
            layer.keys, layer.values = keys, values
    return _Part(cache, torch.cat([padded(p.mask, 1) for p in parts]), torch.cat([p.position for p in parts]))


class _RoomyLayer(DynamicLayer):
    """A joined batch's KV cache layer with room for the decoded tokens. transformers' DynamicLayer
    copies the whole cache at every decoding step (torch.cat), 9% of a CPU evaluation of
    SmolLM2-135M; here keys and values are views of buffers `room` tokens longer, a step writes
    its token in place, and only dropping rows copies. The values, so the results, are the same."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.is_initialized, self.device, self.length = True, keys.device, keys.shape[2]
        self._keys, self._values = (x.new_empty((*x.shape[:2], x.shape[2] + room, x.shape[3])) for x in (keys, values))
        self._keys[:, :, :self.length], self._values[:, :, :self.length] = keys, values
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        if self.length + new > self._keys.shape[2]:  # out of room: grow (not in `_greedy`)
            self._keys, self._values = (torch.cat([b, b.new_empty((*b.shape[:2], new, b.shape[3]))], dim=2)
                                        for b in (self._keys, self._values))
        self._keys[:, :, self.length:self.length + new] = key_states
        self._values[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        self.length -= abs(tokens_to_remove)
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys, self._values = (b.repeat_interleave(repeats, dim=0) for b in (self._keys, self._values))
        self._view()


def _pick(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The next token of each row: the argmax of one model's logits; of several models (an output
    ensemble), the argmax of the sum (so of the mean) of their log-softmax."""
    if len(logits) == 1:
        return logits[0].argmax(-1)
    return sum(torch.log_softmax(x.float(), dim=-1) for x in logits).argmax(-1)


def run_batch(fwds: Sequence[Model], rows: Sequence[Row], stops, max_new: int):
    """Each model's passes over the batch, PREFILL_ROWS rows at a time, then greedy steps on all
    of them together that drop each row the step it ends.

    Returns ({row index: generated tokens}, {request index: summed log-prob of its target, the
    mean over the models})."""
    import copy

    generating = stops is not None
    shared = _common_prefix(rows)
    prefixes = [_prefix(fwd, rows, shared) for fwd in fwds]
    scores: List[Dict[int, float]] = [{} for _ in fwds]
    parts: List[List[_Part]] = [[] for _ in fwds]
    out: Dict[int, List[int]] = {}
    kept: List[Optional[int]] = []
    for start in range(0, len(rows), PREFILL_ROWS):
        chunk = rows[start:start + PREFILL_ROWS]
        passes = [_prefill_part(fwd, chunk, copy.deepcopy(prefix), shared, generating)
                  for fwd, prefix in zip(fwds, prefixes)]
        for s, p in zip(scores, passes):
            s.update(p.scores)
        if generating:
            chunk_kept = _drafted(passes, chunk, stops, max_new, out)
            kept += chunk_kept
            for own, p in zip(parts, passes):
                own.append(_trimmed(p, chunk_kept, shared))
        del passes
    mean = {request: sum(s[request] for s in scores) / len(scores) for request in scores[0]}
    alive = [j for j, k in enumerate(kept) if k is not None]
    if not generating or not alive:
        return out, mean
    joined = [_joined(own, shared, max_new) for own in parts]
    first = joined[0]
    token = torch.tensor([out[rows[j].index][-1] for j in range(len(rows))], device=first.mask.device)
    return _greedy(fwds, [rows[j].index for j in range(len(rows))], [p.cache for p in joined], first.mask,
                   first.position, token, alive, out, stops, max_new), mean


def _greedy(fwds: Sequence[Model], index: Sequence[int], caches, mask, position, token, alive: List[int],
            out: Dict[int, List[int]], stops, max_new: int) -> Dict[int, List[int]]:
    """Greedy steps on the joined caches (batch row j is row `index[j]`) for the `alive` rows:
    each feeds its last token in `out` and appends the pick, until it ends or has max_new tokens."""
    batch = list(range(len(index)))  # the rows in the caches
    while alive:
        if len(alive) < len(batch):  # ended rows leave the batch (and the caches)
            where = {j: n for n, j in enumerate(batch)}
            keep = torch.tensor([where[j] for j in alive], device=token.device)
            for cache in caches:
                cache.batch_select_indices(keep)
            mask, position, token, batch = mask[keep], position[keep], token[keep], alive
        mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)
        position = position + 1
        token = _pick([fwd(cache, input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                           logits_to_keep=1)[:, -1] for fwd, cache in zip(fwds, caches)])
        alive = []
        for j, t in zip(batch, token.tolist()):
            tokens = out[index[j]]
            tokens.append(t)
            if not stops.ended(tokens) and len(tokens) < max_new:
                alive.append(j)
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
