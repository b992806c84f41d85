"""The whole demo pipeline at a tiny size: tiny random Llama, 2 orders of 2 steps, 4 problems per model.

One run serves every demo test: the first command is the default demo (merges, output ensemble,
merge-seed spread; 2 seeds here to save time); the second is the same command with
`--compute-matched`, so it shows both that finished stages are skipped and that a control added
later is trained, scored and reported.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from click.testing import CliRunner

from tests.common import SHARED_DATA, needs_shared_data
from sftmerge.cli.main import main
from sftmerge.pipelines.multi_order import MERGES

SEEDS = ["select-seed43", "resample-seed43"]  # the spread's second seed (--merge-seeds 2)
MODELS = ["order-0", "order-1", *MERGES, *SEEDS, "ensemble", "compute-matched"]


@pytest.fixture(scope="module")
def demo_run(tiny_chat_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        base=str(tiny_chat_model), data="arith", num_samples=8, output_dir=str(tmp / "run"), orders=2,
        num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=50, logging_steps=1,
        max_length=128)))
    args = ["demo", "--config", str(config), "--limit", "4", "--max-new-tokens", "8", "--backend", "hf",
            "--batch-size", "4", "--merge-seeds", "2"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, [*args, "--compute-matched"])
    assert again.exit_code == 0, again.output
    return tmp / "run", first.output, again.output


def _samples(run, model):
    return {s["id"]: s for s in map(json.loads, (run / "eval" / model / "arith.samples.jsonl").open())}


def test_demo_writes_merges_results_plots_and_report(demo_run, tiny_chat_model):
    from transformers import AutoModelForCausalLM

    run, out, _ = demo_run
    for m in [*MERGES, *SEEDS]:
        assert (run / "merged" / m / "mergekit_config.yml").is_file(), m  # stock mergekit-yaml / the driver
        AutoModelForCausalLM.from_pretrained(run / "merged" / m)
    for m in MODELS:
        doc = json.loads((run / "eval" / m / "arith.json").read_text())
        assert doc["n"] == 4 and 0 <= doc["metrics"]["exact_match"]["value"] <= 1, m
        assert math.isfinite(doc["metrics"]["loss"]["value"]) and doc["metrics"]["loss"]["ci95"], m
    for png in ("imbalance/position.png", "imbalance/anchor.png", "eval/summary.png"):
        assert (run / png).stat().st_size > 1000, png
    # figure 3's merged losses were scored as evaluation jobs, and the figure read them
    anchor = list(csv.DictReader(open(run / "imbalance" / "anchor.csv")))
    for m in MERGES:
        losses = [json.loads(line)["loss"] for line in (run / "imbalance" / "losses" / f"{m}.jsonl").open()]
        assert losses and sorted(losses) == sorted(float(r[m]) for r in anchor), m
    report = (run / "REPORT.md").read_text()
    for m in [*MODELS, tiny_chat_model.name]:  # the base is evaluated too, as the reference row
        assert sum(line.startswith(f"| {m} | ") for line in report.splitlines()) >= 1, m
    for png in ("imbalance/position.png", "imbalance/anchor.png", "eval/summary.png"):
        assert f"]({png})" in report
    assert "merge_method: param_select" in report and "## Machine" in report
    assert "| select | mean-of-singles | exact match |" in report and "| ensemble | mean-of-singles | exact" in report
    assert "| ensemble | mean-of-singles | held-out" not in report  # the members' mean loss by definition
    assert "| all orders | " in report and "| in every sub-model (kept at the base by `resample` too) | " in report
    shares = json.loads((run / "imbalance" / "base_equal.json").read_text())
    assert set(shares["models"]) == {"order-0", "order-1"} and 0 <= shares["equal_base_in_all"] <= 1
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages) == ["base", "train", "merge", "eval", "imbalance", "report"]
    # the host's share of the CPU, on Linux, where a stage took a clock tick at least
    assert "cpu_steal" in stages["train"] and all(0 <= s.get("cpu_steal", 0) <= 1 for s in stages.values())
    assert "[6/6] report" in out


def test_controls_are_what_they_claim(demo_run):
    run = demo_run[0]
    # Ensemble: its loss on each problem is the mean of the sub-models' losses on it.
    ens, subs = _samples(run, "ensemble"), [_samples(run, f"order-{k}") for k in range(2)]
    assert set(ens) == set(subs[0])
    for i, s in ens.items():
        assert s["loss"] == pytest.approx(sum(m[i]["loss"] for m in subs) / 2, rel=1e-5)
    # Seed spread: the same recipe but the seed, each seed recorded with its merge.
    for method in ("select", "resample"):
        plain, seeded = (yaml.safe_load((run / "recipes" / f"{n}.yml").read_text()) for n in (method, f"{method}-seed43"))
        assert seeded["parameters"]["seed"] == 43 and plain["parameters"]["seed"] == 42
        assert {**seeded, "parameters": plain["parameters"]} == plain
        for name, seed in ((method, 42), (f"{method}-seed43", 43)):
            assert json.loads((run / "merged" / name / "merge_report.json").read_text())["seed"] == seed
    # Compute-matched: one order, K x the epochs, as many optimizer steps as the K orders together.
    cm = json.loads((run / "compute-matched" / "order-0" / "summary.json").read_text())
    orders = [json.loads((run / f"order-{k}" / "summary.json").read_text()) for k in range(2)]
    assert yaml.safe_load((run / "compute-matched" / "config.yaml").read_text())["num_train_epochs"] == 2
    assert cm["steps"] == sum(o["steps"] for o in orders) == 4


def test_report_shows_the_controls_spread_and_seeds(demo_run):
    run = demo_run[0]
    report = (run / "REPORT.md").read_text()
    lines = report.splitlines()
    spread = [line for line in lines if line.startswith("| select (42, 43) | ") or line.startswith("| resample (42, 43) | ")]
    assert len(spread) == 4  # exact match and loss for each seeded merge
    loss = next(line for line in spread if line.startswith("| select (42, 43) | loss"))
    values = [json.loads((run / "eval" / m / "arith.json").read_text())["metrics"]["loss"]["value"]
              for m in ("select", "select-seed43")]
    assert f"{sum(values) / 2:.4f} [{min(values):.4f}, {max(values):.4f}]" in loss
    assert loss.count("(p ") == 2  # one paired comparison with the best sub-model per seed
    assert "## Seeds" in report and "`select-seed43` 43" in report and "paired bootstrap: seed 0" in report
    assert "`ensemble`: output ensemble of the 2 sub-models" in report
    assert "`compute-matched`: one data order trained 2 x 1 = 2 epochs (4 optimizer steps" in report


def test_paired_comparisons_cover_every_pair_and_match_the_samples(demo_run):
    run = demo_run[0]
    rows = json.loads((run / "paired.json").read_text())
    pairs = {(r["a"], r["b"]) for r in rows}
    a_side, b_side = [*MERGES, "ensemble"], ["order-0", "order-1", "compute-matched"]
    expected = {(m, s) for m in a_side for s in b_side}
    expected |= {(a, b) for i, a in enumerate(a_side) for b in a_side[i + 1:]}
    best = {r["b"] for r in rows if r["a"] in SEEDS}
    assert len(best) == 1 and best <= {"order-0", "order-1"}  # each seed's merge vs the best sub-model
    expected |= {(m, *best) for m in SEEDS}
    expected |= {(m, "mean-of-singles") for m in [*a_side, "compute-matched"]}  # one SFT run, order not chosen
    # two metrics per pair, less the ensemble's loss against the singles' mean (equal by definition)
    assert pairs == expected and len(rows) == 2 * len(expected) - 1
    for a, b in (("select", "order-0"), ("ensemble", "compute-matched")):
        r = next(r for r in rows if (r["a"], r["b"]) == (a, b) and r["metric"] == "held-out loss")
        va, vb = _samples(run, a), _samples(run, b)
        assert r["diff"] == pytest.approx(sum(va[i]["loss"] - vb[i]["loss"] for i in va) / len(va))
        assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]
    r = next(r for r in rows if (r["a"], r["b"]) == ("select", "mean-of-singles") and r["metric"] == "exact match")
    va, o0, o1 = _samples(run, "select"), _samples(run, "order-0"), _samples(run, "order-1")
    assert r["diff"] == pytest.approx(sum(va[i]["correct"] - (o0[i]["correct"] + o1[i]["correct"]) / 2
                                          for i in va) / len(va))


def test_model_cards_read_the_new_rows(demo_run):
    from sftmerge.hub.card import build_card
    from sftmerge.hub.card_results import read_results

    run = demo_run[0]
    for m in ("ensemble", "compute-matched", "select-seed43"):
        rows = read_results(run / "eval", m)
        assert {(r.task, r.metric) for r in rows} == {("arith", "exact_match"), ("arith", "loss")}, m
    card = str(build_card(run / "merged" / "select-seed43", results_dir=run / "eval"))
    assert "Seed: 43" in card and "| exact_match |" in card


def test_rerun_skips_finished_stages_and_adds_a_control(demo_run):
    run, first, again = demo_run
    assert "train: 2 new, 0 already there" in first and "compute-matched" not in first
    assert "train: 0 new, 2 already there; compute-matched: trained" in again
    assert "merge: 0 new, 6 already there" in again  # 4 stock merges, 2 of the seed spread
    assert "eval: 1 evaluated, 10 already there" in again  # compute-matched; 2 orders, 6 merges, base, ensemble
    assert "imbalance: already there" in again
    # A stage that did no work keeps the record of the run that did it; the report is always rewritten.
    stages = json.loads((run / "stages.json").read_text())
    assert stages["train"]["result"] == "0 new, 2 already there; compute-matched: trained"
    assert stages["merge"]["result"] == "6 new, 0 already there"
    assert stages["eval"]["result"] == "1 evaluated, 10 already there"
    assert stages["imbalance"]["result"] == "figures 1, 3 written"  # base-equal shares: in the eval pool


def test_demo_defaults_include_ensemble_and_three_seeds():
    from sftmerge.pipelines.multi_order import DemoSettings

    settings = DemoSettings(config="x.yaml")
    assert settings.ensemble and settings.merge_seeds == 3 and not settings.compute_matched
    assert settings.all_merges() == [*MERGES, "select-seed43", "select-seed44", "resample-seed43", "resample-seed44"]
    out = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "--ensemble / --no-ensemble" in out and "--compute-matched / --no-compute-matched" in out


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--merges", "select,blend"], "unknown merge 'blend'"),
    (["--merge-seeds", "0"], "--merge-seeds must be at least 1"),
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
    GSM8K training pairs from the local copy, scored by `gsm8k_heldout` (held-out loss and strict
    exact match, in the training format), the output ensemble included."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        base=str(tiny_chat_model), data="arith", num_samples=4, output_dir=str(tmp_path / "run"), orders=2,
        num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=50, logging_steps=1,
        max_length=256)))
    args = ["demo", "--config", str(config), "--data", "gsm8k", "--data-dir", str(SHARED_DATA), "--merges", "select",
            "--merge-seeds", "1", "--limit", "2", "--max-new-tokens", "8", "--backend", "hf", "--batch-size", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == f"gsm8k:{SHARED_DATA / 'gsm8k'}"
    losses = {}
    for m in ("order-0", "order-1", "select", "ensemble", tiny_chat_model.name):
        doc = json.loads((run / "eval" / m / "gsm8k_heldout.json").read_text())
        assert doc["n"] == 2 and set(doc["metrics"]) == {"exact_match", "loss"}, m
        rows = [json.loads(line) for line in (run / "eval" / m / "gsm8k_heldout.samples.jsonl").open()]
        assert [r["id"] for r in rows] == ["gsm8k-test-0", "gsm8k-test-1"] and "####" not in rows[0]["prompt"]
        losses[m] = [r["loss"] for r in rows]
    # the ensemble's loss: the mean of its members' losses on each problem
    assert losses["ensemble"] == pytest.approx([(a + b) / 2 for a, b in zip(losses["order-0"], losses["order-1"])])
    assert json.loads((run / "eval" / "ensemble" / "gsm8k_heldout.json").read_text())["backend"] == "hf-ensemble"
    report = (run / "REPORT.md").read_text()
    assert "evaluated on `gsm8k_heldout`" in report and "| select | order-0 | held-out loss |" in report
    assert "| ensemble | order-1 |" in report and "| select | mean-of-singles | held-out loss |" in report
    assert "## Merge-seed spread" not in report and not (run / "merged" / "select-seed43").exists()
