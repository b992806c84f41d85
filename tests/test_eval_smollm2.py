"""A real pretrained model (SmolLM2-135M-Instruct) against a random one, through the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sftmerge.cli.main import main


@pytest.mark.slow
def test_smollm2_scores_far_better_held_out_loss_than_a_random_model(smollm2_dir, tiny_chat_model, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--models", str(smollm2_dir), str(tiny_chat_model), "--tasks", "arith",
                                       "--limit", "3", "--max-new-tokens", "8", "--backend", "hf", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    real = json.loads((out / smollm2_dir.name / "arith.json").read_text())["metrics"]["loss"]
    random = json.loads((out / tiny_chat_model.name / "arith.json").read_text())["metrics"]["loss"]
    # A random model is near ln(49152) = 10.8 nats per token; SmolLM2 reads this text easily.
    assert random["value"] > 9 and real["value"] < 3
    assert real["ci95"][1] < random["ci95"][0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["arith/loss"] == [smollm2_dir.name]
