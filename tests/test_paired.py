"""Paired statistics on hand-computed cases (eval/paired.py)."""

from __future__ import annotations

import random

import pytest

from sftmerge.errors import SftmergeError
from sftmerge.eval.paired import align, bootstrap_interval, mcnemar_exact, paired_continuous, paired_exact_match


def test_mcnemar_exact_hand_computed():
    # b=1, c=6: n=7, P(X<=1) = (1 + 7) / 2^7 = 1/16, two-sided 1/8.
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    # b=0, c=5: 2 / 2^5.
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    # balanced: capped at 1; no discordant pairs: 1.
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_mcnemar_matches_scipy_binomial_test():
    from scipy.stats import binomtest

    for b, c in [(2, 9), (10, 4), (0, 12), (17, 25)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_paired_t_interval_excludes_zero_for_a_consistent_shift():
    # diffs 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764 -> 3 +- 1.963
    r = paired_continuous([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["diff"] == pytest.approx(3.0)
    assert r["ci95"] == pytest.approx([3 - 1.9632, 3 + 1.9632], abs=1e-3)
    assert r["ci95"][0] > 0 and r["p_value"] < 0.05


def test_paired_t_matches_scipy_ttest_rel():
    from scipy.stats import ttest_rel

    a, b = [0.31, 0.27, 0.40, 0.22, 0.35, 0.29], [0.30, 0.31, 0.33, 0.25, 0.30, 0.26]
    r, ref = paired_continuous(a, b), ttest_rel(a, b)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert r["ci95"] == pytest.approx([ref.confidence_interval().low, ref.confidence_interval().high])


def test_bootstrap_is_the_percentile_interval_of_resampled_means():
    import numpy as np

    # The reference: resample problems with replacement 2000 times, take the 2.5% and 97.5% quantiles.
    d = np.array([1.0] * 12 + [0.0] * 80 + [-1.0] * 8)
    rng = np.random.default_rng(7)
    means = d[rng.integers(0, len(d), size=(2000, len(d)))].mean(axis=1)
    assert bootstrap_interval(d, seed=7) == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_interval([0.5] * 5, seed=7) == [0.5, 0.5]  # no spread, no interval


def test_paired_t_interval_includes_zero_for_noise():
    r = paired_continuous([1.0, 3.0, 0.0, 4.0, 2.5], [2.0, 2.0, 2.0, 2.0, 2.0])
    assert r["diff"] == pytest.approx(0.1)
    assert r["ci95"][0] < 0 < r["ci95"][1] and r["p_value"] > 0.5


def test_paired_exact_match_detects_and_bounds_difference():
    # A right on 30 problems where B is wrong, B right on 2 where A is wrong, 8 ties.
    a = [1] * 30 + [0] * 2 + [1] * 4 + [0] * 4
    b = [0] * 30 + [1] * 2 + [1] * 4 + [0] * 4
    r = paired_exact_match(a, b, seed=3)
    assert (r["only_a"], r["only_b"], r["n"]) == (30, 2, 40)
    assert r["diff"] == pytest.approx(28 / 40)
    assert r["ci95"][0] > 0 and r["p_value"] < 1e-6
    assert paired_exact_match(a, b, seed=3)["ci95"] == r["ci95"]  # seeded
    # symmetric noise: interval includes 0, McNemar finds nothing
    even = paired_exact_match([1, 0] * 10, [0, 1] * 10, seed=3)
    assert even["ci95"][0] < 0 < even["ci95"][1] and even["p_value"] == 1.0


def test_align_matches_by_id_and_refuses_different_problem_sets():
    a = [{"id": "q2", "correct": 1.0}, {"id": "q1", "correct": 0.0}]
    b = [{"id": "q1", "correct": 1.0}, {"id": "q2", "correct": 1.0}]
    assert align(a, b, "correct") == ([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(SftmergeError, match="different problems"):
        align(a, [{"id": "q3", "correct": 1.0}, {"id": "q2", "correct": 1.0}], "correct")


def test_against_the_singles_mean_is_a_paired_t_on_per_problem_means(tmp_path):
    import json

    from scipy.stats import ttest_rel

    from sftmerge.eval.paired_table import SINGLES_MEAN, vs_singles_mean
    from sftmerge.io.layout import ResultsLayout

    rng = random.Random(3)
    n = 40
    scores = {"order-0": [rng.random() < 0.3 for _ in range(n)], "order-1": [rng.random() < 0.4 for _ in range(n)],
              "select": [rng.random() < 0.5 for _ in range(n)]}
    layout = ResultsLayout(tmp_path)
    for name, correct in scores.items():
        path = layout.samples(name, "arith")
        path.parent.mkdir(parents=True)
        ids = list(range(n))
        rng.shuffle(ids)  # the files' order does not matter: problems are matched by id
        path.write_text("".join(json.dumps({"id": i, "correct": int(correct[i]), "loss": 1.0 - correct[i] / 2})
                                + "\n" for i in ids))
    rows = vs_singles_mean(tmp_path, "arith", ["order-0", "order-1"], ["select"])
    assert [(r["a"], r["b"], r["metric"]) for r in rows] == [("select", SINGLES_MEAN, "exact match"),
                                                             ("select", SINGLES_MEAN, "held-out loss")]
    mean = [(a + b) / 2 for a, b in zip(scores["order-0"], scores["order-1"])]
    expect = ttest_rel([float(x) for x in scores["select"]], mean)
    assert rows[0]["diff"] == pytest.approx(sum(scores["select"]) / n - sum(mean) / n)
    assert rows[0]["p_value"] == pytest.approx(expect.pvalue) and rows[0]["test"] == "paired t"
    assert vs_singles_mean(tmp_path, "arith", ["order-0"], ["select"]) == []  # one single: no mean to speak of
