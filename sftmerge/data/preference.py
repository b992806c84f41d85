"""Preference data for DPO/ORPO: (prompt, chosen, rejected) triples.

A preference spec is one of:

- `arith`: built in. Prompts and correct solutions from the arith generator
  (`sftmerge.data.pairs`); the rejected answer is the same solution with ONE step's result
  changed (the step and the error drawn from a seed), the error carried into the final
  `#### N`, so chosen and rejected differ exactly from that step on.
- `ultrafeedback[:DIR]`: HuggingFaceH4/ultrafeedback_binarized (splits train_prefs,
  test_prefs) from the Hub, or DIR holding `train_prefs.jsonl` / `test_prefs.jsonl`.
- `jsonl:PATH` (or a path ending in `.jsonl`): one object per line with `prompt`,
  `chosen`, `rejected`: strings, or chat message lists (the last message is the answer).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from sftmerge.data.pairs import arith_pairs
from sftmerge.errors import SftmergeError

FIELDS = ("prompt", "chosen", "rejected")
NAMES = ("arith", "ultrafeedback", "jsonl")
UF_HUB = "HuggingFaceH4/ultrafeedback_binarized"


@dataclass(frozen=True)
class Preference:
    id: str
    prompt: str
    chosen: str
    rejected: str


_RESULT = re.compile(r"= (-?\d+)")


def wrong_step(response: str, rng: random.Random) -> str:
    """The arith solution with one step's result off by a nonzero amount, carried to `#### N`."""
    body, sep, final = response.rpartition("\n#### ")
    steps = list(_RESULT.finditer(body))
    if not sep or not steps:
        raise SftmergeError(f"arith response without steps or final answer: {response!r}")
    step = rng.choice(steps)
    right = int(step.group(1))
    off = rng.choice((-1, 1)) * rng.randint(1, max(2, abs(right) // 3))
    wrong = right + off
    # Later steps that reuse the result see the wrong value too; the final answer moves by the same error.
    rest = re.sub(rf"(?<![\d-]){right}(?!\d)", str(wrong), body[step.end(1):])
    return f"{body[:step.start(1)]}{wrong}{rest}\n#### {int(final) + off}"


def arith_preferences(n: int, split: str = "train", seed: int = 0) -> List[Preference]:
    out = []
    for pair in arith_pairs(n, split, seed):
        rng = random.Random(f"arith-rejected/{seed}/{pair.id}")
        out.append(Preference(pair.id, pair.prompt, pair.response, wrong_step(pair.response, rng)))
    return out


def _answer(value, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise SftmergeError(f"{where}: field {field!r} must be a string or a list of chat messages")


def from_rows(rows, where: str, id_prefix: str) -> List[Preference]:
    out = []
    for i, row in enumerate(rows):
        at = f"{where}, record {i + 1}"
        if not isinstance(row, dict):
            raise SftmergeError(f"{at}: not a JSON object")
        missing = [f for f in FIELDS if row.get(f) in (None, "", [])]
        if missing:
            raise SftmergeError(f"{at}: missing field(s) {', '.join(missing)} (needs {', '.join(FIELDS)})")
        out.append(Preference(str(row.get("prompt_id", f"{id_prefix}-{i}")), _answer(row["prompt"], at, "prompt"),
                              _answer(row["chosen"], at, "chosen"), _answer(row["rejected"], at, "rejected")))
    return out


def _read_jsonl(path: Path, spec: str) -> List[dict]:
    if not path.is_file():
        raise SftmergeError(f"preference data {spec!r}: {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SftmergeError(f"preference data {spec!r}: line {n} is not valid JSON") from None
    return rows


def load_preferences(spec: str, split: str = "train", limit: Optional[int] = None, seed: int = 0) -> List[Preference]:
    """The preference triples of `spec` for split `train` or `test`, first `limit` of them."""
    if limit is not None and limit < 1:
        raise SftmergeError(f"preference data {spec!r}: limit must be at least 1 (got {limit})")
    if split not in ("train", "test"):
        raise SftmergeError(f"preference data {spec!r}: split must be train or test, not {split!r}")
    name, _, path = str(spec).partition(":")
    if name.endswith(".jsonl") and not path:
        name, path = "jsonl", spec
    if name == "arith":
        if path:
            raise SftmergeError(f"preference data {spec!r}: arith is built in and takes no path")
        return arith_preferences(limit or 2000, split, seed)
    if name == "jsonl":
        if not path:
            raise SftmergeError(f"preference data {spec!r}: give the file as jsonl:PATH")
        prefs = from_rows(_read_jsonl(Path(path).expanduser(), spec), f"preference data {path}", "jsonl")
    elif name == "ultrafeedback":
        uf_split = f"{split}_prefs"
        if path:
            prefs = from_rows(_read_jsonl(Path(path).expanduser() / f"{uf_split}.jsonl", spec), spec, "uf")
        else:
            try:
                from datasets import load_dataset

                rows = load_dataset(UF_HUB, split=uf_split)
            except Exception as e:  # network, cache or name problems: one line
                raise SftmergeError(f"preference data {spec!r}: cannot load {UF_HUB} from the Hub "
                                    f"({type(e).__name__}); give a local copy as ultrafeedback:DIR") from None
            prefs = from_rows(rows, spec, "uf")
    else:
        raise SftmergeError(f"unknown preference data {spec!r} (known: arith, ultrafeedback[:DIR], jsonl:PATH)")
    if not prefs:
        raise SftmergeError(f"preference data {spec!r}: no records")
    return prefs[:limit] if limit is not None else prefs


def to_dpo_dataset(prefs: List[Preference]):
    """TRL's conversational preference format (the chat template is applied by the trainer)."""
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": p.prompt}],
         "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]}
        for p in prefs
    ])
