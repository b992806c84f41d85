"""`sftmerge plan`: parameter counts, memory by strategy, tokens and time, the CLI, the
accelerate files and the paper-scale configs (all fast: configs only, no weights)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sftmerge.errors import SftmergeError
from sftmerge.train.plan import STRATEGIES, Setup, memory_per_device, plan, tokens_per_order
from sftmerge.train.plan_activations import activation_bytes
from sftmerge.train.plan_model import architecture_from_dict, read_architecture
from tests.common import REPO, tool

FIXTURES = REPO / "tests" / "fixtures" / "plan"
SMALL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
# By hand: embeddings 1000*64; per block q 64*64 + k, v 2*64*32 + o 64*64 + MLP 3*64*128 + norms 2*64
# = 36992; two blocks; final norm 64; lm_head 1000*64.
SMALL_PARAMS = 64000 + 2 * 36992 + 64 + 64000


def test_small_config_parameters_by_hand():
    arch = architecture_from_dict(SMALL, "small")
    assert arch.layer_parameters() == 36992
    assert arch.parameters() == SMALL_PARAMS == 202048


@pytest.mark.parametrize("folder, published", [
    ("llama-2-7b", 6_738_415_616), ("llama-2-70b", 68_976_648_192), ("tinyllama-1.1b", 1_100_048_384)])
def test_published_parameter_counts(folder, published):
    assert read_architecture(str(FIXTURES / folder)).parameters() == published


@pytest.mark.parametrize("extra", [
    {},
    {"model_type": "qwen2", "tie_word_embeddings": True},
    {"attention_bias": True, "mlp_bias": True, "head_dim": 32},
])
def test_count_matches_the_real_module(extra):
    """The formula against transformers' own modules, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = {**SMALL, **extra}
    cfg = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert architecture_from_dict(cfg.to_dict(), "x").parameters() == real


def test_state_bytes_are_parameters_times_bytes():
    arch = architecture_from_dict(SMALL, "small")
    P = SMALL_PARAMS
    mixed = memory_per_device(arch, Setup(devices=1, batch=1, max_length=8, precision="mixed"), "ddp")
    assert (mixed["weights"], mixed["master"], mixed["gradients"], mixed["optimizer"]) == (2 * P, 4 * P, 4 * P, 8 * P)
    assert mixed["gathered"] == 0
    fp32 = memory_per_device(arch, Setup(devices=1, batch=1, max_length=8, precision="fp32"), "ddp")
    assert (fp32["weights"], fp32["master"], fp32["gradients"], fp32["optimizer"]) == (4 * P, 0, 4 * P, 8 * P)
    bf16 = memory_per_device(arch, Setup(devices=1, batch=1, max_length=8, precision="bf16"), "ddp")
    assert (bf16["weights"], bf16["master"], bf16["gradients"], bf16["optimizer"]) == (2 * P, 0, 2 * P, 4 * P)
    assert mixed["total"] == sum(v for k, v in mixed.items() if k != "total")


def test_sharding_by_strategy():
    arch = architecture_from_dict(SMALL, "small")
    P, n = SMALL_PARAMS, 4
    setup = Setup(devices=n, batch=1, max_length=8, precision="mixed")
    zero2 = memory_per_device(arch, setup, "zero2")
    assert zero2["weights"] == 2 * P  # replicated
    assert (zero2["master"], zero2["gradients"], zero2["optimizer"]) == (P, P, 2 * P)  # 4P/4, 4P/4, 8P/4
    zero3 = memory_per_device(arch, setup, "zero3")
    assert zero3["weights"] == 2 * P // n
    # Two gathered units in bf16 plus one unit's fp32 gradient; here the largest unit is the embedding.
    assert zero3["gathered"] == 64000 * (2 * 2 + 4)
    assert memory_per_device(arch, setup, "fsdp") == zero3


@pytest.mark.parametrize("folder", ["llama-2-7b", "llama-2-70b", "tinyllama-1.1b"])
@pytest.mark.parametrize("precision", ["mixed", "fp32", "bf16"])
def test_strategies_ordered_for_several_devices(folder, precision):
    arch = read_architecture(str(FIXTURES / folder))
    for devices in (2, 8, 64):
        setup = Setup(devices=devices, batch=2, max_length=1024, precision=precision, checkpointing=True)
        t = {s: memory_per_device(arch, setup, s)["total"] for s in STRATEGIES}
        assert t["zero3"] <= t["zero2"] < t["ddp"] and t["fsdp"] == t["zero3"]
    one = Setup(devices=1, batch=2, max_length=1024, precision=precision)
    assert len({memory_per_device(arch, one, s)["total"] for s in STRATEGIES}) == 1  # nothing to shard


