"""Real merges of tiny bf16 Llama families through mergekit: stock CLI, Python API, sftmerge merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.common import error_line, tool
from sftmerge.cli.main import main


def load_weights(folder: Path) -> dict:
    tensors = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def write_recipe(path: Path, family: Path, method="param_select", base=True, models=None, **params) -> Path:
    models = models if models is not None else [family / f"order-{k}" for k in range(3)]
    recipe = {
        "merge_method": method,
        "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in models],
        "parameters": {"seed": 42, **params},
    }
    if base:
        recipe["base_model"] = str(family / "base")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def sftmerge_merge(*args):
    return CliRunner().invoke(main, ["merge", *map(str, args), "--quiet"], catch_exceptions=False)


@pytest.mark.slow
def test_stock_mergekit_yaml_sees_param_select_offline_with_relative_paths(family, tmp_path, clean_env, monkeypatch):
    """The stock command finds the method (start-up hook) and merges offline: mergekit's card asks
    the Hub about `fam/base`-style paths, which must not fail the merge. Every merged element is
    one input's value; `sftmerge merge` of the same recipe keeps the same recipe text."""
    subprocess.run(["cp", "-r", str(family), str(tmp_path / "fam")], check=True)
    recipe = write_recipe(tmp_path / "r.yml", Path("fam"))
    run = subprocess.run([tool("mergekit-yaml"), "r.yml", "out-stock", "--quiet"], capture_output=True, text=True,
                         env={**clean_env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    merged = load_weights(tmp_path / "out-stock")
    inputs = [load_weights(family / f"order-{k}") for k in range(3)]
    assert set(merged) == set(inputs[0])
    for name, value in merged.items():
        assert value.dtype == torch.bfloat16
        from_any = torch.zeros_like(value, dtype=torch.bool)
        for model in inputs:
            from_any |= value == model[name]
        assert from_any.all(), f"{name}: some element is not any input's value"
    monkeypatch.chdir(tmp_path)  # and `sftmerge merge` in this process, offline as every test (conftest.py)
    assert sftmerge_merge("r.yml", "out-sftmerge").exit_code == 0
    for out in ("out-stock", "out-sftmerge"):
        assert (tmp_path / out / "mergekit_config.yml").read_text() == recipe.read_text()


@pytest.mark.slow
def test_python_run_merge_sees_param_select(family, tmp_path, clean_env):
    """A fresh interpreter that only imports mergekit finds the method (start-up hook)."""
    recipe = write_recipe(tmp_path / "select.yml", family)
    code = (
        "import sys, yaml\n"
        "from mergekit.config import MergeConfiguration\n"
        "from mergekit.merge import run_merge\n"
        "from mergekit.options import MergeOptions\n"
        f"cfg = MergeConfiguration.model_validate(yaml.safe_load(open({str(recipe)!r})))\n"
        f"run_merge(cfg, {str(tmp_path / 'py')!r}, options=MergeOptions(quiet=True))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "py" / "config.json").exists()


def test_startup_hook_does_not_import_torch(clean_env):
    code = "import sys; print('torch' in sys.modules, 'sftmerge._autoload' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env)
    assert run.stdout.split() == ["False", "True"]


def test_sftmerge_merge_writes_report(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", family, resample=True)
    result = sftmerge_merge(recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["seed"] == 42 and report["resample"] is True
    fractions = report["fraction_from_model"]
    assert set(fractions) == {str(family / f"order-{k}") for k in range(3)}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert all(0.25 < f < 0.42 for f in fractions.values())
    before = report["fraction_equal_base_before_resample"]
    after = report["fraction_equal_base_after_resample"]
    # After resampling, only elements no model changed stay at the base value.
    base = load_weights(family / "base")
    models = [load_weights(family / f"order-{k}") for k in range(3)]
    untouched = sum(int(torch.stack([m[n] == base[n] for m in models]).all(0).sum()) for n in base)
    assert after == pytest.approx(untouched / report["elements"])
    assert before > after
    assert not list(tmp_path.glob(".out.tmp-*"))


def _merged_bytes(folder: Path) -> dict:
    return {n: t.view(torch.int16).clone() for n, t in load_weights(folder).items()}


@pytest.mark.slow
def test_seed_reproduces_across_threads_and_runs_and_differs_otherwise(family, tmp_path, clean_env):
    recipe = write_recipe(tmp_path / "r.yml", family, resample=True)
    other = write_recipe(tmp_path / "o.yml", family, resample=True)
    other.write_text(other.read_text().replace("seed: 42", "seed: 7"))
    # mergekit sets the thread count once per process (`-j`): one thread in a process of its own,
    # against this process's default (every core) with another shard layout.
    run = subprocess.run([tool("sftmerge"), "merge", str(recipe), str(tmp_path / "a"), "--quiet", "-j", "1"],
                         capture_output=True, text=True, env=clean_env)
    assert run.returncode == 0, run.stderr[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # every core, whatever this test process was set to
    try:
        assert sftmerge_merge(recipe, tmp_path / "c", "--out-shard-size", "100K").exit_code == 0
        assert sftmerge_merge(other, tmp_path / "d").exit_code == 0
    finally:
        torch.set_num_threads(threads)
    a, c, d = (_merged_bytes(tmp_path / x) for x in "acd")
    assert len(list((tmp_path / "c").glob("*.safetensors"))) > 1  # really a different shard layout
    for name in a:
        assert torch.equal(a[name], c[name]), name
    assert any(not torch.equal(a[n], d[n]) for n in a)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r.update(merge_method="param_selekt"), "unknown merge method 'param_selekt'"),
        (lambda r: r["parameters"].update(resmaple=True), "did you mean 'resample'"),
        (lambda r: r["models"][0]["parameters"].update(wieght=1), "did you mean 'weight'"),
        (lambda r: r.update(base_modle="x"), "unknown key(s) base_modle"),
        (lambda r: r["models"][1]["parameters"].update(weight=-1), "weight must be >= 0"),
        (lambda r: [m["parameters"].update(weight=0) for m in r["models"]], "all 0"),
        (lambda r: (r.pop("base_model"), r["parameters"].update(resample=True)), "needs a base_model"),
        (lambda r: r.update(models=r["models"][:1]), "at least 2 non-base models"),
        (lambda r: r["models"][2].update(model="/nonexistent/order-9"), "model not found: /nonexistent/order-9"),
        (lambda r: r["parameters"].update(seed="abc"), "seed must be an integer"),
    ],
)
def test_bad_recipes_fail_with_one_line_and_no_output(family, tmp_path, edit, expected):
    recipe = yaml.safe_load(write_recipe(tmp_path / "r.yml", family).read_text())
    edit(recipe)
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(recipe))
    result = sftmerge_merge(path, tmp_path / "out")
    assert expected in error_line(result)
    assert not (tmp_path / "out").exists()


def test_mismatched_shapes_and_architectures(family, other_family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", family, models=[family / "order-0", other_family / "order-0"])
    assert "tensor shape mismatch" in error_line(sftmerge_merge(recipe, tmp_path / "out"))
    mistral = tmp_path / "mistral"
    subprocess.run(["cp", "-r", str(family / "order-1"), str(mistral)], check=True)
    cfg = json.loads((mistral / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (mistral / "config.json").write_text(json.dumps(cfg))
    recipe = write_recipe(tmp_path / "r2.yml", family, models=[family / "order-0", mistral])
    assert "architecture mismatch" in error_line(sftmerge_merge(recipe, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unreadable_and_missing_recipes(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("merge_method: param_select\nmodels: [a, b\n")
    assert "not valid YAML" in error_line(sftmerge_merge(broken, tmp_path / "out"))
    assert "cannot read recipe" in error_line(sftmerge_merge(tmp_path / "nope.yml", tmp_path / "out"))


def test_failure_during_merge_leaves_no_output(family, tmp_path):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(family / "order-2"), str(damaged)], check=True)
    weights = damaged / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # header intact, tensors truncated
    recipe = write_recipe(tmp_path / "r.yml", family, models=[family / "order-0", damaged])
    result = sftmerge_merge(recipe, tmp_path / "out")
    assert result.exit_code != 0
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_existing_output_needs_overwrite(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", family)
    assert sftmerge_merge(recipe, tmp_path / "out").exit_code == 0
    assert "already exists" in error_line(sftmerge_merge(recipe, tmp_path / "out"))
    assert sftmerge_merge(recipe, tmp_path / "out", "--overwrite").exit_code == 0


@pytest.mark.slow
def test_dare_ties_is_reproducible_and_its_seed_recorded(family, tmp_path):
    """mergekit's DARE draws its drop masks from the global random state: sftmerge always seeds it."""
    recipe = tmp_path / "dare.yml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "dare_ties",
        "base_model": str(family / "base"),
        "models": [{"model": str(family / f"order-{k}"), "parameters": {"weight": 1.0, "density": 0.5}}
                   for k in range(3)],
    }))
    for out, extra in (("a", []), ("b", []), ("seven", ["--random-seed", "7"])):
        result = sftmerge_merge(recipe, tmp_path / out, *extra)
        assert result.exit_code == 0, result.output
    # The stock mergekit-yaml with the recorded seed gives the same weights (what the card says):
    # its own function in this process (its console script is run by the test above).
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    mergekit_yaml([str(recipe), str(tmp_path / "stock"), "--random-seed", "0", "--quiet"], standalone_mode=False)
    weights = {x: (tmp_path / x / "model.safetensors").read_bytes() for x in ("a", "b", "seven", "stock")}
    assert weights["a"] == weights["b"] == weights["stock"]
    assert weights["seven"] != weights["a"]
    assert json.loads((tmp_path / "a" / "merge_report.json").read_text())["random_seed"] == 0
    assert json.loads((tmp_path / "seven" / "merge_report.json").read_text())["random_seed"] == 7
    card = (tmp_path / "seven" / "README.md").read_text()
    assert "Random seed: 7" in card and "sftmerge merge recipes/<name>.yml OUT --random-seed 7" in card


def test_recipe_seed_is_the_random_seed_and_a_different_one_is_refused(family, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", family)
    assert sftmerge_merge(recipe, tmp_path / "out", "--random-seed", "42").exit_code == 0
    assert json.loads((tmp_path / "out" / "merge_report.json").read_text())["random_seed"] == 42
    line = error_line(sftmerge_merge(recipe, tmp_path / "other", "--random-seed", "3"))
    assert "parameters.seed 42 but --random-seed is 3" in line
    assert not (tmp_path / "other").exists()


def test_merge_leaves_the_callers_random_state_alone(family, tmp_path):
    """mergekit reseeds globally; an in-process caller (the PAFT pipeline) must not notice."""
    import random

    import numpy as np

    def draw():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    def seed_all():
        torch.manual_seed(123), random.seed(123), np.random.seed(123)

    seed_all()
    expected = draw()
    seed_all()
    assert sftmerge_merge(write_recipe(tmp_path / "r.yml", family), tmp_path / "out").exit_code == 0
    assert draw() == expected
