"""`sftmerge analyze imbalance` on a tiny trained run (2 orders, a few steps) and a real merge."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from sftmerge.cli.main import main
from sftmerge.eval.imbalance import binned_means, merged_losses
from sftmerge.eval.losses import sample_losses
from sftmerge.pipelines.controls import merge_in_process
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.sft import run_multi_order


@pytest.fixture(scope="module")
def tiny_run(tiny_chat_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("imb") / "run"
    config = SFTRunConfig(base=str(tiny_chat_model), data="arith", num_samples=16, output_dir=str(run), orders=2,
                          num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=50,
                          logging_steps=1, max_length=128, keep_checkpoint_steps=2)
    run_multi_order(config, echo=lambda s: None, score_samples=sample_losses)
    merge_in_process(run / "recipes" / "average.yml", run / "merged" / "average")  # the stock command: test_merge
    return run


def test_binned_means_known_case():
    assert binned_means([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0], 2) == [(0.75, 2.0, 2), (2.25, 6.0, 2)]


def test_rebuilt_dataset_reproduces_the_recorded_losses(tiny_run):
    # The order's own model scored on the rebuilt dataset must give what training recorded.
    recorded = [json.loads(x)["loss"] for x in (tiny_run / "order-1" / "sample_losses.jsonl").read_text().splitlines()]
    again = merged_losses(tiny_run, [str(tiny_run / "order-1")])["order-1"]
    assert again == pytest.approx(recorded, rel=1e-4, abs=1e-5)


def test_merged_losses_scored_ahead_are_read_and_a_newer_model_rescored(tiny_run):
    """score_merged (an evaluation-pool job) writes what merged_losses then reads; a model newer
    than its losses file is scored again."""
    import os

    from sftmerge.eval.imbalance import losses_to_score, score_merged
    from sftmerge.io.layout import RunLayout

    merged = tiny_run / "merged" / "average"
    lines = []
    assert score_merged(str(tiny_run), str(merged), echo=lines.append) == [] and "average" in lines[0]
    losses = RunLayout(tiny_run).merged_losses("average")
    written = [json.loads(line)["loss"] for line in losses.read_text().splitlines()]
    assert len(written) == 16 and losses_to_score(tiny_run, [str(merged)]) == []
    losses.write_text("".join(json.dumps({"loss": 7.0, "tokens": 1}) + "\n" for _ in written))
    assert merged_losses(tiny_run, [str(merged)])["average"] == [7.0] * 16  # read, not recomputed
    later = losses.stat().st_mtime + 10
    os.utime(merged / "config.json", (later, later))  # a re-made model
    assert losses_to_score(tiny_run, [str(merged)]) == [str(merged)]
    assert merged_losses(tiny_run, [str(merged)])["average"] == pytest.approx(written)


def test_imbalance_command_writes_figures_tables_and_spearman(tiny_run, tmp_path):
    from scipy.stats import spearmanr

    out = tmp_path / "imb"
    merged = tiny_run / "merged" / "average"
    res = CliRunner().invoke(main, ["analyze", "imbalance", str(tiny_run), "--merged", str(merged),
                                    "--bins", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "order-0: Spearman rho" in res.output and "average: along the anchor's order" in res.output
    for name in ("position.png", "position.csv", "anchor.png", "anchor.csv", "spearman.json", "spearman.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "position.csv")))
    assert len(rows) == 32 and {r["model"] for r in rows} == {"order-0", "order-1"}
    stats = json.loads((out / "spearman.json").read_text())
    mine = [r for r in rows if r["model"] == "order-1"]
    expect = spearmanr([int(r["position"]) for r in mine], [float(r["loss"]) for r in mine])
    assert stats["order-1"]["rho"] == pytest.approx(expect.statistic)
    assert stats["order-1"]["p_value"] == pytest.approx(expect.pvalue)
    anchor = list(csv.DictReader(open(out / "anchor.csv")))
    assert len(anchor) == 16 and set(anchor[0]) == {"sample", "id", "order-0_position", "order-0", "order-1",
                                                     "average"}
    # the merge is a different model: its losses are not a copy of either order's
    assert any(abs(float(r["average"]) - float(r["order-0"])) > 1e-6 for r in anchor)


def test_imbalance_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["analyze", "imbalance", str(tmp_path)])
    assert res.exit_code == 1 and "error: " in res.output and "no finished orders" in res.output


def test_steps_command_merges_same_step_checkpoints(tiny_run, tmp_path):
    out = tmp_path / "steps"
    res = CliRunner().invoke(main, ["analyze", "steps", str(tiny_run), "--limit", "6", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "steps.json").read_text())
    assert record["split"] == "validation" and record["problems"] == 6
    # 16 samples / batch 4 = 4 steps; snapshot at 2, final at 4; step 0 is the base
    assert sorted({r["step"] for r in record["rows"]}) == [0, 2, 4]
    assert {r["model"] for r in record["rows"]} == {"order-0", "order-1", "select"}
    assert (out / "merged" / "step-2" / "mergekit_config.yml").is_file()
    assert "merge_method: param_select" in (out / "recipes" / "step-2.yml").read_text()
    assert (out / "steps.png").stat().st_size > 1000
    at0 = {r["model"]: r["loss"] for r in record["rows"] if r["step"] == 0}
    assert len(set(at0.values())) == 1  # all start from the base
    at4 = {r["model"]: r["loss"] for r in record["rows"] if r["step"] == 4}
    assert at4["order-0"] != at4["order-1"] and at4["order-0"] != at0["order-0"]
    from sftmerge.pipelines.steps import steps_lines

    table = steps_lines(record)  # the report's and the README's table: one row per step
    assert table[0] == "| step | order-0 | order-1 | mean of singles | select |"
    assert [t.split(" | ")[0] for t in table[2:]] == ["| 0", "| 2", "| 4"]
    assert table[4].endswith(f"| {(at4['order-0'] + at4['order-1']) / 2:.4f} | {at4['select']:.4f} |")


def test_spearman_interval_and_the_pooled_rho_ignore_sample_difficulty():
    """The interval holds rho and narrows with n; the pooled rho is blind to a per-sample offset
    (how hard a sample is) that hides a position effect from each order's own rho."""
    import random

    from sftmerge.eval.imbalance import POOLED, pooled_pairs, pooled_spearman, spearman

    rng = random.Random(0)
    n, k = 200, 4
    hard = [rng.gauss(0, 3) for _ in range(n)]  # large differences between samples
    losses = {}
    for o in range(k):
        order = list(range(n))
        rng.shuffle(order)
        losses[f"order-{o}"] = sorted(({"sample": s, "position": p, "loss": hard[s] - 0.002 * p + rng.gauss(0, 0.1)}
                                       for p, s in enumerate(order)), key=lambda r: r["sample"])
    pooled = pooled_spearman(pooled_pairs(losses))
    lo, hi = pooled["ci95"]
    assert pooled["n"] == n * k and lo < pooled["rho"] < hi < -0.5  # the effect, clearly
    for rows in losses.values():
        own = spearman([r["position"] for r in rows], [r["loss"] for r in rows])
        assert own["ci95"][0] < own["rho"] < own["ci95"][1] and own["ci95"][1] > -0.5  # hidden by difficulty
        assert own["ci95"][1] - own["ci95"][0] > hi - lo  # fewer pairs, wider
    shifted = {o: [dict(r, loss=r["loss"] + 100 * r["sample"] % 7) for r in rows] for o, rows in losses.items()}
    assert pooled_spearman(pooled_pairs(shifted))["rho"] == pytest.approx(pooled["rho"])
    assert pooled_pairs({"order-0": losses["order-0"]}) is None and POOLED not in losses
