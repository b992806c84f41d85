"""`sftmerge eval` end to end on tiny models: result files, summary, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from tests.common import SHARED_DATA, code_execution_flags, needs_shared_data
from sftmerge.cli.main import main

ALL = "arith,gsm8k,humaneval,mbpp,alpaca"


def _eval(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def two_models(tiny_chat_model, tmp_path_factory):
    """The tiny model under two names (a run's sub-model and a merge, say)."""
    root = tmp_path_factory.mktemp("run")
    a, b = root / "order-0", root / "merged-select"
    shutil.copytree(tiny_chat_model, a)
    shutil.copytree(tiny_chat_model, b)
    return a, b


@pytest.fixture(scope="module")
def full_run(two_models, tiny_chat_model, tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("results") / "tiny"
    a, b = two_models
    result = _eval("--models", a, b, "--tasks", ALL, "--limit", 2, "--max-new-tokens", 8, "--backend", "hf",
                   "--data-dir", SHARED_DATA, *code_execution_flags(), "--code-timeout", 3,
                   "--judge", tiny_chat_model, "--out", out)
    return result, out


def test_every_model_and_task_has_a_result(full_run):
    result, out = full_run
    assert result.exit_code == 0, result.output
    assert "evaluated 10/10 model-task pairs with hf" in result.output
    for model in ("order-0", "merged-select"):
        for task in ALL.split(","):
            doc = json.loads((out / model / f"{task}.json").read_text())
            assert {"model", "model_name", "task", "backend", "n", "metrics", "settings", "seconds",
                    "per_sample"} <= set(doc)
            assert (doc["model_name"], doc["task"], doc["backend"], doc["n"]) == (model, task, "hf", 2)
            for cell in doc["metrics"].values():
                assert set(cell) == {"value", "stderr", "ci95"}
                assert cell["ci95"][0] <= cell["value"] <= cell["ci95"][1]
            assert doc["settings"]["limit"] == 2 and doc["settings"]["seed"] == 1234
            samples = (out / model / doc["per_sample"]).read_text().splitlines()
            assert len(samples) == 2


def test_task_specific_contents(full_run):
    _, out = full_run
    arith = json.loads((out / "order-0" / "arith.json").read_text())
    assert set(arith["metrics"]) == {"exact_match", "loss"} and arith["metrics"]["loss"]["value"] > 5
    rows = [json.loads(line) for line in (out / "order-0" / "arith.samples.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 and r["correct"] in (0.0, 1.0) for r in rows)
    gsm = json.loads((out / "order-0" / "gsm8k.json").read_text())
    assert set(gsm["metrics"]) == {"strict_match", "flexible_extract"} and gsm["settings"]["num_fewshot"] == 5
    for task in ("humaneval", "mbpp"):
        doc = json.loads((out / "order-0" / f"{task}.json").read_text())
        assert "pass@1" in doc["metrics"] and "audit hook" in doc["settings"]["sandbox"]
    alpaca = json.loads((out / "order-0" / "alpaca.json").read_text())
    assert alpaca["judge"]["model"].endswith(str(alpaca["settings"]["judge"]).split("/")[-1])
    assert {"win_rate", "win_prob", "output_chars"} == set(alpaca["metrics"])
    assert alpaca["lengths"]["reference"]["mean_chars"] > 0
    outputs = json.loads((out / "order-0" / "alpaca_eval" / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset"}] * 2
    assert outputs[0]["generator"] == "order-0" and outputs[0]["dataset"] == "helpful_base"


def test_summary(full_run):
    _, out = full_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == ["merged-select", "order-0"]
    assert "arith/loss" in summary["columns"] and "gsm8k/strict_match" in summary["columns"]
    md = (out / "summary.md").read_text()
    assert "| order-0 |" in md and "| merged-select |" in md and "judged locally by" in md
    # Identical weights: both tie for best, so both are marked in every column.
    assert md.count("**") >= 2 * 2 * len(summary["columns"])
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_fails_to_load_keeps_the_others(tiny_chat_model, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_chat_model.iterdir():
        shutil.copy(f, broken / f.name)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")  # weights present but unreadable: fails at load time
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--models", str(broken), str(tiny_chat_model), "--tasks", "arith",
                                       "--limit", 2, "--max-new-tokens", 4, "--backend", "hf", "--out", str(out)])
    assert result.exit_code == 1
    assert "broken failed to load" in result.output
    assert (out / tiny_chat_model.name / "arith.json").is_file()
    assert not (out / "broken").exists()


@pytest.mark.parametrize("args, message", [
    (["--models", "/nonexistent/model", "--tasks", "arith"], "model /nonexistent/model not found"),
    (["--tasks", "arith,chess"], "unknown task 'chess'"),
    (["--tasks", "gsm8k", "--data-dir", "/tmp"], "gsm8k/train.jsonl not found"),
    (["--tasks", "mbpp"], "pass --allow-code-execution"),
    (["--tasks", "arith", "--limit", "0"], "--limit must be at least 1"),
    # Numeric options are refused before any model is loaded, not after it generated.
    (["--tasks", "mbpp", "--allow-code-execution", "--code-workers", "-3"], "--code-workers must be at least 1"),
    (["--tasks", "humaneval", "--allow-code-execution", "--code-timeout", "0"], "--code-timeout must be more than 0"),
    (["--tasks", "mbpp", "--allow-code-execution", "--code-samples", "0"], "--code-samples must be at least 1"),
    (["--tasks", "arith", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--tasks", "arith", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_chat_model, tmp_path, args, message):
    if "--models" not in args:
        args = ["--models", str(tiny_chat_model), *args]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", *args, "--out", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()


def test_run_folder_lists_sub_models_then_merges(tmp_path):
    from sftmerge.errors import SftmergeError
    from sftmerge.eval.runner import run_models

    for name in ("order-10", "order-2", "order-0", "merged/select", "merged/average", "merged/empty", "logs"):
        (tmp_path / name).mkdir(parents=True)
        if name not in ("merged/empty", "logs"):
            (tmp_path / name / "config.json").write_text("{}")
    names = [p.split(str(tmp_path) + "/")[1] for p in run_models(str(tmp_path))]
    assert names == ["order-0", "order-2", "order-10", "merged/average", "merged/select"]
    with pytest.raises(SftmergeError, match="has no models"):
        run_models(str(tmp_path / "logs"))


@pytest.mark.slow
def test_make_eval_scores_every_model_of_a_run(tiny_chat_model, tmp_path):
    """`make eval` end to end: the Makefile's variables reach a real `sftmerge eval --run`."""
    import subprocess

    from tests.common import BIN, REPO

    run = tmp_path / "r1"
    shutil.copytree(tiny_chat_model, run / "order-0")
    shutil.copytree(tiny_chat_model, run / "merged" / "select")
    (run / "config.yaml").write_text(f"base: {tiny_chat_model}\ndata: arith\n")  # make eval adds the base row
    results = tmp_path / "results"
    make = ["make", "-s", "-o", "setup", "-C", str(REPO), "eval", f"VENV={BIN.parent}", f"RUN={run}", "TASKS=arith",
            "EVAL_FLAGS=--backend hf --max-new-tokens 4"]
    done = subprocess.run([*make, "LIMIT=2", f"RESULTS={results}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for model in ("order-0", "select", tiny_chat_model.name):
        assert json.loads((results / model / "arith.json").read_text())["n"] == 2
    assert (results / "paired.md").is_file()
    refused = subprocess.run([*make, "LIMIT=0", f"RESULTS={tmp_path / 'refused'}"], capture_output=True, text=True)
    assert refused.returncode != 0 and "error: --limit must be at least 1" in refused.stderr
    assert not (tmp_path / "refused").exists()


@needs_shared_data
def test_pass_at_k_with_sampled_completions(tiny_chat_model, tmp_path):
    out = tmp_path / "out"
    result = _eval("--models", tiny_chat_model, "--tasks", "humaneval", "--limit", 1, "--max-new-tokens", 4,
                   "--backend", "hf", "--data-dir", SHARED_DATA, *code_execution_flags(), "--code-samples", 5,
                   "--code-timeout", 3, "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / tiny_chat_model.name / "humaneval.json").read_text())
    assert set(doc["metrics"]) == {"pass@1", "pass@5"}
    assert doc["settings"]["decoding"] == "sampling" and doc["settings"]["samples_per_problem"] == 5
    assert doc["settings"]["generation_kwargs"]["do_sample"] is True
    row = json.loads((out / tiny_chat_model.name / "humaneval.samples.jsonl").read_text())
    assert len(row["completions"]) == len(row["passed"]) == 5 and row["id"] == "humaneval-HumanEval/0"


def test_model_card_reads_the_results(full_run):
    from sftmerge.hub.card_results import read_results

    _, out = full_run
    rows = read_results(out, "order-0")
    assert {r.task for r in rows} == set(ALL.split(","))
    assert all(r.n == 2 and r.backend == "hf" and r.ci95 is not None for r in rows)
