"""The HF backend's own greedy generation and scoring give lm-eval's HFLM answers and scores."""

from __future__ import annotations

import pytest
import torch

from sftmerge.data.pairs import load_pairs
from sftmerge.eval import hf_batches, hf_direct
from sftmerge.eval.backends import chat_prompt, continuation_logprobs, generate, generate_and_score, load_model


@pytest.fixture(scope="module")
def lively(tmp_path_factory, tiny_chat_model):
    """The tiny chat model with weights scaled up: at the default init a 2-layer model repeats one
    token whatever the prompt, which would hide any mix-up of rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(40.0)
    out = tmp_path_factory.mktemp("lively")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_chat_model).save_pretrained(out)
    return load_model(str(out), "hf", batch_size=3, seed=1234)


def _lm_eval_generate(model, prompts, max_new, until):
    from lm_eval.api.instance import Instance

    kwargs = {"until": list(until), "max_gen_toks": max_new, "do_sample": False, "temperature": 0.0}
    return list(model.lm.generate_until([Instance("generate_until", {}, (p, dict(kwargs)), i)
                                         for i, p in enumerate(prompts)]))


def _lm_eval_scores(model, pairs):
    from lm_eval.api.instance import Instance

    return [lp for lp, _ in model.lm.loglikelihood([Instance("loglikelihood", {}, pair, i)
                                                    for i, pair in enumerate(pairs)])]


def _requests(model):
    pairs = load_pairs("arith", split="test", limit=7, seed=0)
    prompts = [chat_prompt(model.tokenizer, p.prompt) for p in pairs] + ["Hi", "A plain prompt, no template "]
    return prompts, [p.response for p in pairs] + [" there", "and more"]


def test_greedy_answers_and_scores_are_lm_evals(lively, monkeypatch):
    prompts, references = _requests(lively)
    expected = _lm_eval_generate(lively, prompts, 10, [])
    assert len(set(expected)) > 4  # the rows really differ
    assert generate(lively, prompts, 10, []) == expected
    scores = _lm_eval_scores(lively, list(zip(prompts, references)))
    mine = continuation_logprobs(lively, list(zip(prompts, references)))
    assert [s for s, _ in mine] == pytest.approx(scores, rel=1e-4, abs=1e-3)
    # One pass for answer and score: the same answers and scores.
    texts, shared = generate_and_score(lively, prompts, references, 10, [])
    assert texts == expected and [n for _, n in shared] == [n for _, n in mine]
    assert [s for s, _ in shared] == pytest.approx(scores, rel=1e-4, abs=1e-3)
    # The batch size changes nothing but the padding; nor do passes of a few rows each, joined
    # into one decoding batch (prompts of other widths left-padded after the shared prefix).
    lively.settings["batch_size"] = 9
    try:
        assert generate(lively, prompts, 10, []) == expected
        for rows in (2, 4):
            monkeypatch.setattr(hf_batches, "PREFILL_ROWS", rows)
            texts, joined = generate_and_score(lively, prompts, references, 10, [])
            assert texts == expected and [s for s, _ in joined] == pytest.approx(scores, rel=1e-4, abs=1e-3)
            # the chat prompts alone share the template's system turn: the gap goes after it
            assert generate(lively, prompts[:7], 10, []) == expected[:7]
    finally:
        lively.settings["batch_size"] = 3


def test_sequences_end_at_stop_strings_and_every_eos_id_as_in_lm_eval(lively):
    prompts, _ = _requests(lively)
    free = _lm_eval_generate(lively, prompts, 10, [])
    stops = [free[0][3:6], free[4][:2]]  # text the model does write: some rows stop early
    expected = _lm_eval_generate(lively, prompts, 10, stops)
    assert sum(a != b for a, b in zip(expected, free)) >= 2
    assert generate(lively, prompts, 10, stops) == expected

    config = lively.lm.model.generation_config
    saved = config.eos_token_id
    tokens = lively.tokenizer(free[2], add_special_tokens=False).input_ids
    config.eos_token_id = [saved, tokens[2]]  # a second EOS id that row 2 writes as its third token
    try:
        expected = _lm_eval_generate(lively, prompts, 10, [])
        assert expected != free
        assert generate(lively, prompts, 10, []) == expected
    finally:
        config.eos_token_id = saved


def test_a_context_shared_by_several_continuations_is_scored_once_per_answer(lively):
    context = chat_prompt(lively.tokenizer, "Which is better, A or B?")
    pairs = [(context, "A"), (context, "B"), (context, "A")]
    scores = [s for s, _ in continuation_logprobs(lively, pairs)]
    assert scores == pytest.approx(_lm_eval_scores(lively, pairs), rel=1e-4, abs=1e-3)
    assert scores[0] == scores[2] != scores[1]


def test_generation_settings_that_change_greedy_decoding_go_through_lm_eval(lively):
    config = lively.lm.model.generation_config
    assert hf_direct.direct_greedy_ok(lively.lm.model)
    prompts, _ = _requests(lively)
    plain = generate(lively, prompts, 8, [])
    config.suppress_tokens = lively.tokenizer(plain[0], add_special_tokens=False).input_ids[:1]
    try:
        assert not hf_direct.direct_greedy_ok(lively.lm.model)
        penalised = _lm_eval_generate(lively, prompts, 8, [])
        assert penalised != plain  # the plain argmax would be wrong here
        assert generate(lively, prompts, 8, []) == penalised
    finally:
        config.suppress_tokens = None


def test_a_reference_the_answer_follows_stands_in_for_decoding_steps(lively, monkeypatch):
    """generate_and_score's pass over prompt + reference has the greedy pick after every reference
    token: where the answer follows the reference, those picks are the answer's tokens, and no
    decoding step runs for them. The answers stay lm-eval's, stop strings included."""
    prompts, _ = _requests(lively)
    free = _lm_eval_generate(lively, prompts, 10, [])
    # Rows' own answers as references: whole (even rows), or their first half and then other text.
    references = [text if i % 2 == 0 else text[:len(text) // 2] + " zz" for i, text in enumerate(free)]
    decoded = []  # rows of each one-token decoding step
    real = hf_batches.Model.__call__

    def counting(self, cache, **kwargs):
        if kwargs["input_ids"].shape[1] == 1 and "attention_mask" in kwargs:
            decoded.append(kwargs["input_ids"].shape[0])
        return real(self, cache, **kwargs)

    monkeypatch.setattr(hf_batches.Model, "__call__", counting)
    assert generate(lively, prompts, 10, []) == free
    plain, decoded[:] = sum(decoded), []
    texts, _ = generate_and_score(lively, prompts, references, 10, [])
    assert texts == free
    assert sum(decoded) < plain / 2, (sum(decoded), plain)
    stops = [free[0][3:6], free[4][:2]]  # text inside the drafted answers: those rows end there
    expected = _lm_eval_generate(lively, prompts, 10, stops)
    assert generate_and_score(lively, prompts, references, 10, stops)[0] == expected != free
