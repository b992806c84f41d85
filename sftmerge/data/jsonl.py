"""Local JSON Lines files, read with one clear line for a damaged file (which line, what is wrong)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from sftmerge.errors import SftmergeError


def numbered_rows(path: Path, where: str = "") -> List[Tuple[int, Dict]]:
    """(line number, object) for every non-blank line; `where` prefixes the error line."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise SftmergeError(f"{where}{path} line {n} is not valid JSON (a truncated or damaged file?)") from None
                if not isinstance(row, dict):
                    raise SftmergeError(f"{where}{path} line {n} is not a JSON object")
                out.append((n, row))
    except UnicodeDecodeError:
        raise SftmergeError(f"{where}{path} is not UTF-8 text") from None
    return out
