"""Score summaries (Wilson intervals for proportions, normal intervals otherwise) and pass@k."""

from __future__ import annotations

import itertools
import math

import pytest

from sftmerge.errors import SftmergeError
from sftmerge.eval.stats import pass_at_k, summarize, summarize_proportion, wilson_interval


def test_proportion_gets_the_wilson_interval():
    values = [1.0] * 41 + [0.0] * 59
    s = summarize_proportion(values)
    se = math.sqrt(0.41 * 0.59 / 99)  # sample variance n/(n-1) p(1-p), over n (as lm-eval reports it)
    assert s["value"] == pytest.approx(0.41) and s["stderr"] == pytest.approx(se)
    # Wilson's formula: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    z, n, p = 1.959964, 100, 0.41
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    centre = p + z * z / (2 * n)
    assert s["ci95"] == pytest.approx([(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)], abs=1e-6)
    assert s["ci95"] == pytest.approx([0.3187, 0.5080], abs=1e-4)


def test_wilson_interval_known_values():
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 0.2775]; the Wald interval would be the point [0, 0].
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.27753], abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx([0.72247, 1.0], abs=1e-5)
    assert summarize_proportion([1.0, 1.0])["ci95"][0] < 1.0  # all right still leaves room below
    assert summarize_proportion([]) == {"value": None, "stderr": None, "ci95": None}
    with pytest.raises(SftmergeError, match="0/1 scores"):
        summarize_proportion([0.5, 1.0])


def test_other_values_get_value_plus_minus_1_96_standard_errors():
    s = summarize([20.0, 22.0, 27.0], bounds=None)
    se = math.sqrt(13.0 / 3)  # sample variance 13, over n = 3
    assert s["value"] == pytest.approx(23.0) and s["stderr"] == pytest.approx(se)
    assert s["ci95"] == pytest.approx([23.0 - 1.96 * se, 23.0 + 1.96 * se])
    assert summarize([0.5, 1.0, 1.0])["ci95"][1] == 1.0  # a bounded score is clipped to [0, 1]
    assert summarize([]) == {"value": None, "stderr": None, "ci95": None}


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (4, 4, 2), (10, 3, 10)])
def test_pass_at_k_is_the_chance_that_k_of_n_samples_contain_a_pass(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact)
