"""Per-tensor selection statistics gathered while param_select runs.

The merge driver (`sftmerge merge`) clears them before a merge and turns them into
`merge_report.json` afterwards. mergekit's executor runs tasks in this process, so a
module-level collector sees every tensor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class TensorSelection:
    numel: int
    picks: Dict[str, int]  # model id -> elements taken from it
    equal_base_before: Optional[int]
    equal_base_after: Optional[int]


@dataclass
class SelectionStats:
    tensors: Dict[str, TensorSelection] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        with self._lock:
            self.tensors.clear()

    def record(self, name: Optional[str], **values) -> None:
        with self._lock:
            self.tensors[name or f"<unnamed {len(self.tensors)}>"] = TensorSelection(**values)

    def summary(self, model_names: List[str]) -> dict:
        """Fractions over all recorded elements, per input model (non-base order)."""
        with self._lock:
            rows = list(self.tensors.values())
        total = sum(r.numel for r in rows)
        picks = dict.fromkeys(model_names, 0)
        for r in rows:
            for model, n in r.picks.items():
                picks[model] = picks.get(model, 0) + n
        with_base = [r for r in rows if r.equal_base_before is not None]
        base_total = sum(r.numel for r in with_base)

        def frac(n: int, d: int) -> Optional[float]:
            return n / d if d else None

        return {
            "elements": total,
            "tensors": len(rows),
            "fraction_from_model": {m: frac(p, total) for m, p in picks.items()},
            "fraction_equal_base_before_resample": (
                frac(sum(r.equal_base_before for r in with_base), base_total) if with_base else None
            ),
            "fraction_equal_base_after_resample": (
                frac(sum(r.equal_base_after for r in with_base), base_total) if with_base else None
            ),
        }


SELECTION_STATS = SelectionStats()
