"""Known-answer tests for accumbench.stats, the statistics behind `accumbench pick-best`.

pick-best selects a configuration on the validation split, then reports on the test split how
sure we can be that it really is better:
* accuracy_se / mean_accuracy_ci: one configuration's test accuracy +- test-set and seed noise;
* discordant_pairs + McNemar: two classifiers' paired predictions on the *same* test examples;
* welch_t_test / student_t_sf: seed-averaged metrics of two configurations (independent runs).

Reference numbers marked "scipy 1.17.1" were computed in a separate scratch virtualenv (not the
project's), so the project itself never depends on scipy.
"""

from __future__ import annotations

import math

import pytest
from pytest import approx

from accumbench.stats import (
    accuracy_se,
    discordant_pairs,
    mcnemar_exact,
    mean_accuracy_ci,
    student_t_sf,
    welch_t_test,
)

Z = 1.959963984540054


# --- accuracy uncertainty -------------------------------------------------------------------

def test_accuracy_se_known_answer():
    # sqrt(0.905 * 0.095 / 5000) = 0.0041466...: a 5000-example test set pins accuracy to ~+-0.8 pt.
    assert accuracy_se(0.905, 5000) == approx(0.00415, abs=1e-5)
    assert accuracy_se(1.0, 100) == 0.0


def test_one_seed_ci_is_the_binomial_normal_interval():
    mean, low, high = mean_accuracy_ci([0.905], 5000)
    se = math.sqrt(0.905 * 0.095 / 5000)
    assert (mean, low, high) == approx((0.905, 0.905 - Z * se, 0.905 + Z * se))
    assert high - low == approx(2 * Z * 0.0041466, rel=1e-4)


def test_more_seeds_add_seed_noise_and_widen_the_interval():
    # Same mean as the single-seed case, but the seeds disagree, so the interval must widen.
    mean, low, high = mean_accuracy_ci([0.895, 0.905, 0.915], 5000)
    seed_var = 0.01**2 / 3  # sample variance of (0.895, 0.905, 0.915) is 1e-4; divided by k = 3
    se = math.sqrt(0.905 * 0.095 / 5000 + seed_var)
    assert mean == approx(0.905)
    assert (low, high) == approx((0.905 - Z * se, 0.905 + Z * se))
    _, low1, high1 = mean_accuracy_ci([0.905], 5000)
    assert high - low > high1 - low1
    # Identical seeds add no variance: back to the binomial interval.
    assert mean_accuracy_ci([0.905] * 4, 5000) == approx(mean_accuracy_ci([0.905], 5000))


def test_ci_is_clipped_to_unit_interval():
    assert mean_accuracy_ci([0.99, 1.0], 50) == approx((0.995, 0.995 - Z * math.sqrt(0.995 * 0.005 / 50 + 2.5e-5), 1.0))
    assert mean_accuracy_ci([0.0, 0.02], 50)[1] == 0.0
    with pytest.raises(ValueError):
        mean_accuracy_ci([], 100)


# --- McNemar on paired predictions ----------------------------------------------------------

def test_discordant_pairs_counts_and_identical_predictions():
    labels = [1, 0, 1, 1, 0, 0]
    a = [1, 0, 0, 1, 1, 0]  # right on 0, 1, 3, 5
    b = [1, 1, 1, 0, 1, 0]  # right on 0, 2, 5
    assert discordant_pairs(labels, a, b) == (2, 1)  # A-only: 1, 3; B-only: 2
    same = discordant_pairs(labels, a, a)
    assert same == (0, 0)
    assert mcnemar_exact(*same) == 1.0


def test_discordant_pairs_length_mismatch_raises():
    with pytest.raises(ValueError):
        discordant_pairs([0, 1, 1], [0, 1], [0, 1, 1])


