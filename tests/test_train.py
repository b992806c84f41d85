"""Multi-order SFT on a tiny random Llama with SmolLM2's tokenizer: a few steps per order."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.common import tiny_llama
from sftmerge.errors import SftmergeError
from sftmerge.eval.losses import sample_losses
from sftmerge.train.config import SFTRunConfig, config_from_dict, load_config
from sftmerge.train.order import epoch_orders
from sftmerge.train.sft import run_multi_order

@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A 2-layer random Llama in bf16 with SmolLM2's tokenizer and chat template (tied embeddings)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "base", dtype="bfloat16", max_positions=512)


def cfg(tiny_base, out, **kw) -> SFTRunConfig:
    base = dict(base=str(tiny_base), data="arith", num_samples=12, output_dir=str(out), orders=2,
                num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-3, save_steps=2,
                logging_steps=1, max_length=128)
    base.update(kw)
    return SFTRunConfig(**base)


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def two_orders(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    lines = []
    config = cfg(tiny_base, out, keep_checkpoint_steps=3, sample_losses_at_checkpoints=True)
    run_multi_order(config, echo=lines.append, score_samples=sample_losses)
    return out, lines


def test_two_orders_differ_in_order_and_weights_not_in_start(two_orders, tiny_base):
    run, lines = two_orders
    assert [ln.split(":")[0] for ln in lines] == ["order-0", "order-1"]
    assert all("tokens/s" in ln and "final loss" in ln for ln in lines)
    o0, o1 = (json.loads((run / f"order-{k}" / "order.json").read_text()) for k in (0, 1))
    assert o0["epochs"] != o1["epochs"] and o0["epochs"][0] != o0["epochs"][1]
    for o in (o0, o1):
        assert all(sorted(e) == list(range(12)) for e in o["epochs"]) and len(o["epochs"]) == 2
    s0, s1 = (json.loads((run / f"order-{k}" / "summary.json").read_text()) for k in (0, 1))
    assert s0["initial_weights_fingerprint"] == s1["initial_weights_fingerprint"]
    assert s0["steps"] == s1["steps"] == 6
    w0, w1, wb = weights(run / "order-0"), weights(run / "order-1"), weights(tiny_base)
    assert set(w0) == set(w1) == set(wb)  # tied lm_head stays tied, as in the base
    assert all(t.dtype == torch.bfloat16 for t in w0.values())
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], wb[k]) for k in w0)


def test_order_folder_is_a_complete_hf_model(two_orders):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = two_orders[0] / "order-0"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "order.json",
                 "sample_losses.jsonl", "train_log.jsonl", "config.yaml", "summary.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                              add_generation_prompt=True)
    log = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in log) == 6
    # kept snapshots (step 3; the final step is the model itself), not the resume checkpoints
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-3"]
    assert not list(two_orders[0].glob(".order-*"))


def test_cpu_steps_run_packed_without_activation_checkpointing(two_orders):
    """Every step of a CPU run took train/packed_rows.py's path, which needs a KV cache in
    training: activation checkpointing stayed off, as the config says (TRL's default is on)."""
    out, _ = two_orders
    for k in range(2):
        summary = json.loads((out / f"order-{k}" / "summary.json").read_text())
        assert summary["packed_batches"] == summary["steps"] > 0


def test_sample_losses_cover_every_sample_once(two_orders):
    from sftmerge.data.pairs import load_pairs

    ids = [p.id for p in load_pairs("arith", limit=12)]
    for k in (0, 1):
        folder = two_orders[0] / f"order-{k}"
        rows = [json.loads(x) for x in (folder / "sample_losses.jsonl").read_text().splitlines()]
        first_epoch = json.loads((folder / "order.json").read_text())["epochs"][0]
        assert [r["id"] for r in rows] == ids
        assert sorted(r["position"] for r in rows) == list(range(12))
        assert all(first_epoch[r["position"]] == r["sample"] for r in rows)
        assert all(r["loss"] > 0 and r["tokens"] > 0 and set(r["loss_at_step"]) == {"3"} for r in rows)


def test_same_order_seed_gives_identical_weights(two_orders, tiny_base, tmp_path):
    run_multi_order(cfg(tiny_base, tmp_path / "again"), only=[1], echo=lambda s: None)
    a, b = weights(two_orders[0] / "order-1"), weights(tmp_path / "again" / "order-1")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "again" / "order-0").exists()


