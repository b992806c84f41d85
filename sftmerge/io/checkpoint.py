"""Read Hugging Face model folders tensor by tensor (safetensors, single file or sharded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Tuple

from sftmerge.errors import SftmergeError

if TYPE_CHECKING:
    import torch


def weight_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SftmergeError(f"{folder} has no *.safetensors weights")
    return files


def read_header(file: Path) -> dict:
    """The safetensors JSON header (names, dtypes, shapes) without reading any tensor."""
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n))


def shapes(folder: str | Path) -> Dict[str, Tuple[int, ...]]:
    out: Dict[str, Tuple[int, ...]] = {}
    for f in weight_files(folder):
        for name, info in read_header(f).items():
            if name != "__metadata__":
                out[name] = tuple(info["shape"])
    return out


def architecture(folder: str | Path) -> str:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")])


def tensor_index(folder: str | Path) -> Dict[str, Path]:
    """Tensor name -> the file holding it."""
    return {
        name: f for f in weight_files(folder) for name in read_header(f) if name != "__metadata__"
    }


def iter_pairs(model: str | Path, base: str | Path) -> Iterator[Tuple[str, "torch.Tensor", "torch.Tensor"]]:
    """(name, model tensor, base tensor) for every tensor the two folders share, one at a time."""
    from safetensors import safe_open

    mine, theirs = tensor_index(model), tensor_index(base)
    for name in sorted(set(mine) & set(theirs)):
        with safe_open(str(mine[name]), "pt") as a, safe_open(str(theirs[name]), "pt") as b:
            yield name, a.get_tensor(name), b.get_tensor(name)
