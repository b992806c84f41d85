"""The shape of a Llama-style decoder, read from its config alone (no weights), for the planner.

`read_architecture(ref)` takes a model folder, a `config.json` or a Hub id (through
`transformers.AutoConfig`, so the Hub cache or `HF_HUB_OFFLINE` decide whether it goes
online) and returns the few numbers the memory formulas need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sftmerge.errors import SftmergeError
from sftmerge.io.sources import looks_like_hub_id

# Decoders whose blocks are RMSNorm -> attention (RoPE, grouped KV) -> RMSNorm -> SwiGLU MLP.
LLAMA_STYLE = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class Architecture:
    name: str  # what the user named: folder, file or Hub id
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool  # qwen2, or llama's attention_bias (which also biases o_proj)
    o_bias: bool
    mlp_bias: bool

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_parameters(self) -> int:
        """One decoder block: q, k, v, o, gate, up, down, two RMSNorm weights, and any biases."""
        h, i = self.hidden, self.intermediate
        attention = h * self.q_width + 2 * h * self.kv_width + self.q_width * h
        attention += (self.q_width + 2 * self.kv_width) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        return attention + mlp + 2 * h

    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    def parameters(self) -> int:
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.embedding_parameters() + self.layers * self.layer_parameters() + self.hidden + head

    def largest_unit(self) -> int:
        """The most parameters FSDP / ZeRO-3 gathers at once when wrapping per decoder block."""
        return max(self.layer_parameters(), self.embedding_parameters())

    def describe(self) -> str:
        return (f"{self.model_type}, {self.parameters() / 1e9:.2f}B parameters, {self.layers} layers, "
                f"hidden {self.hidden}, {self.heads} heads ({self.kv_heads} KV), MLP {self.intermediate}, "
                f"vocab {self.vocab}")


def architecture_from_dict(cfg: dict, name: str) -> Architecture:
    """The numbers of a config.json mapping; one-line errors for what the formulas cannot cover."""
    model_type = cfg.get("model_type")
    if model_type not in LLAMA_STYLE:
        raise SftmergeError(f"{name}: model_type {model_type!r} is not a Llama-style decoder "
                            f"(the planner knows {', '.join(LLAMA_STYLE)})")
    need = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"]
    missing = [k for k in need if not isinstance(cfg.get(k), int) or cfg[k] < 1]
    if missing:
        raise SftmergeError(f"{name}: config lacks a positive {', '.join(missing)}")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    attention_bias = bool(cfg.get("attention_bias", False))
    return Architecture(
        name=name, model_type=model_type, hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
        heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
        intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )


def read_architecture(ref: str) -> Architecture:
    """From a model folder, a config.json file, or a Hub id (AutoConfig; no weights are read)."""
    path = Path(ref)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise SftmergeError(f"{ref}: no config.json in this folder")
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SftmergeError(f"{path}: not a readable JSON config ({e})") from None
        if not isinstance(cfg, dict):
            raise SftmergeError(f"{path}: not a JSON object")
        return architecture_from_dict(cfg, str(ref))
    if not looks_like_hub_id(ref):
        raise SftmergeError(f"{ref}: no such model folder or config.json")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SftmergeError(f"{ref}: cannot read its config from the Hub or its cache ({first}); "
                            f"give a local folder or config.json") from None
    return architecture_from_dict(cfg.to_dict(), ref)
