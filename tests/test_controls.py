"""The demo's controls without a model: seed-spread names and recipes, the compute-matched settings."""

from __future__ import annotations

import yaml

from sftmerge.merge.recipes import DEFAULT_SEED, recipe, seeded_name, spread_seeds
from sftmerge.pipelines.controls import COMPUTE_MATCHED, compute_matched_config, seed_merges, seed_variants

DEMO = ("average", "select", "resample", "ties")


def test_seed_spread_names():
    assert spread_seeds(3) == [DEFAULT_SEED, DEFAULT_SEED + 1, DEFAULT_SEED + 2]
    assert seeded_name("select", DEFAULT_SEED) == "select" and seeded_name("resample", 7) == "resample-seed7"
    assert seed_variants(DEMO, 3) == {"select": ["select-seed43", "select-seed44"],
                                      "resample": ["resample-seed43", "resample-seed44"]}
    assert seed_merges(DEMO, 1) == [] and seed_merges(("average", "ties"), 3) == []


def test_seed_recipes_differ_from_the_run_recipe_only_in_the_seed(tmp_path):
    from sftmerge.io.layout import RunLayout
    from sftmerge.train.config import SFTRunConfig
    from sftmerge.train.run_folder import write_run_recipes, write_seed_recipes

    run = RunLayout(tmp_path / "run")
    config = SFTRunConfig(base="base-model", orders=3, output_dir=str(run.root))
    write_run_recipes(run, config)
    names = write_seed_recipes(run, config, DEMO, spread_seeds(3))
    assert names == seed_merges(DEMO, 3)
    orders = [str(run.order(k)) for k in range(3)]
    for name in names:
        method, seed = name.split("-seed")
        text = run.recipe(name).read_text()
        assert yaml.safe_load(text) == recipe(method, "base-model", orders, int(seed))
        assert "merge-seed spread" in text and f"mergekit-yaml {run.recipe(name)}" in text
    assert yaml.safe_load(run.recipe("select").read_text())["parameters"]["seed"] == DEFAULT_SEED
    before = {p.name: p.stat().st_mtime_ns for p in run.recipes.iterdir()}
    write_seed_recipes(run, config, DEMO, spread_seeds(3))  # a rerun leaves identical files alone
    assert {p.name: p.stat().st_mtime_ns for p in run.recipes.iterdir()} == before


def test_compute_matched_trains_one_order_for_k_times_the_epochs(tmp_path):
    from sftmerge.train.config import SFTRunConfig

    config = SFTRunConfig(base="base-model", orders=3, num_train_epochs=2, output_dir=str(tmp_path / "run"),
                          keep_checkpoint_steps=5)
    cm = compute_matched_config(config)
    assert (cm.orders, cm.num_train_epochs, cm.keep_checkpoint_steps) == (1, 6, None)
    assert cm.output_dir == str(tmp_path / "run" / COMPUTE_MATCHED)
    # Everything else as the run's: its orders differ from order-0 of the run only in length.
    assert {k: v for k, v in cm.identity().items() if k not in ("num_train_epochs", "output_dir",
                                                                "keep_checkpoint_steps")} == \
           {k: v for k, v in config.identity().items() if k not in ("num_train_epochs", "output_dir",
                                                                    "keep_checkpoint_steps")}