def test_activations_by_hand():
    arch = architecture_from_dict(SMALL, "small")
    tokens = 2 * 16
    # a(4h + 3kv) + a(h + 4i) + 2(r + 4)h, with a = 2, r = 4, h = 64, kv = 32, i = 128
    block = 2 * (4 * 64 + 3 * 32) + 2 * (64 + 4 * 128) + 2 * (4 + 4) * 64
    logits = tokens * 1000 * (2 + 4 + 4)
    full = activation_bytes(arch, 2, 16, 2, 4, checkpointing=False)
    assert full == 2 * block * tokens + block * tokens + logits
    kept = activation_bytes(arch, 2, 16, 2, 4, checkpointing=True)
    assert kept == 2 * 4 * 64 * tokens + 2 * block * tokens + logits
    big = read_architecture(str(FIXTURES / "llama-2-7b"))
    assert activation_bytes(big, 4, 2048, 2, 4, True) < activation_bytes(big, 4, 2048, 2, 4, False) / 5


def test_tokens_and_time():
    t = tokens_per_order("gsm8k", None, 512, 3, mean_tokens=200)
    assert (t.samples, t.per_order) == (7473, 7473 * 200 * 3)
    assert tokens_per_order("gsm8k:/x", 100, 512, 2).per_order == 100 * 512 * 2  # upper bound
    assert tokens_per_order("alpaca", None, 128, 1, mean_tokens=1000).mean_tokens == 128  # truncated
    arch = architecture_from_dict(SMALL, "small")
    out = plan(arch, Setup(devices=2, batch=1, max_length=8), 80, tokens=t, tokens_per_second=1000, orders=3)
    assert out["time"]["seconds_per_order"] == pytest.approx(7473 * 200 * 3 / 1000)
    assert out["time"]["seconds_all_orders"] == pytest.approx(3 * 7473 * 200 * 3 / 1000)
    with pytest.raises(SftmergeError, match="give --samples"):
        tokens_per_order("jsonl:/x", None, 512, 1)
    with pytest.raises(SftmergeError, match="--mean-tokens must be > 0"):
        tokens_per_order("gsm8k", None, 512, 1, mean_tokens=-5)


def test_fits_keeps_the_reserve():
    arch = read_architecture(str(FIXTURES / "llama-2-7b"))
    setup = Setup(devices=8, batch=4, max_length=512, checkpointing=True)
    total = memory_per_device(arch, setup, "fsdp")["total"] / 2**30
    assert plan(arch, setup, total + 2.01, strategies=["fsdp"])["per_device_bytes"]["fsdp"]["fits"]
    assert not plan(arch, setup, total + 1.99, strategies=["fsdp"])["per_device_bytes"]["fsdp"]["fits"]