def test_finished_orders_are_skipped(two_orders, tiny_base):
    run = two_orders[0]
    before = (run / "order-0" / "model.safetensors").stat().st_mtime_ns
    lines = []
    run_multi_order(cfg(tiny_base, run, keep_checkpoint_steps=3, sample_losses_at_checkpoints=True),
                    echo=lines.append, score_samples=sample_losses)
    assert all("already finished" in ln for ln in lines) and len(lines) == 2
    assert (run / "order-0" / "model.safetensors").stat().st_mtime_ns == before


def test_resume_past_a_half_written_checkpoint_matches_uninterrupted(two_orders, tiny_base, tmp_path, monkeypatch):
    """Killed while saving the step-6 checkpoint (before its trainer_state.json): the rerun says so,
    falls back to checkpoint-4 and ends with the uninterrupted run's weights."""
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def killed_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise KeyboardInterrupt
        return save_rng_state(self, output_dir)

    config = cfg(tiny_base, tmp_path / "run")
    work = tmp_path / "run" / ".order-0.work" / "trainer"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save_rng_state", killed_at_step_6)
        with pytest.raises(KeyboardInterrupt):
            run_multi_order(config, only=[0])
    assert not (tmp_path / "run" / "order-0").exists()  # nothing that looks finished
    assert (work / "checkpoint-4" / "trainer_state.json").is_file()
    assert (work / "checkpoint-6").is_dir() and not (work / "checkpoint-6" / "trainer_state.json").exists()
    staged = work.parent / "final"  # what a kill while publishing the order would leave half-written
    (staged / "checkpoints" / "step-5.tmp").mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"partial")
    lines = []
    run_multi_order(config, only=[0], echo=lines.append)
    assert not (tmp_path / "run" / "order-0" / "checkpoints" / "step-5.tmp").exists()
    assert "checkpoint-6 incomplete" in lines[0] and "resuming from checkpoint-4" in lines[0]
    assert "resumed at step 4" in lines[-1]
    a, b = weights(two_orders[0] / "order-0"), weights(tmp_path / "run" / "order-0")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "run" / ".order-0.work").exists()


def test_failed_first_run_does_not_lock_the_run_folder(tiny_base, tmp_path):
    """A first run that fails before any checkpoint (here: max_length cuts off every response) leaves
    config.yaml behind; the corrected rerun replaces those settings. Once an order has a checkpoint,
    other settings are refused."""
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.step:
                raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(SftmergeError, match="12 pairs became 0 training rows"):  # every response cut off
        run_multi_order(cfg(tiny_base, run, orders=1, max_length=16))
    assert (run / "config.yaml").is_file() and not (run / "order-0").exists()
    lines = []
    with pytest.raises(KeyboardInterrupt):  # the corrected settings are taken; this one dies after step 2's checkpoint
        run_multi_order(cfg(tiny_base, run, orders=1), callbacks=[Crash(3)], echo=lines.append)
    assert "replacing them (differed in: max_length)" in lines[0]
    with pytest.raises(SftmergeError, match="differs in: learning_rate"):
        run_multi_order(cfg(tiny_base, run, orders=1, learning_rate=1e-4))
    assert (run / ".order-0.work" / "trainer" / "checkpoint-2").is_dir()


def test_rerun_with_other_settings_is_refused(two_orders, tiny_base):
    with pytest.raises(SftmergeError, match="differs in: learning_rate"):
        run_multi_order(cfg(tiny_base, two_orders[0], learning_rate=1e-4, keep_checkpoint_steps=3,
                            sample_losses_at_checkpoints=True), score_samples=sample_losses)


