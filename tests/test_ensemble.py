"""The output ensemble (eval/ensemble.py) on tiny real models, real generation, real result files."""

from __future__ import annotations

import json
import shutil

import pytest

from sftmerge.errors import SftmergeError
from sftmerge.eval.tasks import EvalSettings

SETTINGS = EvalSettings(limit=6, max_new_tokens=10, batch_size=4)  # two batches: padding and a short one


def _spread(src, out, seed: int):
    """A copy of the tiny model with seeded noise on its weights: varied greedy answers (the plain
    tiny model repeats one token), and a different model per seed."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def members(tiny_chat_model, tmp_path_factory):
    """Two different tiny models, each scored on arith by the ordinary evaluation into OUT."""
    from sftmerge.eval.runner import evaluate_models

    root = tmp_path_factory.mktemp("ensemble")
    models = [_spread(tiny_chat_model, root / f"m{seed}", seed) for seed in (0, 1)]
    out = root / "eval"
    assert evaluate_models([str(m) for m in models], ["arith"], SETTINGS, "hf", out, echo=lambda _: None) == []
    return out, models


def _samples(out, name):
    return [json.loads(line) for line in (out / name / "arith.samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_identical_copies_answer_and_score_as_the_model(members, tmp_path):
    from sftmerge.eval.ensemble import evaluate_ensemble

    out, (model, _) = members
    copies = [shutil.copytree(model, tmp_path / f"copy-{i}") for i in range(3)]
    assert evaluate_ensemble([str(c) for c in copies], ["arith"], SETTINGS, out, name="copies",
                             echo=lambda _: None) == []
    single, ens = _samples(out, model.name), _samples(out, "copies")
    assert len(single) == len(ens) == 6
    assert len({s["response"] for s in single}) > 1  # varied answers: the comparison has teeth
    for a, b in zip(single, ens):
        assert (a["id"], a["response"], a["correct"], a["target_tokens"]) == \
               (b["id"], b["response"], b["correct"], b["target_tokens"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-12)  # the same pass as the model's own, averaged
    doc_single = json.loads((out / model.name / "arith.json").read_text())
    doc = json.loads((out / "copies" / "arith.json").read_text())
    # The same result-file format as every model's, so summaries and paired tables read it unchanged.
    assert set(doc) == set(doc_single) and set(doc["settings"]) == set(doc_single["settings"])
    assert doc["model_name"] == "copies" and doc["backend"] == "hf-ensemble" and doc["n"] == 6
    assert doc["settings"]["model_settings"]["ensemble_of"] == [str(c) for c in copies]
    assert doc["metrics"]["exact_match"] == doc_single["metrics"]["exact_match"]
    assert doc["metrics"]["loss"]["value"] == pytest.approx(doc_single["metrics"]["loss"]["value"], rel=1e-12)
    assert "copies" in json.loads((out / "summary.json").read_text())["models"]


def _naive_ensemble(models, tokenizer, prompt: str, steps: int, eos: int) -> str:
    """Greedy on the mean log-softmax, one prompt at a time, every step recomputed from scratch."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = []
    with torch.no_grad():
        for _ in range(steps):
            logp = sum(torch.log_softmax(m(ids).logits[0, -1].float(), -1) for m in models) / len(models)
            token = int(logp.argmax())
            new.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_different_members_decode_on_their_mean_log_probabilities(members):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftmerge.eval.ensemble import evaluate_ensemble

    out, pair = members
    assert evaluate_ensemble([str(m) for m in pair], ["arith"], SETTINGS, out, echo=lambda _: None) == []
    ens = _samples(out, "ensemble")
    per_member = [_samples(out, m.name) for m in pair]
    models = [AutoModelForCausalLM.from_pretrained(m).eval() for m in pair]
    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    eos = models[0].generation_config.eos_token_id
    for i, s in enumerate(ens):
        # KV caches, batching and left padding give what plain recomputation gives.
        assert s["response"] == _naive_ensemble(models, tokenizer, s["prompt"], 10, eos), i
        # The loss is the mean of the members' own per-sample losses.
        assert s["loss"] == pytest.approx(sum(m[i]["loss"] for m in per_member) / 2, rel=1e-12)
    # The ensemble is neither member: the checks above could tell them apart.
    for m in per_member:
        assert [s["response"] for s in m] != [s["response"] for s in ens]


@pytest.mark.parametrize("case, message", [
    ("one", "an ensemble needs at least 2 models"),
    ("twice", "an ensemble member is given twice"),
    ("mbpp", "the output ensemble cannot run task mbpp"),
])
def test_bad_ensembles_are_refused_before_loading(tiny_chat_model, tmp_path, case, message):
    from sftmerge.eval.ensemble import evaluate_ensemble

    a, b = tiny_chat_model, shutil.copytree(tiny_chat_model, tmp_path / "copy")
    given = {"one": [a], "twice": [a, a]}.get(case, [a, b])
    tasks = ["mbpp"] if case == "mbpp" else ["arith"]
    with pytest.raises(SftmergeError, match=message):
        evaluate_ensemble([str(m) for m in given], tasks, SETTINGS, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_a_member_whose_generation_config_changes_greedy_decoding_is_one_failure_line(tiny_chat_model, tmp_path):
    """The ensemble decodes by plain argmax of the mean: a member with a repetition penalty would
    not be decoded as its own config says, so the task fails with one line, not silently."""
    from transformers import GenerationConfig

    from sftmerge.eval.ensemble import evaluate_ensemble

    lively = shutil.copytree(tiny_chat_model, tmp_path / "lively")
    GenerationConfig(repetition_penalty=1.3).save_pretrained(lively)
    failures = evaluate_ensemble([str(tiny_chat_model), str(lively)], ["arith"], SETTINGS, tmp_path / "eval",
                                 echo=lambda _: None)
    assert len(failures) == 1 and "changes greedy decoding" in failures[0], failures
    assert not (tmp_path / "eval" / "ensemble" / "arith.json").exists()
