"""PAFT on a tiny random bf16 Llama: L1-sparse SFT, DPO/ORPO, the merge recipes, the pipeline."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.common import tiny_llama
from sftmerge.cli.main import main
from sftmerge.errors import SftmergeError
from sftmerge.data.preference import load_preferences, wrong_step
from sftmerge.train.config import SFTRunConfig, config_from_dict
from sftmerge.train.dpo_config import DPORunConfig

L1 = 0.05


@pytest.fixture(scope="module")
def tiny_bf16_base(tmp_path_factory):
    """A 2-layer random Llama stored in bf16 (as the real base), SmolLM2's tokenizer and chat template."""
    return tiny_llama(tmp_path_factory.mktemp("paft-tiny") / "base", dtype="bfloat16", max_positions=512)


def sft_config(base, **kw) -> SFTRunConfig:
    # lr near half a bf16 step of typical weights: plain SFT drifts past it over 8 steps, the L1 run stays near the base
    d = dict(base=str(base), data="arith", num_samples=16, orders=1, num_train_epochs=2, per_device_train_batch_size=4,
             learning_rate=1e-4, save_steps=50, logging_steps=1, max_length=128)
    d.update(kw)
    return SFTRunConfig(**d)


def dpo_config(base, **kw) -> DPORunConfig:
    d = dict(base=str(base), data="arith", num_samples=8, per_device_train_batch_size=4, learning_rate=1e-3,
             logging_steps=1, max_length=128)
    d.update(kw)
    return DPORunConfig(**d)


@pytest.fixture(scope="module")
def pipeline(tiny_bf16_base, tmp_path_factory):
    from sftmerge.pipelines.paft import run_paft

    out = tmp_path_factory.mktemp("paft") / "run"
    lines = []
    md = run_paft(sft_config(tiny_bf16_base), dpo_config(tiny_bf16_base), L1, str(out), eval_limit=4,
                  max_new_tokens=8, echo=lines.append)
    return out, tiny_bf16_base, md, lines


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---------------------------------------------------------------- training

def test_l1_delta_is_sparser_than_plain_at_the_same_steps(pipeline, tiny_bf16_base):
    from sftmerge.eval.sparsity import OVERALL, delta_sparsity

    out = pipeline[0]
    plain, sparse = out / "sft" / "order-0", out / "sft-l1" / "order-0"
    s_plain, s_l1 = (json.loads((f / "summary.json").read_text()) for f in (plain, sparse))
    assert s_l1["l1"] == L1 and s_plain["l1"] == 0
    def zero_fraction(folder):  # over the transformer blocks (unused embedding rows are unchanged in both)
        counts = delta_sparsity(folder, tiny_bf16_base, 0)
        blocks = [c for t, c in counts.items() if t not in (OVERALL, "embed_tokens")]
        return sum(c.zero for c in blocks) / sum(c.elements for c in blocks)

    assert s_plain["steps"] == s_l1["steps"] == 8
    assert zero_fraction(sparse) > zero_fraction(plain) + 0.1
    log = [json.loads(x) for x in (sparse / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("l1_penalty", 0) > 0 for r in log)  # the penalty was part of the loss


def test_dpo_runs_and_saves_a_complete_folder(pipeline, tiny_bf16_base):
    from transformers import AutoTokenizer

    folder = pipeline[0] / "dpo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "config.yaml",
                 "train_log.jsonl", "summary.json"):
        assert (folder / name).is_file(), name
    w, wb = weights(folder), weights(tiny_bf16_base)
    assert set(w) == set(wb) and all(t.dtype == torch.bfloat16 for t in w.values())
    assert any(not torch.equal(w[k], wb[k]) for k in w)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["loss_type"] == "dpo" and summary["steps"] == 2 and summary["final_reward_margin"] is not None
    assert yaml.safe_load((folder / "config.yaml").read_text())["data_seed"] == 0
    assert "<|im_start|>assistant" in AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    sequential = json.loads((pipeline[0] / "sft-dpo" / "summary.json").read_text())
    assert sequential["base"].endswith("sft/order-0")
    assert sequential["initial_weights_fingerprint"] != summary["initial_weights_fingerprint"]


