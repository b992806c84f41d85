"""GSM8K in two variants: lm-eval's standard task and the model's own training format.

The format comes from the run's records (summary.json, RUN/config.yaml, a merge's
recipe), else a base's chat template; a model whose format cannot be told is one line.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from tests.common import SHARED_DATA, error_line, needs_shared_data
from sftmerge.cli.main import main
from sftmerge.errors import SftmergeError
from sftmerge.eval.trained_format import trained_format


def _eval(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_folder(tiny_chat_model, tmp_path_factory):
    """RUN/order-0 (config.yaml of today's runs: no format key), RUN/order-1 (text), RUN/merged/m."""
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text("base: models/x\norders: 2\n")
    shutil.copytree(tiny_chat_model, run / "order-0")
    shutil.copytree(tiny_chat_model, run / "order-1")
    (run / "order-1" / "summary.json").write_text(json.dumps({"format": "text", "text_template": "Q: {prompt}\nA: {response}"}))
    (run / "merged").mkdir()
    shutil.copytree(tiny_chat_model, run / "merged" / "m")
    (run / "merged" / "m" / "mergekit_config.yml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {run / 'order-0'}\n  - model: {run / 'order-0'}\n")
    return run


def test_format_from_run_records(run_folder, tiny_chat_model):
    chat = trained_format(run_folder / "order-0")
    assert (chat.kind, chat.source) == ("chat", str(run_folder / "config.yaml"))
    text = trained_format(run_folder / "order-1")
    assert text.kind == "text" and text.prompt(None, "2+2?") == "Q: 2+2?\nA:"  # as training split it
    # A text run whose record names no template used the trainer's default.
    (run_folder / "order-1" / "summary.json").write_text(json.dumps({"format": "text"}))
    assert trained_format(run_folder / "order-1").prompt(None, "2+2?") == "Question: 2+2?\nAnswer:"
    (run_folder / "order-1" / "summary.json").write_text(
        json.dumps({"format": "text", "text_template": "Q: {prompt}\nA: {response}"}))
    merged = trained_format(run_folder / "merged" / "m")
    assert merged.kind == "chat" and "mergekit_config.yml" in merged.source
    # A plain base (no records): its chat template.
    assert "chat template" in trained_format(tiny_chat_model).source


def test_merge_of_different_formats_is_refused(run_folder, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "mergekit_config.yml").write_text(
        f"models:\n  - model: {run_folder / 'order-0'}\n  - model: {run_folder / 'order-1'}\n")
    with pytest.raises(SftmergeError, match="different formats"):
        trained_format(mixed)
    (mixed / "mergekit_config.yml").write_text(f"models:\n  - model: {tmp_path / 'gone'}\n")
    with pytest.raises(SftmergeError, match="not found"):
        trained_format(mixed)


def test_unknown_format_is_refused(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"format": "xml"}))
    with pytest.raises(SftmergeError, match="unknown training format 'xml'"):
        trained_format(tmp_path)


def test_no_record_and_no_chat_template_is_one_line(tiny_chat_model, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_chat_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    line = error_line(_eval("--models", bare, "--tasks", "gsm8k_trained", "--backend", "hf", "--out", out))
    assert "no recorded training format" in line and "gsm8k" in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
@needs_shared_data
def test_both_variants_on_smollm2(smollm2_dir, tmp_path):
    out = tmp_path / "out"
    result = _eval("--models", smollm2_dir, "--tasks", "gsm8k,gsm8k_trained", "--limit", 1, "--max-new-tokens", 24,
                   "--backend", "hf", "--data-dir", SHARED_DATA, "--out", out)
    assert result.exit_code == 0, result.output
    name = smollm2_dir.name
    standard = json.loads((out / name / "gsm8k.json").read_text())
    trained = json.loads((out / name / "gsm8k_trained.json").read_text())
    assert standard["settings"]["num_fewshot"] == 5 and trained["settings"]["num_fewshot"] == 0
    assert (trained["settings"]["variant"], trained["settings"]["format"]) == ("trained", "chat")
    # The same answer rule (lm-eval's gsm8k filters and stop sequences) in both.
    assert trained["settings"]["generation_kwargs"]["until"] == standard["settings"]["generation_kwargs"]["until"]
    for doc in (standard, trained):
        assert set(doc["metrics"]) == {"strict_match", "flexible_extract"}
    rows = {task: [json.loads(line) for line in (out / name / f"{task}.samples.jsonl").read_text().splitlines()]
            for task in ("gsm8k", "gsm8k_trained")}
    assert [r["id"] for r in rows["gsm8k"]] == [r["id"] for r in rows["gsm8k_trained"]]  # pairable
    for r in rows["gsm8k_trained"]:
        assert r["prompt"].count("Question:") == 0 and r["question"] in r["prompt"] and "<|im_start|>" in r["prompt"]
        assert r["strict_match_answer"] and r["flexible_extract_answer"]  # extracted ("[invalid]" when none)
    # SmolLM2 answers a chat question in prose: the flexible filter finds a number in it.
    assert any(r["flexible_extract_answer"] != "[invalid]" for r in rows["gsm8k_trained"])
    summary = json.loads((out / "summary.json").read_text())
    assert {"gsm8k/strict_match", "gsm8k_trained/strict_match", "gsm8k_trained/flexible_extract"} <= set(
        summary["columns"])
