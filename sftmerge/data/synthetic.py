"""Synthetic Llama checkpoint families: one base plus K "fine-tuned" sub-models.

Each sub-model is the base plus a seeded random delta on a random fraction of the
elements; the rest stay exactly equal to the base, as many do after bf16 SFT (small
updates round back to the stored value). Used by the tests, the quickstart and the
merge benchmark; any size, written tensor by tensor so a 1B family needs no model
instance in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class FamilySpec:
    """What to generate; recorded as `family.json` next to the models."""

    k: int = 3
    seed: int = 0
    dtype: str = "bfloat16"
    changed_fraction: float = 0.7
    delta_std: float = 2e-3
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 256
    shard_bytes: int = 2 * 1024**3

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            architectures=["LlamaForCausalLM"],
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            vocab_size=self.vocab_size,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            torch_dtype=self.dtype,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )


# About 1.1B parameters (TinyLlama's shape): the benchmark's size.
BENCH_1B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
)


def _generator(*key) -> torch.Generator:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def parameter_shapes(spec: FamilySpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """Names and shapes of a LlamaForCausalLM's weights, without allocating them."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(spec.llama_config())
    return [(name, tuple(p.shape)) for name, p in model.state_dict().items()]


def base_tensor(spec: FamilySpec, name: str, shape) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=DTYPES[spec.dtype])
    t = torch.randn(shape, generator=_generator(spec.seed, "base", name)) * 0.02
    return t.to(DTYPES[spec.dtype])


def sub_model_tensor(spec: FamilySpec, base: torch.Tensor, name: str, k: int) -> torch.Tensor:
    g = _generator(spec.seed, "order", k, name)
    mask = torch.rand(base.shape, generator=g) < spec.changed_fraction
    delta = torch.randn(base.shape, generator=g) * spec.delta_std
    return (base.float() + delta * mask).to(base.dtype)


def _write_model(folder: Path, spec: FamilySpec, tensors: Iterator[Tuple[str, torch.Tensor]]) -> None:
    """Write config + safetensors shards of at most `spec.shard_bytes`, holding one shard in memory."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    spec.llama_config().save_pretrained(folder)
    parts: List[List[str]] = []  # tensor names per written part
    shard: Dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        save_file(shard, str(folder / f"part-{len(parts)}.safetensors"), metadata={"format": "pt"})
        parts.append(sorted(shard))
        shard.clear()

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > spec.shard_bytes:
            flush()
            size = 0
        shard[name] = t
        size += nbytes
    flush()
    if len(parts) == 1:
        (folder / "part-0.safetensors").rename(folder / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        (folder / f"part-{i}.safetensors").rename(folder / final)
        weight_map.update({n: final for n in names})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over tokens t0..tN, so the folder loads like any HF model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"t{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)


def write_family(out: Path, spec: FamilySpec, progress: bool = False) -> Dict[str, Path]:
    """Write `base/` and `order-0..K-1/` under `out`; returns {name: folder}."""
    from tqdm import tqdm

    out = Path(out)
    shapes = parameter_shapes(spec)
    folders = {"base": out / "base", **{f"order-{k}": out / f"order-{k}" for k in range(spec.k)}}

    def stream(which: Optional[int]):
        for name, shape in tqdm(shapes, desc=f"writing {'base' if which is None else f'order-{which}'}",
                                disable=not progress, leave=False):
            base = base_tensor(spec, name, shape)
            yield name, base if which is None else sub_model_tensor(spec, base, name, which)

    _write_model(folders["base"], spec, stream(None))
    for k in range(spec.k):
        _write_model(folders[f"order-{k}"], spec, stream(k))
    for folder in folders.values():
        write_tokenizer(folder, spec.vocab_size)
    (out / "family.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return folders
