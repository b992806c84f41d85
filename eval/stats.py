"""Score summaries: mean, standard error of the mean, normal 95% interval."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence


def summarize(values: Sequence[float], bounds: Optional[tuple] = (0.0, 1.0)) -> Dict:
    """{"value", "stderr", "ci95"} of per-sample values.

    stderr is the sample standard deviation over sqrt(n) (as lm-eval reports it);
    ci95 is value +- 1.96 stderr, clipped to `bounds` (proportions) when given.
    """
    n = len(values)
    if n == 0:
        return {"value": None, "stderr": None, "ci95": None}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    lo, hi = mean - 1.96 * se, mean + 1.96 * se
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return {"value": mean, "stderr": se, "ci95": [lo, hi]}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
