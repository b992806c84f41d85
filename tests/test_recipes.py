"""The shipped recipes: parseable, methods registered, documented paths, in sync with the generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftmerge.merge.recipes import (DEFAULT_BASE, DEFAULT_SEED, METHODS, PAFT_DPO, PAFT_METHODS, PAFT_SFT, default_models,
                              paft_recipe, recipe)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yml"))


def test_every_method_has_a_shipped_recipe():
    assert {p.stem for p in SHIPPED} >= set(METHODS) | set(PAFT_METHODS)


def documented_models(path: Path) -> list:
    """The PAFT recipes fuse one L1-SFT run and one DPO run; the others merge the demo run's orders."""
    return [PAFT_SFT, PAFT_DPO] if path.stem in PAFT_METHODS else default_models()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_recipe_parses_and_uses_documented_paths(path):
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration

    text = path.read_text()
    assert text.startswith("# "), "each recipe starts with a comment saying what it does"
    assert "Expects:" in text
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    method = merge_methods.get(config.merge_method)  # raises if unknown
    models = [str(m.model) for m in config.models]
    assert models == documented_models(path)
    if config.base_model is not None:
        assert str(config.base_model) == DEFAULT_BASE
    known = {p.name for p in method.spec.parameters}
    for block in [config.parameters or {}] + [m.parameters or {} for m in config.models]:
        assert set(block) <= known, f"{path.name}: parameters {set(block) - known} unknown to {method.spec.name}"


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem in METHODS], ids=lambda p: p.name)
def test_recipe_matches_generator(path):
    assert yaml.safe_load(path.read_text()) == recipe(path.stem, DEFAULT_BASE, default_models(), DEFAULT_SEED)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem in PAFT_METHODS], ids=lambda p: p.name)
def test_paft_recipe_matches_generator(path):
    assert yaml.safe_load(path.read_text()) == paft_recipe(path.stem, DEFAULT_BASE, PAFT_SFT, PAFT_DPO)
    assert f"Expects: base {DEFAULT_BASE}; SFT (L1) {PAFT_SFT}; DPO {PAFT_DPO}." in path.read_text()

