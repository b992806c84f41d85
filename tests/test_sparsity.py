"""`sftmerge analyze sparsity` on real checkpoint folders."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sftmerge.cli.main import main
from sftmerge.eval.sparsity import OVERALL, delta_sparsity, layer_type
from tests.test_merge import load_weights


def test_layer_types():
    assert layer_type("model.layers.11.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert layer_type("model.embed_tokens.weight") == "embed_tokens"
    assert layer_type("lm_head.weight") == "lm_head"


def test_counts_match_an_independent_count(family):
    counts = delta_sparsity(family / "order-1", family / "base", tolerance=1e-3)
    base, model = load_weights(family / "base"), load_weights(family / "order-1")
    zero = sum(int((model[n] == base[n]).sum()) for n in base)
    small = sum(int(((model[n].float() - base[n].float()).abs() <= 1e-3).sum()) for n in base)
    total = sum(t.numel() for t in base.values())
    assert (counts[OVERALL].zero, counts[OVERALL].small, counts[OVERALL].elements) == (zero, small, total)
    assert 0.25 < zero / total < 0.45  # ~30% of elements untouched by the synthetic delta
    assert counts["input_layernorm"].zero / counts["input_layernorm"].elements > 0.6  # bf16 rounding on 1.0
    self_counts = delta_sparsity(family / "base", family / "base", tolerance=0)
    assert self_counts[OVERALL].zero == self_counts[OVERALL].elements


def test_cli_writes_table_and_plot(family, tmp_path):
    out = tmp_path / "sp"
    result = CliRunner().invoke(main, ["analyze", "sparsity", str(family / "order-0"), str(family / "order-1"),
                                       "--base", str(family / "base"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sparsity.json").read_text())
    assert set(data["models"]) == {"order-0", "order-1"}
    assert (out / "sparsity.png").stat().st_size > 10_000
    assert "| **all** |" in (out / "sparsity.md").read_text()


def test_cli_errors(family, other_family, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["analyze", "sparsity", str(other_family / "order-0"), "--base", str(family / "base"),
                             "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "same tensors and shapes" in r.output
    r = runner.invoke(main, ["analyze", "sparsity", str(tmp_path / "nope"), "--base", str(family / "base")])
    assert r.exit_code == 1 and "model folder not found" in r.output


def test_base_equal_shares_match_an_independent_count(family):
    import torch

    from sftmerge.eval.sparsity import base_equal_lines, base_equal_shares

    orders = [family / f"order-{k}" for k in range(3)]
    shares = base_equal_shares(orders, family / "base")
    base = load_weights(family / "base")
    models = [load_weights(o) for o in orders]
    total = sum(t.numel() for t in base.values())
    each = [sum(int((m[n] == base[n]).sum()) for n in base) / total for m in models]
    every = sum(int(torch.stack([m[n] == base[n] for m in models]).all(0).sum()) for n in base) / total
    assert shares["elements"] == total and list(shares["models"].values()) == each
    assert shares["drawn_equal_base"] == pytest.approx(sum(each) / 3)
    assert shares["equal_base_in_all"] == every and 0 < every < min(each)  # each changes other elements
    assert "| in order-2 | " in "\n".join(base_equal_lines(shares))
    same = base_equal_shares([family / "base"], family / "base")
    assert same["drawn_equal_base"] == same["equal_base_in_all"] == 1.0
