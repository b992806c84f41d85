"""The I/O floor of a merge: what no merge method can beat, measured on the same inputs.

For every output tensor, the bytes of every input tensor the method reads are read once
with plain positioned reads (`readinto` at the tensor's offset in its safetensors shard:
one copy out of the page cache, no mapping, nothing kept resident), the first model's
into a fresh tensor and the others into one reused buffer. The first model's tensor is
then written through mergekit's own `TensorWriter` with mergekit's default shard size,
so the output has the merge's shard layout. No arithmetic, no selection. `bench.merge`
runs it in its own process like every merge and divides each method's wall time by it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
          "I32": "int32", "U8": "uint8", "BOOL": "bool"}
# name -> (shard file, first byte, end byte, safetensors dtype, shape)
Ranges = Dict[str, Tuple[Path, int, int, str, List[int]]]


def tensor_ranges(folder: Path) -> Ranges:
    """Where each tensor's bytes lie in a model folder's safetensors shards (read from their headers)."""
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    ranges: Ranges = {}
    for shard in shards:
        path = folder / shard
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                first, end = meta["data_offsets"]
                ranges[name] = (path, 8 + size + first, 8 + size + end, meta["dtype"], meta["shape"])
    return ranges


def inputs_of(recipe: dict) -> List[str]:
    """The model folders a merge of `recipe` reads: the models, and the base when it has one."""
    models = [m["model"] for m in recipe["models"]]
    return models + ([recipe["base_model"]] if recipe.get("base_model") else [])


def copy_floor(recipe_path: str, out: str) -> int:
    """Read every input tensor's bytes once and write the first model's as the output; returns bytes read."""
    import torch
    from mergekit.io.tensor_writer import TensorWriter
    from mergekit.options import MergeOptions

    folders = [Path(f) for f in inputs_of(yaml.safe_load(Path(recipe_path).read_text()))]
    inputs = [tensor_ranges(folder) for folder in folders]
    files = {}
    scratch = bytearray(0)
    read = 0
    with TensorWriter(out, max_shard_size=MergeOptions().out_shard_size, safe_serialization=True) as writer:
        for name, (_, first, end, dtype, shape) in inputs[0].items():
            kept = torch.empty(end - first, dtype=torch.uint8)
            for k, ranges in enumerate(inputs):
                path, first, end, _, _ = ranges[name]
                if path not in files:
                    files[path] = open(path, "rb")
                fh = files[path]
                if k == 0:
                    target = memoryview(kept.numpy())
                else:
                    if len(scratch) < end - first:
                        scratch = bytearray(end - first)
                    target = memoryview(scratch)[: end - first]
                fh.seek(first)
                if fh.readinto(target) != end - first:
                    raise OSError(f"{path}: short read of {name}")
                read += end - first
            writer.save_tensor(name, kept.view(getattr(torch, DTYPES[dtype])).reshape(shape))
    for fh in files.values():
        fh.close()
    shutil.copy2(folders[0] / "config.json", Path(out) / "config.json")
    return read
