"""Output folders that appear only when complete: write to a temp sibling, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sftmerge.errors import SftmergeError


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes `out` only if the block succeeds.

    An existing non-empty `out` is an error unless `overwrite`; then it is replaced
    only after the new content is complete. On failure nothing named `out` changes.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SftmergeError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SftmergeError(f"output folder {out} already exists and is not empty (use --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write one JSON object per line atomically."""
    import json

    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
