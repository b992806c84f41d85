"""Training at scale: precision and load dtype, the text format for bases without a chat
template, concurrent `--order k` jobs on one run folder, and the combinations refused before
training. Several processes (DDP, FSDP2) are in tests/test_distributed.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.common import error_line
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.hardware import has_bf16, resolve_precision, weights_dtype
from sftmerge.train.sft import run_multi_order


def _no_chat_template(model: Path, folder: Path) -> Path:
    """A copy of `model` whose tokenizer has no chat template (like Llama-2-7b's base)."""
    shutil.copytree(model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return folder


@pytest.fixture(scope="module")
def plain_base(tiny_chat_model, tmp_path_factory):
    return _no_chat_template(tiny_chat_model, tmp_path_factory.mktemp("plain") / "base")


NEEDS_NO_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None,
                                        reason="deepspeed is installed: nothing to refuse")


def tiny_config(base, out, **kw) -> SFTRunConfig:
    values = dict(base=str(base), data="arith", num_samples=8, output_dir=str(out), orders=3, num_train_epochs=1,
                  per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, max_length=96, save_steps=50)
    values.update(kw)
    return SFTRunConfig(**values)


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---------------------------------------------------------------- precision


def test_precision_sets_the_load_dtype():
    assert weights_dtype("bf16") == torch.bfloat16  # pure bf16: no fp32 master weights
    for p in ("fp32", "bf16-mixed", "fp16"):  # fp32 weights are the master copy under autocast
        assert weights_dtype(p) == torch.float32
    if not has_bf16():  # this machine: auto trains in fp32 exactly as before
        assert resolve_precision("auto") == "fp32"


# ---------------------------------------------------------------- refused before training


def _cli_error(yaml_text: str, tmp_path: Path, env=None) -> str:
    from sftmerge.cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml_text + f"output_dir: {tmp_path / 'run'}\n")
    result = CliRunner().invoke(main, ["train", "sft", str(path)], env=env)
    line = error_line(result)
    assert not (tmp_path / "run").exists()  # nothing half-made
    return line


@pytest.mark.parametrize("yaml_text, env, message", [
    ("l1: 0.001\n", {"ACCELERATE_USE_FSDP": "true"}, "l1 with fsdp is not supported"),
    ("l1: 0.001\n", {"ACCELERATE_USE_DEEPSPEED": "true"}, "l1 with deepspeed is not supported"),
    ("l1: 0.001\nsft_args: {fsdp: full_shard}\n", None, "l1 with fsdp is not supported"),
    ("lora: true\n", {"ACCELERATE_USE_FSDP": "true"}, "lora with fsdp is not supported"),
    pytest.param("", {"ACCELERATE_USE_DEEPSPEED": "true"}, "is not installed here: pip install deepspeed",
                 marks=NEEDS_NO_DEEPSPEED),
    pytest.param("sft_args: {deepspeed: train/accelerate/zero3.json}\n", None, "pip install deepspeed",
                 marks=NEEDS_NO_DEEPSPEED),
    ("format: text\ntext_template: 'Q: {prompt}'\n", None, "text_template must hold {prompt} once and end with {response}"),
    ("format: text\ntext_template: '{response} {prompt}'\n", None, "must hold {prompt} once and end with {response}"),
    ("format: text\ntext_template: 'Q: {prompt {response}'\n", None, "text_template is not a format string"),
    ("format: html\n", None, "format"),
])
def test_bad_combinations_are_one_line_before_training(tiny_chat_model, tmp_path, yaml_text, env, message):
    assert message in _cli_error(f"base: {tiny_chat_model}\n" + yaml_text, tmp_path, env)


@pytest.mark.skipif(has_bf16(), reason="this machine has bf16: nothing to refuse")
@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed"])
def test_bf16_without_bf16_hardware_is_refused(tiny_chat_model, tmp_path, precision):
    line = _cli_error(f"base: {tiny_chat_model}\nprecision: {precision}\n", tmp_path)
    assert f"precision {precision} needs bf16 hardware" in line and "allow_emulated_bf16: true" in line


@pytest.mark.skipif(has_bf16() or torch.cuda.is_available(), reason="bf16 is native here: nothing to emulate")
def test_bf16_on_such_a_cpu_trains_when_asked(tiny_chat_model, tmp_path):
    config = tiny_config(tiny_chat_model, tmp_path / "run", orders=1, num_samples=4, precision="bf16",
                         allow_emulated_bf16=True)
    lines = []
    [summary] = run_multi_order(config, echo=lines.append)
    assert summary["precision"] == "bf16" and summary["steps"] == 1
    notes = [line for line in lines if line.startswith("note: precision bf16 is computed in software")]
    assert len(notes) == 1 and "slower than fp32" in notes[0], lines  # said once, when the run is set up
    trained, base = weights(tmp_path / "run" / "order-0"), weights(tiny_chat_model)
    assert any(not torch.equal(trained[n], base[n].to(trained[n].dtype)) for n in base)  # it learned something