def test_recipes_merge_with_stock_mergekit(two_orders, tmp_path):
    run = two_orders[0]
    assert {p.name for p in (run / "recipes").iterdir()} >= {"select.yml", "resample.yml", "average.yml"}
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    for method in ("resample", "average"):  # the stock command's own function (its console script: test_merge.py)
        out = tmp_path / method
        mergekit_yaml.main([str(run / "recipes" / f"{method}.yml"), str(out)], standalone_mode=False)
        merged = weights(out)
        w0, w1 = weights(run / "order-0"), weights(run / "order-1")
        key = "model.layers.0.mlp.up_proj.weight"
        if method == "resample":  # every element comes whole from one of the two orders
            assert bool(((merged[key] == w0[key]) | (merged[key] == w1[key])).all())


def test_lora_is_merged_on_save(tiny_base, tmp_path):
    run_multi_order(cfg(tiny_base, tmp_path / "lora", orders=1, lora=True, lora_r=4, num_train_epochs=1),
                    echo=lambda s: None)
    w, wb = weights(tmp_path / "lora" / "order-0"), weights(tiny_base)
    assert set(w) == set(wb)  # plain weight names, no adapter tensors
    assert not torch.equal(w["model.layers.0.self_attn.q_proj.weight"], wb["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(w["model.layers.0.input_layernorm.weight"], wb["model.layers.0.input_layernorm.weight"])
    assert not (tmp_path / "lora" / "recipes").exists()  # K = 1: nothing to merge


def test_batch_order_ablation_keeps_batches():
    a = epoch_orders(22, 2, order_seed=5, order=0, mode="batch", global_batch=4)
    b = epoch_orders(22, 2, order_seed=5, order=1, mode="batch", global_batch=4)

    def batches(seq):
        return [tuple(sorted(seq[i:i + 4])) for i in range(0, len(seq), 4)]

    assert a != b and a[0] != a[1]
    for seq in a + b:
        assert sorted(seq) == list(range(22))
        assert sorted(batches(seq)[:-1]) == sorted(batches(a[0])[:-1])  # same composition
        assert batches(seq)[-1] == batches(a[0])[-1]  # the short batch stays last
    s = epoch_orders(22, 2, order_seed=5, order=0)
    assert sorted(batches(s[0])[:-1]) != sorted(batches(a[0])[:-1])
    assert epoch_orders(22, 3, 5, 0, reshuffle_each_epoch=False) == [s[0]] * 3


def test_batch_mode_trains(tiny_base, tmp_path):
    run_multi_order(cfg(tiny_base, tmp_path / "b", orders=1, order_mode="batch", num_train_epochs=1),
                    echo=lambda s: None)
    rec = json.loads((tmp_path / "b" / "order-0" / "order.json").read_text())
    assert rec["mode"] == "batch" and rec["global_batch"] == 4


# ---------------------------------------------------------------- config and CLI errors

def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(SftmergeError, match="unknown key.*'learning_rte' \\(did you mean 'learning_rate'\\?\\)"):
        config_from_dict({"learning_rte": 1e-4})
    with pytest.raises(SftmergeError, match="orders must be at least 1"):
        config_from_dict({"orders": 0})
    with pytest.raises(SftmergeError, match="order_mode"):
        config_from_dict({"order_mode": "shuffle"})
    with pytest.raises(SftmergeError, match="num_train_epochs"):
        config_from_dict({"num_train_epochs": "two"})
    with pytest.raises(SftmergeError, match="sft_args: packing"):
        config_from_dict({"sft_args": {"packing": True}})
    with pytest.raises(SftmergeError, match="not an argument of trl.SFTConfig"):
        config_from_dict({"sft_args": {"no_such_arg": 1}})


def test_default_config_loads():
    from sftmerge.train.config import DEFAULT_CONFIG

    c = load_config(DEFAULT_CONFIG)
    assert c.data == "arith" and c.base == "models/smollm2-135m-instruct" and c.orders == 3


def _bad_base(tiny_base, folder: Path, kind: str) -> Path:
    """A copy of the tiny base, broken in one way."""
    shutil.copytree(tiny_base, folder)
    weights = folder / "model.safetensors"
    if kind == "no_weights":
        weights.unlink()
    elif kind == "truncated_weights":  # a copy or download that stopped half-way
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "garbage_weights":
        weights.write_bytes(b"\x00" * 64 + b"not a safetensors file")
    elif kind == "no_chat_template":
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        tok_config = json.loads((folder / "tokenizer_config.json").read_text())
        tok_config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return folder


GSM8K_ROW = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\n#### 5"}
BAD_GSM8K = {
    "malformed": json.dumps(GSM8K_ROW) + "\n{\"question\": \"Ann has\n",
    "missing_answer": json.dumps({"question": "What is 2 + 2?"}) + "\n",
    "incomplete_answer": json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 is"}) + "\n",
}


@pytest.mark.parametrize(
    "yaml_text, args, message",
    [
        ("learning_rte: 0.1\n", [], "unknown key"),
        ("data: arith\n", ["--orders", "0"], "orders must be at least 1"),
        ("data: arith\n", ["--k", "0"], "orders must be at least 1"),
        ("data: arith\n", ["--learning-rate", "0"], "learning_rate must be > 0"),
        ("max_length: 0\n", [], "max_length must be at least 1"),
        ("lora: true\nlora_dropout: 1.5\n", [], "lora_dropout must be < 1"),
        ("data: arith\n", ["--optim", "adam_typo"], "optim 'adam_typo' is not a transformers optimizer"),
        ("data: gsm8k:/no/such/folder\n", [], "does not exist"),
        ("base: /no/such/model\n", [], "base /no/such/model not found"),
        ("base: BAD:no_weights\n", [], "no weights in that folder"),
        ("base: BAD:truncated_weights\n", [], "corrupt weights"),
        ("base: BAD:garbage_weights\n", [], "corrupt weights"),
        ("base: BAD:no_chat_template\n", [], "its tokenizer has no chat template"),
        ("data: GSM8K:malformed\n", [], "line 2 is not valid JSON"),
        ("data: GSM8K:missing_answer\n", [], "line 1 has no 'answer' text"),
        ("data: GSM8K:incomplete_answer\n", [], "the answer has no final '#### N'"),
        ("data: arith\n", ["--orders", "2", "--order", "2"], "outside 0..1"),
        ("x: [\n", [], "not valid YAML"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_nothing(tiny_base, tmp_path, yaml_text, args, message):
    """Every bad input is one `error:` line, found before a model is loaded or anything is written."""
    from sftmerge.cli.main import main

    path = tmp_path / "c.yaml"
    if yaml_text.startswith("base: BAD:"):
        kind = yaml_text.split(":")[2].strip()
        yaml_text = f"base: {_bad_base(tiny_base, tmp_path / 'bad-base', kind)}\n"
    if yaml_text.startswith("data: GSM8K:"):
        data = tmp_path / "gsm8k"
        data.mkdir()
        (data / "train.jsonl").write_text(BAD_GSM8K[yaml_text.split(":")[2].strip()])
        yaml_text = f"data: gsm8k:{data}\n"
    if "[" in yaml_text:
        text = yaml_text
    else:
        text = ("" if "base:" in yaml_text else f"base: {tiny_base}\n") + yaml_text
        text += f"output_dir: {tmp_path / 'run'}\n"
    path.write_text(text)
    result = CliRunner().invoke(main, ["train", "sft", str(path), *args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- base and scale-out

def test_base_smollm2_is_cached_hf_folder(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    from sftmerge.train.base import make_base

    start = time.time()
    assert make_base("smollm2", str(smollm2_dir))["cached"] is True
    assert time.time() - start < 1
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.dtype == torch.bfloat16 and not hasattr(config, "quantization_config")
    assert sum(t.numel() for t in weights(smollm2_dir).values()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
