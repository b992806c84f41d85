"""Prompts do not depend on the backend, and the code tasks are lm-eval's own prompts."""

from __future__ import annotations

import ast
import importlib.util

import pytest
import yaml

from tests.common import SHARED_DATA, needs_shared_data
from sftmerge.errors import SftmergeError
from sftmerge.eval.backends import chat_prompt, load_model, resolve_backend, vllm_usable
from sftmerge.eval.lm_eval_tasks import LM_TASKS_DIR, lm_eval_gsm8k_yaml
from sftmerge.eval.tasks import EvalSettings


def _recorded(model_dir, task, settings, workdir, monkeypatch, backend="hf"):
    """What task code hands a real backend (the backends.py calls it makes), in order."""
    from sftmerge.eval import backends
    from sftmerge.eval.tasks import runner

    sent = []

    def recording(name):
        real = getattr(backends, name)

        def call(model, *args, **kwargs):
            sent.append((name, args))
            return real(model, *args, **kwargs)

        return call

    module = __import__(runner(task).__module__, fromlist=["_"])
    for name in ("generate", "continuation_logprobs", "generate_and_score"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, recording(name))
    runner(task)(load_model(str(model_dir), backend, batch_size=4, seed=1234), settings, workdir)
    return sent


def test_arith_sends_the_chat_templated_problems_and_nothing_else(tiny_chat_model, tmp_path, monkeypatch):
    """Prompts come from the model folder's tokenizer and the data, never from a backend."""
    from transformers import AutoTokenizer

    from sftmerge.data.pairs import load_pairs

    sent = _recorded(tiny_chat_model, "arith", EvalSettings(limit=2, max_new_tokens=4), tmp_path, monkeypatch)
    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    pairs = load_pairs("arith", split="test", limit=2)
    prompts = [chat_prompt(tok, p.prompt) for p in pairs]
    assert sent == [("generate_and_score", (prompts, [p.response for p in pairs], 4, []))]
    assert prompts[0].startswith("<|im_start|>system") and prompts[0].endswith("<|im_start|>assistant\n")


@needs_shared_data
def test_alpaca_sends_the_chat_templated_instructions(tiny_chat_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from sftmerge.eval.alpaca import load_prompts_and_references

    sent = _recorded(tiny_chat_model, "alpaca", EvalSettings(limit=2, data_dir=SHARED_DATA, max_new_tokens=4),
                     tmp_path, monkeypatch)
    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    prompts = load_prompts_and_references(SHARED_DATA)[0][:2]
    assert sent == [("generate", ([chat_prompt(tok, p["instruction"]) for p in prompts], 4))]


@pytest.mark.slow
@pytest.mark.skipif(not vllm_usable(), reason="vLLM cannot run here (no GPU and no CPU build)")
def test_vllm_and_hf_backends_receive_identical_requests(tiny_chat_model, tmp_path, monkeypatch):
    settings = EvalSettings(limit=2, max_new_tokens=4)
    assert (_recorded(tiny_chat_model, "arith", settings, tmp_path, monkeypatch, "vllm")
            == _recorded(tiny_chat_model, "arith", settings, tmp_path, monkeypatch, "hf"))


def test_chat_prompt_uses_the_models_template(tiny_chat_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    text = chat_prompt(tok, "What is 2 + 2?")
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    tok.chat_template = None
    assert chat_prompt(tok, "What is 2 + 2?") == "What is 2 + 2?"


def test_backend_names_are_checked():
    assert resolve_backend("hf") == "hf"
    with pytest.raises(SftmergeError, match="unknown backend 'tpu'"):
        resolve_backend("tpu")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_auto_means_hf_and_vllm_is_refused():
    assert resolve_backend("auto") == "hf"
    with pytest.raises(SftmergeError, match="vLLM is not importable"):
        resolve_backend("vllm")


def _yaml(path):
    loader = type("KeepTags", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda l, node: f"!function {l.construct_scalar(node)}")
    return yaml.load(path.read_text(), Loader=loader)


SAME_KEYS = ["output_type", "test_split", "doc_to_text", "doc_to_target", "target_delimiter", "generation_kwargs",
             "repeats", "num_fewshot", "dataset_path", "dataset_name"]


@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_code_tasks_are_lm_evals_prompts(task):
    stock_dir = lm_eval_gsm8k_yaml().parent.parent / task
    stock, ours = _yaml(stock_dir / f"{task}.yaml"), _yaml(LM_TASKS_DIR / f"sftmerge_{task}.yaml")
    for key in SAME_KEYS:
        assert ours.get(key) == stock.get(key), key
    if task == "mbpp":
        assert ours["fewshot_config"] == stock["fewshot_config"]  # the examples: next test


def _returned_literal(path, function):
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    return ast.literal_eval(ret.value)


def test_mbpp_fewshot_examples_are_lm_evals():
    # lm-eval's mbpp/utils.py cannot be imported offline (it loads code_eval from the Hub): compare source.
    stock = _returned_literal(lm_eval_gsm8k_yaml().parent.parent / "mbpp" / "utils.py", "list_fewshot_samples")
    ours = _returned_literal(LM_TASKS_DIR / "utils.py", "list_fewshot_samples")
    assert ours == stock and [s["task_id"] for s in ours] == [2, 3, 4]
