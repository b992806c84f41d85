"""The whole demo pipeline at a tiny size: tiny random Llama, 2 orders of 3 steps, 4 problems per model."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner

from tests.common import SHARED_DATA, needs_shared_data
from sftmerge.cli.main import main
from sftmerge.pipelines.multi_order import MERGES

MODELS = ["order-0", "order-1", *MERGES]


@pytest.fixture(scope="module")
def demo_run(tiny_chat_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        base=str(tiny_chat_model), data="arith", num_samples=12, output_dir=str(tmp / "run"), orders=2,
        num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=50, logging_steps=1,
        max_length=128)))
    args = ["demo", "--config", str(config), "--limit", "4", "--max-new-tokens", "8", "--backend", "hf",
            "--batch-size", "4"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    return tmp / "run", first.output, again.output


def test_demo_writes_merges_results_plots_and_report(demo_run, tiny_chat_model):
    from transformers import AutoModelForCausalLM

    run, out, _ = demo_run
    for m in MERGES:
        assert (run / "merged" / m / "mergekit_config.yml").is_file(), m  # written by the stock mergekit-yaml
        AutoModelForCausalLM.from_pretrained(run / "merged" / m)
    for m in MODELS:
        doc = json.loads((run / "eval" / m / "arith.json").read_text())
        assert doc["n"] == 4 and 0 <= doc["metrics"]["exact_match"]["value"] <= 1
        assert math.isfinite(doc["metrics"]["loss"]["value"])
    for png in ("imbalance/position.png", "imbalance/anchor.png", "eval/summary.png"):
        assert (run / png).stat().st_size > 1000, png
    report = (run / "REPORT.md").read_text()
    for m in [*MODELS, tiny_chat_model.name]:  # the base is evaluated too, as the reference row
        assert sum(line.startswith(f"| {m} | ") for line in report.splitlines()) >= 1, m
    for png in ("imbalance/position.png", "imbalance/anchor.png", "eval/summary.png"):
        assert f"]({png})" in report
    assert "merge_method: param_select" in report and "## Machine" in report
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages) == ["base", "train", "merge", "eval", "imbalance", "report"]
    assert "[6/6] report" in out


def test_paired_comparisons_cover_every_pair_and_match_the_samples(demo_run):
    run = demo_run[0]
    rows = json.loads((run / "paired.json").read_text())
    pairs = {(r["a"], r["b"]) for r in rows}
    expected = {(m, s) for m in MERGES for s in ("order-0", "order-1")}
    expected |= {(a, b) for i, a in enumerate(MERGES) for b in MERGES[i + 1:]}
    assert pairs == expected and len(rows) == 2 * len(expected)
    r = next(r for r in rows if (r["a"], r["b"]) == ("select", "order-0") and r["metric"] == "held-out loss")
    load = lambda m: {s["id"]: s["loss"] for s in map(json.loads, (run / "eval" / m / "arith.samples.jsonl").open())}
    a, b = load("select"), load("order-0")
    assert r["diff"] == pytest.approx(sum(a[i] - b[i] for i in a) / len(a))
    assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]


def test_rerun_skips_finished_stages(demo_run):
    run, _, again = demo_run
    assert "train: 0 new, 2 already there" in again
    assert "merge: 0 new, 4 already there" in again
    assert "eval: 0 evaluated, 7 already there" in again  # 2 orders, 4 merges, the base
    assert "imbalance: already there" in again
    # A stage that did no work keeps the record of the run that did it; the report is always rewritten.
    stages = json.loads((run / "stages.json").read_text())
    assert stages["train"]["result"] == "2 new, 0 already there"
    assert stages["merge"]["result"] == "4 new, 0 already there"
    assert stages["eval"]["result"] == "7 evaluated, 0 already there"
    assert stages["imbalance"]["result"] == "figures 1, 3 written"


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--merges", "select,blend"], "unknown merge 'blend'"),
])
def test_bad_evaluation_flags_are_refused_before_training(tiny_chat_model, tmp_path, flags, message):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(base=str(tiny_chat_model), data="arith", num_samples=8,
                                          output_dir=str(tmp_path / "run"), orders=2)))
    result = CliRunner().invoke(main, ["demo", "--config", str(config), *flags])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


@pytest.mark.slow
@needs_shared_data
def test_reproduce_smoke_on_gsm8k_from_local_data(tiny_chat_model, tmp_path):
    """`make reproduce DATA=gsm8k DATA_DIR=../shared/data` at a smoke size: the same pipeline,
    GSM8K training pairs from the local copy, scored by lm-eval's gsm8k task."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        base=str(tiny_chat_model), data="arith", num_samples=8, output_dir=str(tmp_path / "run"), orders=2,
        num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=50, logging_steps=1,
        max_length=256)))
    args = ["demo", "--config", str(config), "--data", "gsm8k", "--data-dir", str(SHARED_DATA), "--merges", "select",
            "--limit", "2", "--max-new-tokens", "8", "--backend", "hf", "--batch-size", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == f"gsm8k:{SHARED_DATA / 'gsm8k'}"
    for m in ("order-0", "order-1", "select", tiny_chat_model.name):
        doc = json.loads((run / "eval" / m / "gsm8k.json").read_text())
        assert doc["n"] == 2 and doc["metrics"], m
    report = (run / "REPORT.md").read_text()
    assert "evaluated on `gsm8k`" in report and "| select | order-0 |" in report