def test_chat_format_still_needs_a_chat_template(plain_base, tmp_path):
    assert "its tokenizer has no chat template" in _cli_error(f"base: {plain_base}\n", tmp_path)


def test_text_template_splits_prompt_and_response():
    from sftmerge.data.pairs import Pair
    from sftmerge.train.trainer_inputs import to_text_dataset

    row = to_text_dataset([Pair(id="a", prompt="2+2?", response="4")], "Question: {prompt}\nAnswer: {response}")[0]
    assert row == {"prompt": "Question: 2+2?\nAnswer:", "completion": " 4"}


# ---------------------------------------------------------------- text format trains a plain base


@pytest.mark.slow
def test_text_format_trains_a_base_without_chat_template(plain_base, tmp_path):
    from transformers import AutoTokenizer

    from sftmerge.eval.losses import sample_losses
    from sftmerge.train.prepared import prepared_dataset, run_config

    config = tiny_config(plain_base, tmp_path / "run", orders=1, format="text")
    [summary] = run_multi_order(config, echo=lambda _: None, score_samples=sample_losses)
    assert summary["format"] == "text" and summary["text_template"] == config.text_template
    stored = run_config(tmp_path / "run")
    assert stored.format == "text" and stored.text_template == config.text_template
    # The loss covers the response and the EOS token only.
    pairs, dataset = prepared_dataset(stored)
    tok = AutoTokenizer.from_pretrained(plain_base)
    row = dataset[0]
    trained = [t for t in row["labels"] if t != -100]
    assert tok.decode(trained) == " " + pairs[0].response + tok.eos_token
    text = f"Question: {pairs[0].prompt}\nAnswer: {pairs[0].response}{tok.eos_token}"
    assert tok.decode(row["input_ids"]) in (text, f"{tok.bos_token}{text}")  # the template, nothing else


# ---------------------------------------------------------------- concurrent --order jobs


def test_training_pool_picks_the_workers_of_the_shortest_wall_time():
    """On 2 cores: a compute-matched single (K orders long) gets a core of its own and the orders
    run one after the other beside it; equal orders share the cores; memory's bound is kept."""
    from sftmerge.pipelines.train_pool import fastest, wall_time

    assert wall_time([5, 1, 1, 1, 1, 1], 2, 2) == 5.0  # the single beside the 5 orders: both end at 5
    assert wall_time([5, 1, 1, 1, 1, 1], 4, 2) == 6.5  # 4 workers: the single runs alone at the end
    assert fastest([5, 1, 1, 1, 1, 1], 4, 2) == 2
    assert fastest([3, 1, 1, 1], 4, 2) == 2
    assert wall_time([1, 1, 1], 3, 2) == 1.5 and fastest([1, 1, 1], 4, 2) == 3  # the demo's 3 orders
    assert fastest([1, 1, 1, 1], 4, 2) == 2  # 2 and 4 workers tie: the fewer
    assert fastest([1, 1, 1], 1, 2) == 0


@pytest.mark.slow
def test_orders_side_by_side_equal_the_sequential_run(tiny_chat_model, tmp_path):
    """The pipeline's training pool (pipelines/train_pool.py): two orders in two worker processes at
    once on one run folder give what one run in this process on one thread gives (the workers' thread
    count), bit for bit: the weights, config.yaml, recipes and per-sample losses, nothing left over."""
    from sftmerge.eval.losses import sample_losses
    from sftmerge.pipelines.train_pool import train_side_by_side

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_multi_order(tiny_config(tiny_chat_model, tmp_path / "seq", orders=2), only=[1], echo=lambda _: None,
                        score_samples=sample_losses)  # order 1 as the reference: orders train independently
    finally:
        torch.set_num_threads(threads)
    lines = []
    assert train_side_by_side(tiny_config(tiny_chat_model, tmp_path / "par", orders=2), [0, 1], False,
                              lines.append, requested=2)
    assert any("training 2 runs on 2 worker processes" in line for line in lines), lines
    a, b = weights(tmp_path / "seq" / "order-1"), weights(tmp_path / "par" / "order-1")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    losses = [(tmp_path / x / "order-1" / "sample_losses.jsonl").read_text() for x in ("seq", "par")]
    assert losses[0] == losses[1]
    for k in range(2):
        assert json.loads((tmp_path / "par" / f"order-{k}" / "summary.json").read_text())["threads"] == 1
    seq_cfg = (tmp_path / "seq" / "config.yaml").read_text()
    assert (tmp_path / "par" / "config.yaml").read_text() == seq_cfg.replace(str(tmp_path / "seq"), str(tmp_path / "par"))
    for recipe in sorted((tmp_path / "seq" / "recipes").iterdir()):
        par = (tmp_path / "par" / "recipes" / recipe.name).read_text()
        assert par == recipe.read_text().replace(str(tmp_path / "seq"), str(tmp_path / "par"))
    leftovers = [p.name for p in (tmp_path / "par").iterdir() if p.name.startswith(".") and p.name != ".sftmerge.lock"]
    assert leftovers == []