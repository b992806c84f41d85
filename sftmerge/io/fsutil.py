"""Output folders that appear only when complete and never destroy what they were made from.

`atomic_output_dir` writes to a hidden temp sibling, marks it as made here, fsyncs it and
renames it into place. It refuses an output that is, contains or lies inside one of the
command's inputs, and replaces an existing folder only if this project wrote it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from sftmerge.errors import SftmergeError

# Written into every output folder `atomic_output_dir` creates: only such folders are ever replaced.
OUTPUT_MARKER = ".sftmerge-output"
_MARKER_TEXT = "Written by sftmerge. A folder holding this file may be replaced by an sftmerge command run with --overwrite.\n"


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                     legacy_marks: Sequence[str] = ()) -> None:
    """Raise SftmergeError (one line) unless `out` may be written; `atomic_output_dir` calls it first.

    `inputs` are the paths the command reads (Hub ids and missing paths are skipped).
    `legacy_marks` are files that together show an older sftmerge wrote the folder,
    before the marker existed, so such folders can still be replaced with `overwrite`.
    """
    out = Path(out)
    check_not_an_input(out, inputs)
    if out.is_symlink():
        raise SftmergeError(f"output path {out} is a symbolic link; name the folder itself")
    if out.exists() and not out.is_dir():
        raise SftmergeError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not made_here(out, legacy_marks):
            raise SftmergeError(f"output folder {out} exists and was not written by sftmerge (no {OUTPUT_MARKER}); "
                                "it is never replaced, not even with --overwrite: choose another output or remove it")
        if not overwrite:
            raise SftmergeError(f"output folder {out} already exists and is not empty (use --overwrite)")


def check_not_an_input(out: Path, inputs: Iterable) -> None:
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None:
            continue
        path = Path(given).expanduser()
        if not path.exists():  # a Hub id or a missing path: nothing here to destroy
            continue
        source = path.resolve()
        if source == target:
            relation = "is"
        elif source.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(source):
            relation = "lies inside"
        else:
            continue
        raise SftmergeError(f"output {out} {relation} the input {given}; choose an output outside every input")


def made_here(folder: Path, legacy_marks: Sequence[str] = ()) -> bool:
    if (folder / OUTPUT_MARKER).is_file():
        return True
    return bool(legacy_marks) and all((folder / m).is_file() for m in legacy_marks)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (),
                      legacy_marks: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes `out` only if the block succeeds.

    Checks `out` first (`check_output_dir`). An existing folder is replaced only after
    the new content is complete and on disk (files and folders fsynced before the
    rename). On failure nothing named `out` changes. Temp folders of earlier runs whose
    process is gone (killed) are removed first.
    """
    out = Path(out)
    inputs = list(inputs)
    clean_stale(out)  # first: it may put back an `out` a killed run had moved aside
    check_output_dir(out, overwrite, inputs, legacy_marks)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(out, "tmp"), dir=out.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        fsync_tree(tmp)
        # The block may have taken hours: check again what it may replace.
        check_output_dir(out, overwrite, inputs, legacy_marks)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=owned_prefix(out, "old"), dir=out.parent))
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- temp folders owned by a process ---------------------------------------------------
# `.<out>.tmp-<host>-<pid>-<random>` (the new content) and `.<out>.old-<host>-<pid>-<random>`
# (the old content between the two renames): the next run removes those of dead processes.


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def owned_prefix(out: Path, kind: str) -> str:
    """The name prefix of this process's temp folders for `out` (kind: tmp or old)."""
    return f".{out.name}.{kind}-{_host()}-{os.getpid()}-"


def _owner_pid(name: str, prefix: str) -> Optional[int]:
    """The pid in a temp folder name made on this host, else None."""
    host, _, rest = name[len(prefix):].partition("-")
    pid = rest.partition("-")[0]
    return int(pid) if host == _host() and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(out: Path) -> None:
    """Remove temp folders of `out` left by killed runs on this host; restore an old `out`
    whose replacement was interrupted between its two renames."""
    for kind in ("tmp", "old"):
        prefix = f".{out.name}.{kind}-"
        for path in sorted(out.parent.glob(f"{glob.escape(prefix)}*")):
            pid = _owner_pid(path.name, prefix)
            if pid is None or not path.is_dir() or path.is_symlink() or _alive(pid):
                continue
            if kind == "old" and not out.exists():
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


# --- durability ------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (symlinks are not followed)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def _replace_with(path: Path, data: str) -> None:
    """Write a sibling temp file, fsync it, rename it over `path`: a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    import json

    _replace_with(Path(path), json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temp file in the same folder, then rename)."""
    _replace_with(Path(path), text)


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write one JSON object per line atomically."""
    import json

    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
