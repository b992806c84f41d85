"""The HF backend's greedy generation and continuation scoring, straight on the transformers model.

lm-eval's HFLM keeps every sequence of a batch running until the batch's last one stops,
scores continuations over the whole vocabulary at every position of context and
continuation, and a task that wants both an answer and the reference's loss for one prompt
pays for the prompt twice. Here, on HFLM's own loaded model and with its tokenization
(`lm.tok_encode`, so the model sees exactly the tokens HFLM would give it):

- greedy generation drops each sequence from the batch the step it ends (an EOS id of the
  model's generation config or of the tokenizer, or a stop string found as HFLM looks for
  it), batches hold prompts of similar length, and the text is HFLM's: decoded without
  special tokens, cut at the first stop string;
- scoring computes vocabulary logits only where a continuation token is scored;
- `generate_and_score` runs each prompt with its reference continuation once: the score
  comes from that pass, and generation goes on from the same pass's cache of the prompt;
- an output ensemble's members (eval/ensemble.py) run the same way, each with its own pass and
  cache, decoding together on the mean of their log-softmax, so each member's scores are those
  of its own evaluation.

Scores follow lm-eval's `loglikelihood`, including its split of context and continuation:
trailing whitespace of the context is scored as part of the continuation. Sampling, and a
model whose generation config changes greedy decoding (a repetition penalty, ...), go
through lm-eval instead (`direct_greedy_ok`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from sftmerge.errors import SftmergeError

# Generation-config fields under which HF's greedy `generate` is no longer the plain argmax.
_GREEDY_CHANGERS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                    "min_length": 0, "min_new_tokens": 0, "suppress_tokens": None, "begin_suppress_tokens": None,
                    "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
                    "exponential_decay_length_penalty": None, "num_beams": 1, "penalty_alpha": None,
                    "dola_layers": None, "guidance_scale": None}


def direct_greedy_ok(model) -> bool:
    """Is HF's greedy decoding of this model the plain argmax this module does?"""
    config = model.generation_config
    return all(getattr(config, k, None) in (None, neutral) for k, neutral in _GREEDY_CHANGERS.items())


def encode_pair(lm, context: str, continuation: str) -> Tuple[List[int], List[int]]:
    """(context tokens, continuation tokens) as lm-eval's loglikelihood splits them."""
    if not context:
        return [lm.prefix_token_id], lm.tok_encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = lm.tok_encode(context + continuation)
    ctx = lm.tok_encode(context)
    return ctx, whole[len(ctx):]


@dataclass
class _Row:
    """One sequence of a pass: `prompt + tail` is fed; its last n columns predict each target's n tokens."""

    index: int
    prompt: List[int]  # generation goes on after its last token
    tail: List[int]  # more tokens in the same pass, after the prompt (part of a scored continuation)
    targets: List[Tuple[int, List[int]]]  # (request index, scored tokens), all of one length; [] for none


class _Stops:
    """When a sequence ends: an EOS id, or a stop string in its newest tokens (HFLM's test)."""

    def __init__(self, lm, until: Sequence[str]):
        self.tok = lm.tokenizer
        eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
        self.strings = [s for s in dict.fromkeys([*until, eos]) if s]  # HFLM adds the EOS text to `until`
        ids = lm.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
        self.ids = {int(i) for i in [*ids, lm.eot_token_id] if i is not None}
        # HFLM looks back the stop string's token count + 2 (it may come in another tokenization).
        self.lookback = max(len(self.tok.encode(s, add_special_tokens=False)) + 2 for s in self.strings) \
            if self.strings else 0

    def ended(self, generated: List[int]) -> bool:
        if generated[-1] in self.ids:
            return True
        if not self.strings:
            return False
        tail = self.tok.decode(generated[-self.lookback:])
        return any(s in tail for s in self.strings)

    def text(self, generated: List[int]) -> str:
        text = self.tok.decode(generated, skip_special_tokens=True)
        for s in self.strings:
            text = text.split(s)[0]
        return text