def sftmerge(*args, env=None):
    return subprocess.run([tool("sftmerge"), "plan", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def sftmerge_here(*args):
    """`sftmerge plan` in this process (trl, which loading a training config imports, is loaded once)."""
    from click.testing import CliRunner

    from sftmerge.cli.main import main

    result = CliRunner().invoke(main, ["plan", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_table_and_json(tmp_path):
    proc = sftmerge(str(FIXTURES / "llama-2-70b"), "--gpus", "32", "--gpu-memory", "79.6", "--checkpointing",
                    "--batch-size", "1", "--max-length", "2048")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "68.98B parameters" in lines[0]
    header = next(x for x in lines if x.startswith("per device (GiB)"))
    assert header.split()[-4:] == ["ddp", "zero2", "fsdp", "zero3"]
    fits = next(x for x in lines if x.startswith("fits")).split()[-4:]
    assert fits == ["NO", "NO", "yes", "yes"]
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {FIXTURES / 'llama-2-7b'}\ndata: gsm8k\nnum_samples: 1000\nnum_train_epochs: 3\n"
                      f"per_device_train_batch_size: 2\nmax_length: 512\norders: 4\nprecision: bf16-mixed\n")
    out = json.loads(sftmerge_here(str(config), "--gpus", "8", "--gpu-memory", "40", "--strategy", "zero3",
                                   "--mean-tokens", "300", "--tokens-per-second", "1000", "--json"))
    assert list(out["per_device_bytes"]) == ["zero3"]
    assert out["tokens"]["per_order"] == 1000 * 300 * 3
    assert out["time"]["seconds_all_orders"] == pytest.approx(4 * 900.0)
    assert out["setup"] == {"devices": 8, "batch": 2, "max_length": 512, "precision": "mixed", "checkpointing": False}
    text = sftmerge_here(str(config), "--gpus", "8", "--gpu-memory", "40", "--mean-tokens", "300",
                         "--tokens-per-second", "1000")
    assert "tokens per order: 1000 samples (config num_samples) x 300 mean tokens (--mean-tokens) x 3 epochs" in text
    assert "15 min per order, 1 h 00 min for 4 orders one after another" in text


@pytest.mark.parametrize("args, message", [
    (["{empty}", "--gpu-memory", "80"], "no config.json in this folder"),
    (["{fixture}", "--gpu-memory", "80", "--gpus", "-2"], "--gpus must be at least 1 (got -2)"),
    (["{fixture}", "--gpu-memory", "-80"], "--gpu-memory must be > 0 (got -80.0)"),
    (["{fixture}", "--gpu-memory", "80", "--strategy", "zero4"], "unknown strategy 'zero4'"),
    (["{fixture}", "--gpu-memory", "80", "--samples", "-1"], "--samples must be at least 1 (got -1)"),
    (["{fixture}", "--gpu-memory", "80", "--batch-size", "0"], "batch must be at least 1 (got 0)"),
    (["{fixture}", "--gpu-memory", "80", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["{gpt2}", "--gpu-memory", "80"], "model_type 'gpt2' is not a Llama-style decoder"),
    (["does/not-exist-here", "--gpu-memory", "80"], "cannot read its config"),
])
def test_cli_one_line_errors(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2", "n_embd": 768}')
    where = {"{empty}": str(tmp_path / "empty"), "{fixture}": str(FIXTURES / "tinyllama-1.1b"),
             "{gpt2}": str(tmp_path / "gpt2")}
    proc = sftmerge(*[where.get(a, a) for a in args])
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
    assert message in proc.stderr and proc.stdout == ""


ACCELERATE = REPO / "train" / "accelerate"


@pytest.mark.parametrize("name, kind", [("ddp", "multi_gpu"), ("fsdp", "use_fsdp"), ("zero2", "use_deepspeed"),
                                        ("zero3", "use_deepspeed")])
def test_accelerate_files_load_and_validate(name, kind, monkeypatch):
    """Each file through accelerate's own config loader and `accelerate launch` argument checks,
    up to the environment the launcher would hand the processes (nothing is started)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE / f"{name}.yaml"
    assert load_config_from_file(str(path)).num_processes == 8
    monkeypatch.chdir(REPO)  # the DeepSpeed JSON paths are relative to the repository root
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "sftmerge.cli.main", "train", "sft", "c.yaml", "--order", "0"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    assert getattr(args, kind) and args.num_processes == 8
    if name in ("ddp", "fsdp"):
        from accelerate.utils.launch import prepare_multi_gpu_env

        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if name == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
        assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    if name.startswith("zero"):
        from accelerate.utils.deepspeed import HfDeepSpeedConfig
        from accelerate.utils.launch import prepare_deepspeed_cmd_env

        # As `accelerate launch` does before starting DeepSpeed: the accelerate-side fields must not
        # collide with the JSON file (DeepSpeedPlugin refuses mixed_precision, zero_stage, ... then).
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        ignored = {"gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                   "offload_param_device", "zero3_save_16bit_model", "mixed_precision"}
        assert not ignored & set(env["ACCELERATE_CONFIG_DS_FIELDS"].split(","))
        ds = HfDeepSpeedConfig(defaults.deepspeed_config["deepspeed_config_file"])
        assert ds.get_value("zero_optimization.stage") == int(name[-1])
        assert ds.get_value("bf16.enabled") == "auto"  # from the training config's precision


@pytest.mark.parametrize("task", ["gsm8k", "alpaca", "code"])
def test_paper_configs(task):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from sftmerge.train.config import load_config

    cfg = load_config(REPO / "train" / "configs" / f"paper_{task}.yaml")
    assert cfg.base == "meta-llama/Llama-2-7b-hf" and cfg.data == task and cfg.num_train_epochs == 3
    assert cfg.precision == "bf16-mixed" and cfg.gradient_checkpointing
    template = (REPO / cfg.sft_args["chat_template_path"]).read_text()
    render = ImmutableSandboxedEnvironment().from_string(template).render
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    prompt = render(messages=messages[:1], bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    full = render(messages=messages, bos_token="<s>", eos_token="</s>")
    assert prompt == "<s>[INST] 2+2? [/INST]" and full == prompt + " 4</s>"  # the prompt is a prefix
    out = json.loads(sftmerge_here(str(REPO / "train" / "configs" / f"paper_{task}.yaml"),
                                   "--base", str(FIXTURES / "llama-2-7b"), "--gpus", "8", "--gpu-memory", "79.6", "--json"))
    rows = out["per_device_bytes"]
    assert not rows["ddp"]["fits"] and rows["fsdp"]["fits"] and rows["zero3"]["fits"]


@pytest.mark.parametrize("name", ["research_arith", "research_gsm8k"])
def test_research_configs_keep_snapshots_for_figure_4_and_resume_points(name):
    """The research runs (docs/results/): each config loads, its snapshot steps fall inside every
    order's training, and a stopped run loses less than one snapshot interval."""
    from sftmerge.train.config import load_config

    cfg = load_config(REPO / "train" / "configs" / f"{name}.yaml")
    steps = cfg.num_samples // cfg.per_device_train_batch_size * cfg.num_train_epochs
    assert cfg.num_train_epochs == 3 and cfg.orders >= 3 and cfg.order_mode == "sample"
    assert 0 < cfg.keep_checkpoint_steps < steps and steps % cfg.keep_checkpoint_steps == 0
    assert cfg.save_steps <= cfg.keep_checkpoint_steps and cfg.keep_checkpoint_steps % cfg.save_steps == 0
