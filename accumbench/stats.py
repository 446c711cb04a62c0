"""Statistics behind `accumbench pick-best` that are not the deficit's bound (deficit.py), on scipy.stats.

`pick-best` chooses a configuration on the *validation* split and reports it on the *test* split; these
helpers state how far the reported test numbers can be trusted:

* `accuracy_se` / `mean_accuracy_ci`: uncertainty of one configuration's test accuracy, from the finite
  test set (binomial sampling noise) plus, with several seeds, seed-to-seed noise.
* `discordant_pairs` + `mcnemar_exact`: two classifiers scored on the *same* examples are paired, so only
  the examples where they disagree carry information (reported on test; racing's screen on validation).
* `fit_line`: least squares with the slope's 95% interval (the lr scaling exponent, analysis/tuning.py).

scipy is imported inside the functions that need it, so that `accumbench --help` stays light.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def accuracy_se(accuracy: float, n: int) -> float:
    """Binomial standard error sqrt(p(1-p)/n) of an accuracy measured on n test examples."""
    if n <= 0 or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"need n > 0 and 0 <= accuracy <= 1, got n={n}, accuracy={accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def mean_accuracy_ci(accuracies: Sequence[float], n: int, z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): normal-approximation CI for a configuration's test accuracy over k seeds.

    Two independent noise sources add in variance: the test set is a sample of n examples
    (binomial variance mean*(1-mean)/n), and each seed is a draw from the training randomness
    (sample variance across seeds / k; absent with a single seed, where it cannot be estimated).
    The interval is clipped to [0, 1] because an accuracy cannot leave it.
    """
    k = len(accuracies)
    if k < 1:
        raise ValueError("need at least one accuracy")
    mean = statistics.fmean(accuracies)
    seed_var = statistics.variance(accuracies) / k if k >= 2 else 0.0
    se = math.sqrt(accuracy_se(mean, n) ** 2 + seed_var)
    return mean, max(0.0, mean - z * se), min(1.0, mean + z * se)


def discordant_pairs(labels: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> tuple[int, int]:
    """(b, c): b = examples A gets right and B wrong, c = A wrong and B right."""
    if not len(labels) == len(pred_a) == len(pred_b):
        raise ValueError(f"length mismatch: labels={len(labels)}, pred_a={len(pred_a)}, pred_b={len(pred_b)}")
    b = c = 0
    for y, a, p in zip(labels, pred_a, pred_b):
        b += a == y and p != y
        c += a != y and p == y
    return b, c


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good" each disagreement is a fair coin flip, so it is
    the exact binomial test of min(b, c) successes in b + c trials at 1/2 (min(1, 2 P(X <= min(b, c))))."""
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    if b + c == 0:
        return 1.0  # identical predictions: no evidence either way
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5).pvalue)


@dataclass(frozen=True)
class LineFit:
    """y = intercept + slope * x by ordinary least squares, with the slope's 95% interval."""

    slope: float
    intercept: float
    slope_se: float  # nan with 2 points (no degrees of freedom left)
    df: int  # n - 2
    slope_ci95: tuple[float, float]


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    """Ordinary least squares of ys on xs. The slope's interval is slope ± t(0.975, n-2) · se, with
    se = s / sqrt(Sxx) and s² the residual variance: exact for independent normal errors."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError(f"need two or more (x, y) pairs of equal length, got {len(xs)} and {len(ys)}")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0.0:
        raise ValueError("all x are equal: the slope is undefined")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    df = n - 2
    if df == 0:
        return LineFit(slope, intercept, math.nan, 0, (math.nan, math.nan))
    from scipy.stats import t

    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys)) / df
    se = math.sqrt(residual / sxx)
    half = float(t.ppf(0.975, df)) * se
    return LineFit(slope, intercept, se, df, (slope - half, slope + half))
