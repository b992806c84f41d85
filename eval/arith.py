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


def score_pairs(model: LoadedModel, pairs, texts, max_new: int, settings_doc: dict) -> TaskResult:
    """Greedy answers (strict `#### N`) and the reference responses' loss for prompts TEXTS, in one
    pass over each prompt; shared by arith and GSM8K's held-out variant."""
    t0 = time.time()
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
        settings={**settings_doc, "max_new_tokens": max_new, "decoding": "greedy",
                  "answer": "strict: number after '#### '",
                  "loss": "mean per-token NLL of the reference response given the prompt",
                  "generation_seconds": round(time.time() - t0, 2)},
        samples=samples,
    )


def run(model: LoadedModel, settings: EvalSettings, workdir) -> TaskResult:
    n = settings.limit or DEFAULT_N
    pairs = load_pairs("arith", split="test", limit=n, seed=settings.arith_seed)
    return score_pairs(model, pairs, prompts(model, pairs), default_max_new_tokens(settings, MAX_NEW_TOKENS),
                       {"limit": n, "num_fewshot": 0, "chat_template": True,
                        "data": f"sftmerge.data.pairs arith test split, generator seed {settings.arith_seed}"})
