"""Score summaries and the pass@k estimator."""

from __future__ import annotations

import itertools
import math

import pytest

from sftmerge.eval.stats import pass_at_k, summarize


def test_summary_of_proportions_matches_the_formula():
    values = [1.0] * 41 + [0.0] * 59
    s = summarize(values)
    se = math.sqrt(0.41 * 0.59 / 99)  # sample variance n/(n-1) p(1-p), over n
    assert s["value"] == pytest.approx(0.41) and s["stderr"] == pytest.approx(se)
    assert s["ci95"] == pytest.approx([0.41 - 1.96 * se, 0.41 + 1.96 * se])
    assert summarize([1.0, 1.0])["ci95"] == [1.0, 1.0]  # clipped to [0, 1]
    assert summarize([20.0, 22.0], bounds=None)["ci95"][1] > 22.0
    assert summarize([]) == {"value": None, "stderr": None, "ci95": None}


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (4, 4, 2), (10, 3, 10)])
def test_pass_at_k_is_the_chance_that_k_of_n_samples_contain_a_pass(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact)
