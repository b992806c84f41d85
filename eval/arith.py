"""The built-in arithmetic task: exact match on held-out problems, and held-out loss.

Problems are the `test` split of sftmerge.data.pairs's generator (disjoint from training).
The prompt is the chat-templated question, as in training; the answer is the number
after `####` (strict) compared with the reference. The loss is the mean per-token
negative log-likelihood of the reference response given that prompt.
"""

from __future__ import annotations

import time

from sftmerge.data.pairs import extract_answer, load_pairs
from sftmerge.eval.backends import LoadedModel, chat_prompt, generate_and_score
from sftmerge.eval.stats import summarize, summarize_proportion
from sftmerge.eval.tasks import EvalSettings, TaskResult, default_max_new_tokens

DEFAULT_N = 300
MAX_NEW_TOKENS = 64  # the longest reference solution of the first 300 test problems is 47 tokens


def prompts(model: LoadedModel, pairs) -> list:
    return [chat_prompt(model.tokenizer, p.prompt) for p in pairs]


def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    n = settings.limit or DEFAULT_N
    pairs = load_pairs("arith", split="test", limit=n, seed=settings.arith_seed)
    texts = prompts(model, pairs)
    max_new = default_max_new_tokens(settings, MAX_NEW_TOKENS)
    t0 = time.time()
    # The reference's loss and the greedy answer from one pass over each prompt (HF backend).
    responses, scored = generate_and_score(model, texts, [p.response for p in pairs], max_new, [])
    samples, correct, losses = [], [], []
    for pair, text, response, (logprob, n_tokens) in zip(pairs, texts, responses, scored):
        got = extract_answer(response, strict=True)
        ok = float(got is not None and got == pair.answer)
        loss = -logprob / n_tokens
        correct.append(ok)
        losses.append(loss)
        samples.append({"id": pair.id, "prompt": text, "response": response, "target": pair.answer,
                        "extracted": got, "correct": ok, "loss": loss, "target_tokens": n_tokens})
    return TaskResult(
        metrics={"exact_match": summarize_proportion(correct), "loss": summarize(losses, bounds=None)},
        settings={"limit": n, "num_fewshot": 0, "max_new_tokens": max_new, "decoding": "greedy",
                  "answer": "strict: number after '#### '", "chat_template": True,
                  "data": f"sftmerge.data.pairs arith test split, generator seed {settings.arith_seed}",
                  "loss": "mean per-token NLL of the reference response given the chat prompt",
                  "generation_seconds": round(time.time() - t0, 2)},
        samples=samples,
    )
