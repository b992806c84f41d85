"""Paired comparisons of two models scored on the SAME problems.

Exact match (0/1 per problem): McNemar's exact test on the discordant pairs, and a
seeded paired bootstrap interval for the difference in accuracy. Continuous per-problem
scores (held-out loss): the mean paired difference with a Student t interval and the
paired t test's p-value. Pairing removes the between-problem variance that unpaired
intervals carry, so small real differences become visible.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

from sftmerge.errors import SftmergeError


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c.

    Under no difference each discordant problem is a fair coin: p = 2 P(X <= min(b, c)),
    X ~ Binomial(b + c, 1/2), capped at 1.
    """
    if b < 0 or c < 0:
        raise SftmergeError(f"discordant counts must be >= 0 (got {b}, {c})")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> Dict:
    """Mean of paired differences, its t interval and the two-sided paired t test p-value."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        raise SftmergeError(f"a paired interval needs at least 2 problems (got {n})")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:  # every problem moved by the same amount: no sampling spread to speak of
        return {"diff": mean, "ci95": [mean, mean], "p_value": 1.0 if mean == 0 else 0.0, "n": n}
    q = stats.t.ppf(0.5 + level / 2, n - 1)
    p = 2 * stats.t.sf(abs(mean / se), n - 1)
    return {"diff": mean, "ci95": [mean - q * se, mean + q * se], "p_value": float(p), "n": n}


def bootstrap_interval(diffs: Sequence[float], seed: int, rounds: int = 2000, level: float = 0.95) -> List[float]:
    """Percentile interval of the mean difference over problems resampled with replacement."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(rounds, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def paired_exact_match(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Dict:
    """A vs B on the same problems (0/1 each): accuracy difference A - B, bootstrap CI, McNemar p."""
    if len(a) != len(b) or not a:
        raise SftmergeError(f"paired scores need the same non-zero number of problems (got {len(a)}, {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    return {"diff": sum(diffs) / len(diffs), "ci95": bootstrap_interval(diffs, seed),
            "p_value": mcnemar_exact(only_a, only_b), "test": "McNemar exact; bootstrap CI",
            "only_a": only_a, "only_b": only_b, "n": len(diffs), "seed": seed}


def paired_continuous(a: Sequence[float], b: Sequence[float]) -> Dict:
    """A vs B per-problem values (e.g. loss): mean difference A - B, t interval, paired t p-value."""
    if len(a) != len(b):
        raise SftmergeError(f"paired scores need the same number of problems (got {len(a)}, {len(b)})")
    return {**t_interval([x - y for x, y in zip(a, b)]), "test": "paired t"}


def align(a: Sequence[Mapping], b: Sequence[Mapping], key: str, names=("A", "B")) -> tuple:
    """Values of `key` for the problems both per-sample lists share, matched by `id`.

    Different problem sets are an error: a paired test on unmatched problems means nothing.
    """
    va = {r["id"]: r[key] for r in a}
    vb = {r["id"]: r[key] for r in b}
    if set(va) != set(vb):
        raise SftmergeError(f"{names[0]} and {names[1]} were scored on different problems "
                            f"({len(set(va) ^ set(vb))} ids not in both); evaluate both with the same settings")
    ids = sorted(va)
    return [va[i] for i in ids], [vb[i] for i in ids]
