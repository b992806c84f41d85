"""The project's GSM8K scores exactly as lm-eval's own gsm8k task does on the same data."""

from __future__ import annotations

import pytest

from tests.common import SHARED_DATA, needs_shared_data
from sftmerge.eval.backends import load_model
from sftmerge.eval.lm_eval_tasks import evaluate, lm_eval_gsm8k_yaml
from sftmerge.eval.tasks import EvalSettings

LIMIT = 6


def _stock_gsm8k_with_local_data(folder):
    """lm-eval's installed gsm8k.yaml, with only its dataset location changed."""
    text = lm_eval_gsm8k_yaml().read_text()
    assert "dataset_path: openai/gsm8k\n" in text and "dataset_name: main\n" in text
    local = (
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {SHARED_DATA / 'gsm8k' / 'train.jsonl'}\n"
        f"    test: {SHARED_DATA / 'gsm8k' / 'test.jsonl'}\n"
    )
    text = text.replace("dataset_path: openai/gsm8k\n", local).replace("dataset_name: main\n", "dataset_name: null\n")
    (folder / "gsm8k.yaml").write_text(text)


@pytest.fixture(scope="module")
def tiny_lm(tiny_chat_model):
    return load_model(str(tiny_chat_model), "hf", batch_size=8, seed=1234)


@pytest.mark.slow
@needs_shared_data
def test_same_scores_as_lm_eval_gsm8k(tiny_lm, tmp_path):
    from sftmerge.eval.gsm8k import run

    stock_dir = tmp_path / "stock"
    stock_dir.mkdir()
    _stock_gsm8k_with_local_data(stock_dir)
    gen = {"max_gen_toks": 24}  # the same override for both; keeps the tiny model quick
    stock, stock_samples, _ = evaluate(tiny_lm.lm, "gsm8k", stock_dir, LIMIT, 1234, gen)

    ours_dir = tmp_path / "ours"
    ours_dir.mkdir()
    settings = EvalSettings(limit=LIMIT, data_dir=SHARED_DATA, seed=1234, max_new_tokens=24)
    ours = run(tiny_lm, settings, ours_dir)

    assert len(ours.samples) == LIMIT
    for filt, key in (("strict-match", "strict_match"), ("flexible-extract", "flexible_extract")):
        assert ours.metrics[key]["value"] == stock[f"exact_match,{filt}"]
        assert ours.metrics[key]["stderr"] == pytest.approx(stock[f"exact_match_stderr,{filt}"])
        # Per sample: same prompt (5-shot context), same generation, same extracted answer.
        theirs = sorted((s for s in stock_samples if s["filter"] == filt), key=lambda s: int(s["doc_id"]))
        for mine, s in zip(ours.samples, theirs):
            assert mine["prompt"] == s["arguments"][0][0]
            assert mine["response"] == s["resps"][0][0]
            assert mine[f"{key}_answer"] == s["filtered_resps"][0]
            assert mine[key] == float(s["exact_match"])
    assert ours.samples[0]["prompt"].count("Question:") == 6  # 5 shots + the question


@needs_shared_data
def test_project_task_is_stock_gsm8k_plus_data_location(tmp_path):
    from sftmerge.eval.lm_eval_tasks import task_yaml

    cfg = task_yaml("gsm8k", SHARED_DATA)
    assert cfg["include"] == str(lm_eval_gsm8k_yaml())
    assert set(cfg) == {"include", "task", "dataset_path", "dataset_name", "dataset_kwargs"}
    assert set(task_yaml("gsm8k", None)) == {"include", "task"}
