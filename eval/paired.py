"""Paired comparisons of two models scored on the SAME problems.

Exact match (0/1 per problem): McNemar's exact test on the discordant pairs, and a
seeded paired bootstrap interval for the difference in accuracy. Continuous per-problem
scores (held-out loss): the mean paired difference with a Student t interval and the
paired t test's p-value. Pairing removes the between-problem variance that unpaired
intervals carry, so small real differences become visible.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from sftmerge.errors import SftmergeError


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c.

    Under no difference each discordant problem is a fair coin: the binomial test of b
    successes in b + c tries at p = 1/2.
    """
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise SftmergeError(f"discordant counts must be >= 0 (got {b}, {c})")
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> Dict:
    """Mean of paired differences, its t interval and the two-sided paired t test p-value."""
    import numpy as np
    from scipy.stats import ttest_1samp

    n = len(diffs)
    if n < 2:
        raise SftmergeError(f"a paired interval needs at least 2 problems (got {n})")
    d = np.asarray(diffs, dtype=np.float64)
    mean = float(d.mean())
    if float(d.std(ddof=1)) == 0:  # every problem moved by the same amount: no sampling spread to speak of
        return {"diff": mean, "ci95": [mean, mean], "p_value": 1.0 if mean == 0 else 0.0, "n": n}
    test = ttest_1samp(d, 0.0)
    ci = test.confidence_interval(confidence_level=level)
    return {"diff": mean, "ci95": [float(ci.low), float(ci.high)], "p_value": float(test.pvalue), "n": n}


def bootstrap_interval(diffs: Sequence[float], seed: int, rounds: int = 2000, level: float = 0.95) -> List[float]:
    """Percentile interval of the mean difference over problems resampled with replacement."""
    import numpy as np
    from scipy.stats import bootstrap

    d = np.asarray(diffs, dtype=np.float64)
    if np.all(d == d[0]):  # no spread: every resample has the same mean
        return [float(d[0]), float(d[0])]
    res = bootstrap((d,), np.mean, n_resamples=rounds, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


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
