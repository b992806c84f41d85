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
  comes from that pass, and generation goes on from the same pass's cache; where the greedy
  answer follows the reference, its tokens come from that pass's picks, without decoding steps;
- an output ensemble's members (eval/ensemble.py) run the same way, each with its own pass and
  cache, decoding together on the mean of their log-softmax, so each member's scores are those
  of its own evaluation.

The batched passes and the decoding loop are eval/hf_batches.py's.

Scores follow lm-eval's `loglikelihood`, including its split of context and continuation:
trailing whitespace of the context is scored as part of the continuation. Sampling, and a
model whose generation config changes greedy decoding (a repetition penalty, ...), go
through lm-eval instead (`direct_greedy_ok`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from sftmerge.errors import SftmergeError
from sftmerge.eval.hf_batches import Model, Row, batches, run_batch

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

    rows: Dict[tuple, Row] = {}
    for i, (ctx, cont) in enumerate(pairs):
        seq = (ctx + cont)[:-1]
        row = rows.setdefault((tuple(seq), len(cont)), Row(len(rows), seq, [], []))
        row.targets.append((i, cont))
    fwd, scores = Model(model, pad), {}
    for batch in tqdm(batches(list(rows.values()), batch_size), desc=desc, leave=False, disable=desc is None):
        scores.update(run_batch([fwd], batch, None, 0)[1])
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
    fwds, stops = [Model(lm.model, lm.tokenizer.pad_token_id) for lm in lms], _Stops(lead, until)
    rows, alone = [], []
    for i, text in enumerate(prompts):
        prompt = _prompt_tokens(lead, text, max_new_tokens)
        if continuations is None:
            rows.append(Row(i, prompt, [], []))
            continue
        ctx, cont = encode_pair(lead, text, continuations[i])
        whole = ctx + cont
        if whole[:len(prompt)] == prompt and len(prompt) < len(whole) <= lead.max_length + 1 \
                and len(prompt) + max_new_tokens <= lead.max_length:
            rows.append(Row(i, prompt, whole[len(prompt):-1], [(i, cont)]))
        else:
            rows.append(Row(i, prompt, [], []))
            alone.append(i)
    generated, scores = {}, {}
    for batch in batches(rows, batch_size):
        g, s = run_batch(fwds, batch, stops, max_new_tokens)
        generated.update(g)
        scores.update(s)
    if continuations is None:
        return [stops.text(generated[i]) for i in range(len(prompts))], []
    pairs = [(prompts[i], continuations[i]) for i in alone]
    per_model = [score(lm, pairs, batch_size) for lm in lms]
    for j, i in enumerate(alone):
        scores[i] = sum(values[j] for values in per_model) / len(per_model)
    return [stops.text(generated[i]) for i in range(len(prompts))], [scores[i] for i in range(len(prompts))]
