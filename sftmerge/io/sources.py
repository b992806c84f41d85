"""Is a model or data reference a Hugging Face Hub id or a local path? Decided here only."""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(ref: str) -> bool:
    """`owner/name` that is not an existing local path (`models/foo` is local when `models/` exists)."""
    ref = str(ref)
    if not _HUB_ID.match(ref) or ref.startswith((".", "/", "~")):
        return False
    return not Path(ref.split("/")[0]).exists()