def test_orpo_on_local_jsonl(tiny_bf16_base, tmp_path):
    from sftmerge.train.dpo import run_dpo

    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "orpo"
    run_dpo(dpo_config(tiny_bf16_base, data=f"jsonl:{data}", loss="orpo", output_dir=str(out)), echo=lambda s: None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss_type"] == "orpo" and summary["pairs"] == 4 and summary["steps"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(weights(out).values(), weights(tiny_bf16_base).values()))


# ---------------------------------------------------------------- merge and report

def test_paft_recipe_merges_with_stock_mergekit(pipeline, tmp_path):
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    out = pipeline[0]
    recipe = out / "recipes" / "paft.yml"
    # The stock command's own function (its console script is run in test_merge.py).
    mergekit_yaml.main([str(recipe), str(tmp_path / "m")], standalone_mode=False)
    merged, base = weights(tmp_path / "m"), weights(out / "merged" / "paft")
    assert all(torch.equal(merged[k], base[k]) for k in merged)  # the pipeline's merge is the same recipe
    # Where the L1-SFT delta is exactly zero, TIES adds the DPO delta whole (density 1.0, normalised by its own weight).
    wb, ws, wd = weights(pipeline[1]), weights(out / "sft-l1" / "order-0"), weights(out / "dpo")
    key = "model.layers.0.mlp.down_proj.weight"
    only_dpo = (ws[key] == wb[key]) & (wd[key] != wb[key])
    assert int(only_dpo.sum()) > 100
    assert torch.allclose(merged[key][only_dpo].float(), wd[key][only_dpo].float(), rtol=1e-2, atol=1e-3)
    both = (ws[key] != wb[key]) & (wd[key] != wb[key])
    assert not torch.equal(merged[key][both], wd[key][both])  # there the SFT delta counts too


def test_report_has_every_model_with_intervals_and_sparsity(pipeline):
    out, _, md, _ = pipeline
    report = json.loads((out / "report.json").read_text())
    labels = ["base", "sft", "sft-l1", "dpo", "sft-dpo", "paft", "paft_task_arithmetic"]
    assert list(report["arith"]) == labels and set(report["n"].values()) == {4}
    for label in labels:
        em = report["arith"][label]["exact_match"]
        assert em["ci95"][0] <= em["value"] <= em["ci95"][1]
        assert label in md
    assert set(report["sparsity"]) == set(labels) - {"base"}
    assert report["sparsity"]["sft-l1"]["fraction_zero"] > report["sparsity"]["sft"]["fraction_zero"]
    assert (out / "sparsity" / "sparsity.md").is_file() and "| sft-l1 |" in md


def test_kept_run_renders_the_report_tables_into_a_readme(pipeline, tmp_path):
    from sftmerge.pipelines.results import keep, render_readme

    out, _, md, _ = pipeline
    keep(str(out), str(tmp_path / "kept"))
    assert not list((tmp_path / "kept").rglob("*.safetensors")) and (tmp_path / "kept" / "report.json").is_file()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results kept paft -->\n<!-- /results -->\n\n<!-- results kept paft part=paired -->\n"
                      "<!-- /results -->\n")
    render_readme(str(readme))
    text = readme.read_text()
    for line in text.splitlines():  # the README's tables are the report's own lines
        assert not line.startswith("| ") or line in md, line
    assert "| paft | sft-dpo | exact match |" in text and "| sft-l1 | " in text


def test_pipeline_rerun_skips_finished_steps(pipeline, tiny_bf16_base):
    from sftmerge.pipelines.paft import run_paft

    out = pipeline[0]
    before = (out / "dpo" / "model.safetensors").stat().st_mtime_ns
    lines = []
    run_paft(sft_config(tiny_bf16_base), dpo_config(tiny_bf16_base), L1, str(out), eval_limit=4, max_new_tokens=8,
             echo=lines.append)
    assert (out / "dpo" / "model.safetensors").stat().st_mtime_ns == before
    assert sum("already" in ln or "skipped" in ln for ln in lines) >= 6


# ---------------------------------------------------------------- data and errors

