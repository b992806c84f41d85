"""vLLM options and the GPU-set scheduler, checked on the CPU without vLLM; run-level eval inputs."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from tests.common import error_line
from sftmerge.cli.main import main
from sftmerge.errors import SftmergeError
from sftmerge.eval.gpu_schedule import deal, gpu_sets, parse_gpus, workers
from sftmerge.eval.vllm_options import parse_vllm_options


def _eval(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


def test_vllm_options_reach_the_engine_keywords():
    opts = parse_vllm_options(tp=2, gpu_memory=0.5, max_model_len=4096, dtype="bfloat16",
                              args=["enforce_eager=true", "swap_space=8", "kv_cache_dtype=fp8"])
    assert opts.engine_kwargs(on_gpu=True) == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "dtype": "bfloat16", "max_model_len": 4096,
        "enforce_eager": True, "swap_space": 8, "kv_cache_dtype": "fp8"}
    # Defaults: what the backend always used (0.8 of the memory; float32 on the CPU build).
    plain = parse_vllm_options().engine_kwargs(on_gpu=False)
    assert plain == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.8, "dtype": "float32"}
    assert parse_vllm_options().engine_kwargs(on_gpu=True)["dtype"] == "auto"
    # The flags a worker gets parse back to the same options.
    again = CliRunner().invoke(main, ["eval", "--help"]).output
    assert "--vllm-tp" in again and "--gpus" in again
    args = opts.cli_args()
    flags = dict(zip(args[0::2], args[1::2]))
    assert flags["--vllm-tp"] == "2" and flags["--vllm-dtype"] == "bfloat16"
    extra = [args[i + 1] for i, a in enumerate(args) if a == "--vllm-arg"]
    assert parse_vllm_options(2, 0.5, 4096, "bfloat16", extra) == opts


@pytest.mark.parametrize("kwargs, message", [
    ({"tp": 0}, "--vllm-tp must be at least 1"),
    ({"gpu_memory": 1.5}, "--vllm-gpu-memory is a fraction"),
    ({"max_model_len": 0}, "--vllm-max-model-len must be at least 1"),
    ({"dtype": "fp7"}, "--vllm-dtype 'fp7'"),
    ({"args": ["no-equals"]}, "is not KEY=VALUE"),
    ({"args": ["tensor_parallel_size=2"]}, "use --vllm-tp"),
])
def test_bad_vllm_options(kwargs, message):
    with pytest.raises(SftmergeError, match=message):
        parse_vllm_options(**kwargs)


def test_models_are_dealt_over_gpu_sets():
    assert gpu_sets(parse_gpus("0,1,2,3"), 2) == [["0", "1"], ["2", "3"]]
    assert deal(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert deal(["a"], 4) == [["a"]]  # idle sets get no worker
    jobs = workers(["m0", "m1", "m2"], ["0", "1", "2", "3"], 2, ["--tasks", "arith", "--backend", "vllm", "--vllm-tp", "2"])
    assert [j.gpus for j in jobs] == [["0", "1"], ["2", "3"]]
    assert [j.models for j in jobs] == [["m0", "m2"], ["m1"]]
    assert [j.env["CUDA_VISIBLE_DEVICES"] for j in jobs] == ["0,1", "2,3"]
    assert jobs[0].argv == [sys.executable, "-m", "sftmerge.cli.main", "eval", "--models", "m0", "m2", "--tasks",
                            "arith", "--backend", "vllm", "--vllm-tp", "2", "--worker"]
    for bad, message in (("0,1,2", "do not split"), ("0,x", "not a comma-separated"), ("1,1", "twice")):
        with pytest.raises(SftmergeError, match=message):
            gpu_sets(parse_gpus(bad), 2)


def test_bad_gpu_split_is_one_line(tiny_chat_model, tmp_path):
    line = error_line(_eval("--models", tiny_chat_model, "--tasks", "arith", "--backend", "hf", "--gpus", "0,1,2",
                            "--vllm-tp", "2", "--out", tmp_path / "out"))
    assert "3 GPUs do not split into sets of 2" in line


@pytest.fixture
def run_folder(tiny_chat_model, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_chat_model, run / "order-0")
    shutil.copytree(tiny_chat_model, tmp_path / "base")
    (run / "config.yaml").write_text(f"base: {tmp_path / 'base'}\ndata: code\n")
    return run


def test_run_tasks_and_base(run_folder, tmp_path):
    from sftmerge.eval.runner import run_base, run_tasks

    assert run_tasks(str(run_folder), allow_code_execution=True) == ["mbpp", "humaneval"]
    with pytest.raises(SftmergeError, match="add --allow-code-execution"):
        run_tasks(str(run_folder), allow_code_execution=False)
    (run_folder / "config.yaml").write_text(f"base: {tmp_path / 'base'}\ndata: arith\n")
    assert run_tasks(str(run_folder), False) == ["arith", "gsm8k", "gsm8k_trained"]
    assert run_base(str(run_folder)) == str(tmp_path / "base")
    (run_folder / "config.yaml").write_text("base: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    line = error_line(_eval("--run", run_folder, "--with-base", "--out", tmp_path / "out"))
    assert "not a local model folder" in line


def test_model_without_weights_is_one_line(tiny_chat_model, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(tiny_chat_model, empty)
    for f in empty.glob("*.safetensors"):
        f.unlink()
    out = tmp_path / "out"
    line = error_line(_eval("--models", empty, "--tasks", "arith", "--backend", "hf", "--out", out))
    assert "has no weights" in line and not out.exists()


def test_unknown_task_is_one_line(tiny_chat_model, tmp_path):
    out = tmp_path / "out"
    assert "unknown task 'gsm9k'" in error_line(_eval("--models", tiny_chat_model, "--tasks", "gsm9k", "--out", out))
    assert not out.exists()


@pytest.mark.slow
def test_run_on_two_gpu_sets_with_base_and_paired(tiny_chat_model, tmp_path):
    """`make eval`'s command on the CPU (HF backend, two "GPU sets"): every model of the run and its base,
    one summary, and the paired comparisons of the merge against each single model and the best one."""
    run = tmp_path / "run"
    for name in ("order-0", "order-1", "merged/select", "base"):
        shutil.copytree(tiny_chat_model, run / name if name != "base" else tmp_path / "base")
    (run / "config.yaml").write_text(f"base: {tmp_path / 'base'}\ndata: arith\n")
    out = tmp_path / "out"
    result = _eval("--run", run, "--with-base", "--tasks", "arith", "--limit", 3, "--max-new-tokens", 4,
                   "--backend", "hf", "--gpus", "0,1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "GPUs 0: 2 model(s)" in result.output and "GPUs 1: 2 model(s)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "order-0", "order-1", "select"}
    assert all(summary["cells"][m]["arith/exact_match"]["ci95"] is not None for m in summary["models"])
    paired = json.loads((out / "paired.json").read_text())["tasks"]["arith"]
    assert paired["best_single"] in ("order-0", "order-1")
    assert {(r["a"], r["b"], r["metric"]) for r in paired["rows"]} == {
        ("select", s, m) for s in ("order-0", "order-1") for m in ("exact match", "held-out loss")}
    assert "Against the best single model" in (out / "paired.md").read_text()
