"""Read Hugging Face model folders tensor by tensor (safetensors, single file or sharded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Sequence, Tuple

from sftmerge.errors import SftmergeError

if TYPE_CHECKING:
    import torch


def weight_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SftmergeError(f"{folder} has no *.safetensors weights")
    return files


# safetensors itself refuses headers above 100 MB; a larger length is garbage, not a header.
MAX_HEADER_BYTES = 100_000_000


def read_header(file: Path) -> dict:
    """The safetensors JSON header (names, dtypes, shapes) without reading any tensor.

    A file that is not a whole safetensors file (garbage length, header that is not the
    expected JSON, tensors running past the end) is one SftmergeError line.
    """
    size = Path(file).stat().st_size
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if size < 8 or not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise SftmergeError(f"{file} is not a safetensors file: header length {n} does not fit its {size} bytes")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SftmergeError(f"{file} is not a safetensors file: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise SftmergeError(f"{file} is not a safetensors file: its header is not a JSON object")
    data_bytes = size - 8 - n
    for name, info in header.items():
        if name != "__metadata__" and not _entry_fits(info, data_bytes):
            raise SftmergeError(f"{file} is damaged: tensor {name} has no valid shape or lies past the end of the file")
    return header


def _entry_fits(info, data_bytes: int) -> bool:
    if not isinstance(info, dict):
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and x >= 0 for x in xs)  # noqa: E731
    return (isinstance(info.get("dtype"), str) and ints(shape) and ints(offsets) and len(offsets) == 2
            and offsets[0] <= offsets[1] <= data_bytes)


def read_config(folder: str | Path) -> dict:
    """A model folder's config.json as a mapping; anything else is one SftmergeError line."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SftmergeError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError):
        raise SftmergeError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict):
        raise SftmergeError(f"{path} is not a JSON object")
    return config


def shapes(folder: str | Path) -> Dict[str, Tuple[int, ...]]:
    out: Dict[str, Tuple[int, ...]] = {}
    for f in weight_files(folder):
        for name, info in read_header(f).items():
            if name != "__metadata__":
                out[name] = tuple(info["shape"])
    return out


def architecture(folder: str | Path) -> str:
    cfg = read_config(folder)
    return ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")])


def tensor_index(folder: str | Path) -> Dict[str, Path]:
    """Tensor name -> the file holding it."""
    return {
        name: f for f in weight_files(folder) for name in read_header(f) if name != "__metadata__"
    }


def iter_tensors(folders: Sequence[str | Path]) -> Iterator[Tuple[str, List["torch.Tensor"]]]:
    """(name, [one tensor per folder]) for every tensor all FOLDERS share, one name at a time."""
    from safetensors import SafetensorError, safe_open

    indexes = [tensor_index(f) for f in folders]
    for name in sorted(set.intersection(*(set(i) for i in indexes))):
        tensors = []
        for index in indexes:
            try:
                with safe_open(str(index[name]), "pt") as fh:
                    tensors.append(fh.get_tensor(name))
            except SafetensorError as e:
                raise SftmergeError(f"cannot read tensor {name} of {index[name]}: {e}") from None
        yield name, tensors
