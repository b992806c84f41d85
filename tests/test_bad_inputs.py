"""Damaged inputs give one `error:` line and exit 1, never a traceback or an output folder:
`sftmerge merge`, `sftmerge analyze sparsity` and `sftmerge card`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sftmerge.cli.main import main
from tests.common import error_line


def _garbage_json_header(weights: Path) -> None:
    data = weights.read_bytes()
    n = int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:8] + b"{not json" + b" " * (n - 9) + data[8 + n:])


def _garbage_header_length(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes((2**62).to_bytes(8, "little") + data[8:])


def _truncated_tensors(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])


def _garbage_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')


def _garbage_summary(folder: Path) -> None:
    (folder / "summary.json").write_text("{\"initial_weights_fingerprint\": ")


DAMAGE = {
    "corrupt safetensors header": (lambda f: _garbage_json_header(f / "model.safetensors"),
                                   "is not a safetensors file: its header is not valid JSON"),
    "garbage header length": (lambda f: _garbage_header_length(f / "model.safetensors"),
                              "is not a safetensors file: header length 4611686018427387904 does not fit"),
    "truncated tensors": (lambda f: _truncated_tensors(f / "model.safetensors"), "lies past the end of the file"),
    "corrupt config.json": (_garbage_config, "config.json is not valid JSON"),
}


@pytest.fixture
def damaged(family, tmp_path):
    """A copy of order-1 of the toy family, to be damaged by each test."""
    folder = tmp_path / "damaged"
    shutil.copytree(family / "order-1", folder)
    return folder


def _recipe(tmp_path: Path, family: Path, models) -> Path:
    recipe = {
        "merge_method": "param_select",
        "base_model": str(family / "base"),
        "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
        "parameters": {"seed": 1},
    }
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("damage", [*DAMAGE, "corrupt summary.json"])
def test_merge_of_a_damaged_model(family, damaged, tmp_path, damage):
    harm, message = DAMAGE.get(damage, (_garbage_summary, "summary.json is not valid JSON"))
    harm(damaged)
    recipe = _recipe(tmp_path, family, [family / "order-0", damaged])
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "out"), "--quiet"])
    line = error_line(result)
    assert message in line and str(damaged) in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_analyze_sparsity_of_a_damaged_model(family, damaged, tmp_path, damage):
    harm, message = DAMAGE[damage]
    harm(damaged)
    out = tmp_path / "sparsity"
    result = CliRunner().invoke(main, ["analyze", "sparsity", str(family / "order-0"), str(damaged),
                                       "--base", str(family / "base"), "--out", str(out)])
    line = error_line(result)
    assert message in line and str(damaged) in line
    assert not out.exists()


def test_card_of_a_merge_with_a_damaged_report(family, tmp_path):
    recipe = _recipe(tmp_path, family, [family / "order-0", family / "order-1"])
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["merge", str(recipe), str(out), "--quiet"]).exit_code == 0
    (out / "merge_report.json").write_text(json.dumps([1, 2]))
    assert "merge_report.json is not a JSON object" in error_line(CliRunner().invoke(main, ["card", str(out)]))
    (out / "merge_report.json").write_text("{")
    assert "merge_report.json is not valid JSON" in error_line(CliRunner().invoke(main, ["card", str(out)]))
