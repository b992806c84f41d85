"""Score summaries: mean, standard error of the mean, 95% interval; pass@k.

A proportion of 0/1 scores gets the Wilson score interval (scipy's `binomtest(...).
proportion_ci`): unlike the normal (Wald) interval it stays inside [0, 1] and does not
collapse to a point at 0 or n successes. Other per-sample values (losses, judge
scores, pass fractions) get value +- 1.96 standard errors, clipped to `bounds` if given.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

from sftmerge.errors import SftmergeError

Z95 = 1.96  # the normal 97.5% quantile, to the two decimals lm-eval and the reports use


def _mean_and_stderr(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation over sqrt(n) (as lm-eval reports it)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list:
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def summarize_proportion(values: Sequence[float]) -> Dict:
    """{"value", "stderr", "ci95"} of 0/1 scores; ci95 is the Wilson score interval."""
    if not values:
        return {"value": None, "stderr": None, "ci95": None}
    if any(v not in (0, 1) for v in values):
        raise SftmergeError("a proportion needs 0/1 scores; use summarize() for other values")
    mean, se = _mean_and_stderr(values)
    return {"value": mean, "stderr": se, "ci95": wilson_interval(int(sum(values)), len(values))}


def summarize(values: Sequence[float], bounds: Optional[tuple] = (0.0, 1.0)) -> Dict:
    """{"value", "stderr", "ci95"} of per-sample values: value +- 1.96 stderr, clipped to `bounds`."""
    if not values:
        return {"value": None, "stderr": None, "ci95": None}
    mean, se = _mean_and_stderr(values)
    lo, hi = mean - Z95 * se, mean + Z95 * se
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return {"value": mean, "stderr": se, "ci95": [lo, hi]}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