def test_arith_rejected_has_one_wrong_step_and_a_wrong_answer():
    from sftmerge.data.pairs import extract_answer

    prefs = load_preferences("arith", limit=50, seed=3)
    assert prefs == load_preferences("arith", limit=50, seed=3)  # seeded
    for p in prefs:
        assert extract_answer(p.rejected, strict=True) != extract_answer(p.chosen, strict=True)
        good, bad = p.chosen.split(". "), p.rejected.split(". ")
        first = next(i for i, (a, b) in enumerate(zip(good, bad)) if a != b)
        assert good[:first] == bad[:first]  # identical up to the wrong step
    variants = {wrong_step("2 * 3 = 6. 10 + 6 = 16.\n#### 16", random.Random(s)) for s in range(20)}
    assert len(variants) > 3
    for v in variants:  # exactly one step result wrong, the final answer wrong
        assert not v.endswith("#### 16")
        assert sum(a != b for a, b in zip(re.findall(r"= (-?\d+)", v), ["6", "16"])) == 1


def test_ultrafeedback_local_copy_in_its_hub_layout(tmp_path):
    """ultrafeedback:DIR reads DIR/train_prefs.jsonl rows as the Hub dataset has them."""
    from sftmerge.data.preference import to_dpo_dataset

    rows = [{
        "prompt": f"Question {i}?", "prompt_id": f"id{i}",
        "chosen": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Good {i}."}],
        "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Bad {i}."}],
        "messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Good {i}."}],
        "score_chosen": 8.0, "score_rejected": 3.0,
    } for i in range(3)]
    (tmp_path / "train_prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefs = load_preferences(f"ultrafeedback:{tmp_path}", limit=2)
    assert [(p.id, p.prompt, p.chosen, p.rejected) for p in prefs] == [
        ("id0", "Question 0?", "Good 0.", "Bad 0."), ("id1", "Question 1?", "Good 1.", "Bad 1.")]
    ds = to_dpo_dataset(prefs)
    assert ds[0]["chosen"][-1]["content"] == "Good 0." and ds[0]["rejected"][-1]["content"] == "Bad 0."
    with pytest.raises(SftmergeError, match="test_prefs.jsonl does not exist"):
        load_preferences(f"ultrafeedback:{tmp_path}", split="test")


def test_preference_data_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(SftmergeError, match="record 1: missing field\\(s\\) rejected"):
        load_preferences(f"jsonl:{bad}")
    with pytest.raises(SftmergeError, match="does not exist"):
        load_preferences(f"jsonl:{tmp_path / 'none.jsonl'}")
    with pytest.raises(SftmergeError, match="unknown preference data"):
        load_preferences("hh-rlhf")


def test_negative_l1_and_unknown_dpo_keys_are_one_line_errors(tiny_bf16_base, tmp_path):
    runner = CliRunner()
    sft_yaml = tmp_path / "s.yaml"
    sft_yaml.write_text(f"base: {tiny_bf16_base}\noutput_dir: {tmp_path / 'run'}\n")
    r = runner.invoke(main, ["train", "sft", str(sft_yaml), "--l1", "-0.1"])
    assert r.exit_code == 1 and r.output.startswith("error: config ") and r.output.count("\n") == 1
    assert "l1 must be >= 0 (got -0.1)" in r.output
    dpo_yaml = tmp_path / "d.yaml"
    dpo_yaml.write_text(f"base: {tiny_bf16_base}\nbeta_: 0.1\noutput_dir: {tmp_path / 'dpo'}\n")
    r = runner.invoke(main, ["train", "dpo", str(dpo_yaml)])
    assert r.exit_code == 1 and "unknown key(s) 'beta_' (did you mean 'beta'?)" in r.output
    assert r.output.count("\n") == 1
    with pytest.raises(SftmergeError, match="needs lora: false"):
        config_from_dict({"l1": 0.1, "lora": True})
    assert not (tmp_path / "run").exists() and not (tmp_path / "dpo").exists()


def test_merge_of_runs_from_different_bases_is_refused(pipeline, tmp_path):
    out = pipeline[0]
    text = (out / "recipes" / "paft.yml").read_text().replace(f"{out}/dpo", f"{out}/sft-dpo")
    recipe = tmp_path / "mixed.yml"
    recipe.write_text(text)
    r = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "m")])
    assert r.exit_code == 1 and "trained from different base weights" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "m").exists()