class _Model:
    """The transformers model, the id that fills padding, and the name its forward gives the KV cache."""

    def __init__(self, model, pad: Optional[int]):
        self.model, self.pad = model, pad or 0
        self.device = next(self.model.parameters()).device
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed within transformers 5

    @torch.no_grad()
    def __call__(self, cache, **kwargs):
        return self.model(**kwargs, **{self.cache_arg: cache}, use_cache=True).logits


def _scored(row: _Row) -> int:
    return len(row.targets[0][1]) if row.targets else 0


def _common_prefix(rows: Sequence[_Row]) -> int:
    """Tokens every row begins with (a chat template's system turn), short of the columns each
    row needs logits or a prompt token for."""
    limit = min(min(len(r.prompt) - 1, len(r.prompt) + len(r.tail) - _scored(r)) for r in rows)
    first = rows[0].prompt
    n = 0
    while n < limit and all(r.prompt[n] == first[n] for r in rows):
        n += 1
    return n if len(rows) > 1 else 0


def _layout(rows: Sequence[_Row], shared: int, pad: int):
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


@dataclass
class _Prefill:
    """One model's pass over a batch: its KV cache of the prompts, the logits of each row's first
    new token, and the targets' summed log-probs."""

    cache: object
    mask: torch.Tensor  # over the prompts' columns (prefix included)
    position: torch.Tensor  # of each prompt's last token
    next_logits: torch.Tensor  # (rows, vocab); empty without generation
    scores: Dict[int, float]


def _prefill(fwd: _Model, rows: Sequence[_Row], generating: bool) -> _Prefill:
    """One pass over prompts (+ tails); a prefix common to all rows is run once."""
    from transformers import DynamicCache

    cache = DynamicCache(config=fwd.model.config)
    shared = _common_prefix(rows)
    if shared:
        fwd(cache, input_ids=torch.tensor([rows[0].prompt[:shared]], device=fwd.device), logits_to_keep=1)
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


