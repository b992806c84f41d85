"""Which files of a merged model folder `sftmerge push` uploads: an allow-list, nothing else.

A model folder collects other things over time (`.env` files, notes, symlinks into a home
folder); none of that may reach a Hub repository by accident. Symbolic links are never
followed, not even one named like an allowed file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

from sftmerge.errors import SftmergeError
from sftmerge.hub.card import CARD_NAME
from sftmerge.io.layout import RECIPE_NAME, REPORT_NAME

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
ALLOWED_NAMES = (
    "config.json", "generation_config.json",
    "model.safetensors.index.json", "pytorch_model.bin.index.json",
    # tokenizer files as transformers saves them
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    CARD_NAME, RECIPE_NAME, REPORT_NAME,
)
# Evaluation results copied beside the model: RESULTS_DIR/<task>.json, one level deep.
RESULTS_DIR = "results"
RESULTS_PATTERN = "*.json"


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    size: int


@dataclass(frozen=True)
class LeftOut:
    path: str
    why: str


def allowed_top_level(name: str) -> bool:
    return name in ALLOWED_NAMES or any(fnmatch.fnmatchcase(name, p) for p in WEIGHT_PATTERNS)


def upload_plan(folder: Path) -> Tuple[List[UploadFile], List[LeftOut]]:
    """(the files push uploads, everything else in the folder with why it stays out)."""
    kept: List[UploadFile] = []
    left: List[LeftOut] = []

    def visit(entry: os.DirEntry, rel: str, allowed) -> None:
        if entry.is_symlink():
            left.append(LeftOut(rel, "symbolic link"))
        elif entry.is_dir(follow_symlinks=False):
            left.append(LeftOut(rel + "/", "folder"))
        elif not entry.is_file(follow_symlinks=False):
            left.append(LeftOut(rel, "not a regular file"))
        elif allowed(entry.name):
            kept.append(UploadFile(rel, entry.stat(follow_symlinks=False).st_size))
        else:
            left.append(LeftOut(rel, "not on the allow-list"))

    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name == RESULTS_DIR and entry.is_dir(follow_symlinks=False):
            for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                visit(inner, f"{RESULTS_DIR}/{inner.name}", lambda n: fnmatch.fnmatchcase(n, RESULTS_PATTERN))
        else:
            visit(entry, entry.name, allowed_top_level)
    return kept, left


@contextlib.contextmanager
def opened_for_upload(folder: Path, plan: List[UploadFile]) -> Iterator[list]:
    """huggingface_hub commit operations over the planned files, each opened without following
    a symbolic link, so a file swapped for a link after the plan was made is refused."""
    from huggingface_hub import CommitOperationAdd

    with contextlib.ExitStack() as stack:
        operations = []
        for f in plan:
            path = folder / f.path_in_repo
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError as e:
                raise SftmergeError(f"{path} changed while pushing ({e.strerror or e}); nothing was uploaded") from None
            handle = stack.enter_context(os.fdopen(fd, "rb"))
            operations.append(CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=handle))
        yield operations