def test_mcnemar_exact_small_known_answers():
    assert mcnemar_exact(5, 0) == 0.0625  # 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == 0.0625  # symmetric
    assert mcnemar_exact(10, 3) == approx(0.09228515625, rel=1e-12)  # 2 * 189/8192, scipy 1.17.1 binomtest
    assert mcnemar_exact(7, 7) == 1.0  # 2 * P(X <= n/2) > 1, capped
    assert mcnemar_exact(1, 0) == 1.0


def test_mcnemar_exact_large_cases_match_scipy():
    # scipy 1.17.1: binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(2600, 2400) == approx(0.004883649737517494, rel=1e-12)  # exact big-int path
    p = mcnemar_exact(25500, 24500)  # n = 50_000: log-space path
    assert p == approx(7.902628543392482e-06, rel=1e-8)
    assert 0.0 < mcnemar_exact(50_000, 50_000) <= 1.0
    assert 0.0 < mcnemar_exact(50_300, 49_700) < 1.0  # n = 100_000, no overflow


def test_mcnemar_exact_paths_agree_around_the_switch():
    # n = 10_000 uses exact big ints, n = 10_002 uses log space; both must match scipy 1.17.1 binomtest.
    assert mcnemar_exact(5100, 4900) == approx(0.04658552770494645, rel=1e-12)
    assert mcnemar_exact(5101, 4901) == approx(0.046607451088089884, rel=1e-9)


# --- Student t and Welch on seed-averaged metrics -------------------------------------------


def test_student_t_sf_table_values():
    assert 2 * student_t_sf(2.228139, 10) == approx(0.05, abs=1e-5)  # t_{0.975, 10} table value
    assert student_t_sf(1.959964, 1e7) == approx(0.025, abs=1e-6)  # df -> inf: normal
    assert student_t_sf(1.959964, math.inf) == approx(0.025, abs=1e-6)
    assert student_t_sf(1.0, 1) == approx(0.25, rel=1e-12)  # Cauchy: 1/2 - atan(1)/pi
    assert student_t_sf(0.0, 3.7) == 0.5


def test_student_t_sf_symmetry_and_non_integer_df():
    for t in (0.3, 1.7, 4.0):
        assert student_t_sf(-t, 5.5) == approx(1 - student_t_sf(t, 5.5), rel=1e-12)
    assert student_t_sf(1.5, 2.5) == approx(0.12391822654314809, rel=1e-10)  # scipy 1.17.1 t.sf
    assert student_t_sf(2.0, 7.3) == approx(0.041970519667051565, rel=1e-10)  # scipy 1.17.1 t.sf


# scipy 1.17.1 ttest_ind(a, b, equal_var=False): (statistic, df, pvalue)
WELCH_CASES = [
    # seed accuracies, unequal sizes (5 vs 4 seeds)
    ([0.912, 0.905, 0.918, 0.909, 0.915], [0.897, 0.903, 0.889, 0.901],
     (3.726773212609088, 5.8244571471561, 0.010316342735841071)),
    # very unequal variances and sizes: no evidence of a difference
    ([0.81, 0.86, 0.79, 0.90, 0.84, 0.77], [0.83, 0.832, 0.829],
     (-0.1021211876354584, 5.020288128370497, 0.9226140827087541)),
    # negative t, tiny p
    ([1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 11.5, 12.0, 13.0, 14.0, 15.0, 16.5, 17.0],
     (-9.477935487290644, 10.944576256973594, 1.3099099501163354e-06)),
]


@pytest.mark.parametrize("a,b,expected", WELCH_CASES)
def test_welch_matches_scipy(a, b, expected):
    assert welch_t_test(a, b) == approx(expected, rel=1e-9)


def test_welch_edge_cases():
    t, df, p = welch_t_test([0.9, 0.9], [0.9, 0.9, 0.9])
    assert (t, p) == (0.0, 1.0) and math.isnan(df)
    t, df, p = welch_t_test([0.8, 0.8], [0.9, 0.9])
    assert (t, p) == (-math.inf, 0.0) and math.isnan(df)
    with pytest.raises(ValueError):
        welch_t_test([0.9], [0.8, 0.85])
