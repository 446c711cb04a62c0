"""Known-answer tests for accumbench.stats, the statistics behind `accumbench pick-best`.

pick-best selects a configuration on the validation split, then reports on the test split how
sure we can be that it really is better:
* accuracy_se / mean_accuracy_ci: one configuration's test accuracy +- test-set and seed noise;
* discordant_pairs + McNemar: two classifiers' paired predictions on the *same* test examples.
The deficit's bound, which decides "as good as the best", is tested in tests/test_margin.py.
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


def test_mcnemar_exact_large_cases_keep_their_known_values():
    # Known values, from the big-integer sum this project used before it called scipy's binomtest.
    assert mcnemar_exact(2600, 2400) == approx(0.004883649737517494, rel=1e-12)
    assert mcnemar_exact(25500, 24500) == approx(7.902628543392482e-06, rel=1e-8)
    assert 0.0 < mcnemar_exact(50_000, 50_000) <= 1.0
    assert 0.0 < mcnemar_exact(50_300, 49_700) < 1.0  # n = 100_000, no overflow
    assert mcnemar_exact(0, 0) == 1.0