def _pick(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The next token of each row: the argmax of one model's logits; of several models (an output
    ensemble), the argmax of the sum (so of the mean) of their log-softmax."""
    if len(logits) == 1:
        return logits[0].argmax(-1)
    return sum(torch.log_softmax(x.float(), dim=-1) for x in logits).argmax(-1)


def _run_batch(fwds: Sequence[_Model], rows: Sequence[_Row], stops, max_new: int):
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


def _greedy(fwds: Sequence[_Model], rows, caches, mask, position, token, stops: _Stops,
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


def _batches(rows: List[_Row], batch_size: int):
    """Rows of similar length together (longest first: a memory problem shows at once), in
    batches of at most `batch_size` and of equal size (100 rows at 64: 50 and 50, not 64 and 36)."""
    rows = sorted(rows, key=lambda r: (-len(r.prompt), -len(r.tail), r.index))
    if not rows:
        return []
    count = -(-len(rows) // batch_size)
    size = -(-len(rows) // max(count, 1))
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def score(lm, pairs: Sequence[Tuple[str, str]], batch_size: int) -> List[float]:
    """sum log p(continuation | context) per (context, continuation), as lm-eval's loglikelihood.

    Requests with the same input (e.g. one context, answers "A" and "B") share one pass, as in lm-eval."""
    tokens = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(lm, context, continuation)
        if len(cont) > lm.max_length:
            raise SftmergeError(f"a continuation of {len(cont)} tokens is longer than the model's {lm.max_length}")
        # lm-eval's input: left-truncated to max_length + 1 tokens, the last one dropped
        tokens.append((ctx[max(0, len(ctx) + len(cont) - (lm.max_length + 1)):], cont))
    return score_tokens(lm.model, tokens, batch_size, lm.tokenizer.pad_token_id)


def score_tokens(model, pairs: Sequence[Tuple[List[int], List[int]]], batch_size: int, pad: Optional[int] = None,
                 desc: Optional[str] = None) -> List[float]:
    """sum log p(continuation | context) per (context tokens, continuation tokens) under a
    transformers model: one pass per distinct input, inputs of similar length batched, a prefix
    common to a batch run once, vocabulary logits only at the continuation; `desc` names a
    progress bar."""
    from tqdm.auto import tqdm

    rows: Dict[tuple, _Row] = {}
    for i, (ctx, cont) in enumerate(pairs):
        seq = (ctx + cont)[:-1]
        row = rows.setdefault((tuple(seq), len(cont)), _Row(len(rows), seq, [], []))
        row.targets.append((i, cont))
    fwd, scores = _Model(model, pad), {}
    for batch in tqdm(_batches(list(rows.values()), batch_size), desc=desc, leave=False, disable=desc is None):
        scores.update(_run_batch([fwd], batch, None, 0)[1])
    return [scores[i] for i in range(len(pairs))]


def _prompt_tokens(lm, text: str, max_new: int) -> List[int]:
    room = lm.max_length - max_new  # as HFLM: the context is left-truncated to leave room for the answer
    if room < 1:
        raise SftmergeError(f"{max_new} new tokens leave no room for a prompt in the model's {lm.max_length}")
    return lm.tok_encode(text)[-room:]


def generate(lms: Sequence, prompts: Sequence[str], max_new_tokens: int, until: Sequence[str],
             batch_size: int) -> List[str]:
    """Greedy continuations of the prompts, each cut at its end (EOS or a stop string)."""
    texts, _ = generate_and_score(lms, prompts, None, max_new_tokens, until, batch_size)
    return texts


def generate_and_score(lms: Sequence, prompts: Sequence[str], continuations, max_new_tokens: int,
                       until: Sequence[str], batch_size: int) -> Tuple[List[str], List[float]]:
    """Greedy answers to the prompts and, when `continuations` are given, each one's summed
    log-prob given its prompt (lm-eval's split), from one pass per prompt where the tokens allow.

    `lms`: one model, or the members of an output ensemble (one tokenizer), which decode together
    on the mean of their log-softmax and score as the mean of their log-probs; the first tokenizes.
    The pass is shared when the prompt's tokens begin the tokens of prompt + continuation and
    nothing is truncated; any other pair is generated and scored separately."""
    lead = lms[0]
    fwds, stops = [_Model(lm.model, lm.tokenizer.pad_token_id) for lm in lms], _Stops(lead, until)
    rows, alone = [], []
    for i, text in enumerate(prompts):
        prompt = _prompt_tokens(lead, text, max_new_tokens)
        if continuations is None:
            rows.append(_Row(i, prompt, [], []))
            continue
        ctx, cont = encode_pair(lead, text, continuations[i])
        whole = ctx + cont
        if whole[:len(prompt)] == prompt and len(prompt) < len(whole) <= lead.max_length + 1 \
                and len(prompt) + max_new_tokens <= lead.max_length:
            rows.append(_Row(i, prompt, whole[len(prompt):-1], [(i, cont)]))
        else:
            rows.append(_Row(i, prompt, [], []))
            alone.append(i)
    generated, scores = {}, {}
    for batch in _batches(rows, batch_size):
        g, s = _run_batch(fwds, batch, stops, max_new_tokens)
        generated.update(g)
        scores.update(s)
    if continuations is None:
        return [stops.text(generated[i]) for i in range(len(prompts))], []
    pairs = [(prompts[i], continuations[i]) for i in alone]
    per_model = [score(lm, pairs, batch_size) for lm in lms]
    for j, i in enumerate(alone):
        scores[i] = sum(values[j] for values in per_model) / len(per_model)
    return [stops.text(generated[i]) for i in range(len(prompts))], [scores[i] for i in range(len(prompts))]
