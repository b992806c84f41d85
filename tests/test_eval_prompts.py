"""Prompts do not depend on the backend, and the code tasks are lm-eval's own prompts."""

from __future__ import annotations

import ast
import dataclasses

import pytest
import yaml

from conftest import SHARED_DATA
from sftmerge.errors import SftmergeError
from sftmerge.eval.backends import chat_prompt, load_model, resolve_backend, vllm_usable
from sftmerge.eval.lm_eval_tasks import LM_TASKS_DIR, lm_eval_gsm8k_yaml
from sftmerge.eval.tasks import EvalSettings


class RecordingLM:
    """Passes requests on to a real lm-eval LM and keeps the strings it was sent."""

    def __init__(self, lm):
        self.lm, self.sent = lm, []

    def generate_until(self, requests, *args, **kwargs):
        self.sent += [("generate_until", r.args[0]) for r in requests]
        return self.lm.generate_until(requests, *args, **kwargs)

    def loglikelihood(self, requests, *args, **kwargs):
        self.sent += [("loglikelihood", r.args) for r in requests]
        return self.lm.loglikelihood(requests, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.lm, name)


@pytest.mark.parametrize("task", ["arith", "alpaca"])
def test_backend_choice_does_not_change_prompts(tiny_chat_model, tmp_path, task):
    """The same task code, run once as the hf and once as the vllm backend, sends identical requests.

    vLLM cannot run on this CPU-only machine, so both runs generate with the same HF
    model; what is compared is everything the task code hands to the backend.
    """
    from sftmerge.eval.tasks import runner

    hf = load_model(str(tiny_chat_model), "hf", batch_size=4, seed=1234)
    settings = EvalSettings(limit=2, data_dir=SHARED_DATA, max_new_tokens=4)
    sent = {}
    for backend in ("hf", "vllm"):
        recorder = RecordingLM(hf.lm)
        model = dataclasses.replace(hf, backend=backend, lm=recorder)
        runner(task)(model, settings, tmp_path)
        sent[backend] = recorder.sent
    assert sent["hf"] == sent["vllm"] and len(sent["hf"]) >= 2
    first = sent["hf"][0][1]
    assert first.startswith("<|im_start|>system") and first.endswith("<|im_start|>assistant\n")


def test_chat_prompt_uses_the_models_template(tiny_chat_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    text = chat_prompt(tok, "What is 2 + 2?")
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    tok.chat_template = None
    assert chat_prompt(tok, "What is 2 + 2?") == "What is 2 + 2?"


def test_backend_resolution_here():
    assert resolve_backend("hf") == "hf"
    assert resolve_backend("auto") == ("vllm" if vllm_usable() else "hf")
    if not vllm_usable():
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
