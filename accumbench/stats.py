"""Statistics behind `accumbench pick-best`, standard library only (math, statistics).

`pick-best` chooses a configuration on the *validation* split and reports it on the *test* split;
these helpers say how much a difference can be trusted on either, so a winner is not declared on noise:

* `accuracy_se` / `mean_accuracy_ci`: uncertainty of one configuration's test accuracy, from the
  finite test set (binomial sampling noise) plus, with several seeds, seed-to-seed noise.
* `discordant_pairs` + `mcnemar_exact`: two classifiers scored on the *same*
  examples are paired, so only the examples where they disagree carry information.
* `welch_t_test`: compares seed-averaged metrics of two configurations (independent runs, possibly
  different numbers of seeds and different spreads, hence Welch rather than Student).
* `fit_line`: least squares with the slope's 95% interval (the lr scaling exponent, analysis/tuning.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile
_EXACT_MAX_N = 10_000  # up to here McNemar sums big-int binomial coefficients; above, log space


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
    """Two-sided exact McNemar p-value min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).

    Under "equally good" each disagreement is a fair coin flip. Small n: exact big-int sum of
    binomial coefficients (O(n^2) bit work, hence capped). Large n: the biggest term C(n, m) from
    lgamma, the rest via the ratio C(n, k-1)/C(n, k) = k/(n-k+1) until negligible, so it costs
    O(sqrt(n)) float steps and never overflows (relative error ~1e-10 at n = 1e5).
    A p-value below ~1e-308 underflows to 0.0.
    """
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    n, m = b + c, min(b, c)
    if n == 0:
        return 1.0  # identical predictions: no evidence either way
    if n <= _EXACT_MAX_N:
        term = total = 1  # C(n, 0); C(n, k+1) = C(n, k) (n-k) / (k+1) is exact in integers
        for k in range(m):
            term = term * (n - k) // (k + 1)
            total += term
        return min(1.0, 2 * total / 2**n)  # int / int rounds correctly, no float overflow
    # Terms fall monotonically from k = m down (m <= n/2); sum them relative to the largest.
    total, term = 0.0, 1.0
    for k in range(m, 0, -1):
        total += term
        term *= k / (n - k + 1)
        if term < 1e-20 * total:
            break
    else:  # never became negligible: add the k = 0 term too
        total += term
    log_top = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1)
    log_p = math.log(2.0) + log_top + math.log(total) - n * math.log(2.0)
    return min(1.0, math.exp(log_p))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (Numerical Recipes, modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    d = 1.0 - qab * x / qap
    c, d = 1.0, 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    # Converges in O(sqrt(max(a, b))) steps; size the cap for huge df (a = df/2).
    for m in range(1, 1000 + 10 * int(math.sqrt(max(a, b)))):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"betacf did not converge for a={a}, b={b}, x={x}")


def _log_beta(a: float, b: float) -> float:
    """log B(a, b). For a big argument lgamma(big + small) - lgamma(big) cancels (lgamma(5e8) ~ 1e10
    leaves ~6 digits), so that difference comes from Stirling's series, written without cancellation."""
    small, big = sorted((a, b))
    if big < 100:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    diff = (big - 0.5) * math.log1p(small / big) + small * math.log(big + small) - small
    diff += -small / (12.0 * big * (big + small)) + (big**-3 - (big + small) ** -3) / 360.0
    return math.lgamma(small) - diff


def _betai(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b), given x and y = 1 - x (passed separately for precision)."""
    if x <= 0.0 or y <= 0.0:
        return 0.0 if x <= 0.0 else 1.0
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)  # log1p keeps precision near 1 (huge df)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; else use symmetry
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df > 0 degrees of freedom (non-integer df allowed)."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if df > 1e8:
        # The continued fraction degrades as df grows (~3e-9 relative at 1e8); beyond, the normal
        # approximation z = t (1 - 1/(4 df)) / sqrt(1 + t^2/(2 df)) is accurate to < 3e-9 for |t| <= 30.
        return 0.5 * math.erfc(t * (1 - 0.25 / df) / math.sqrt(2.0 + t * t / df))
    # P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2); 1 - x is written as t^2/(df+t^2) to avoid cancellation.
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(t, df, two-sided p) of Welch's unequal-variance t-test for mean(a) - mean(b).

    Degrees of freedom from the Welch-Satterthwaite equation (generally non-integer).
    Degenerate case, both samples constant: the test is undefined, df is nan, and we return
    (0.0, nan, 1.0) if the means are equal, else (+-inf, nan, 0.0) since any difference is exact.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each sample needs >= 2 values, got {len(a)} and {len(b)}")
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0.0:
        diff = mean_a - mean_b
        return (0.0, math.nan, 1.0) if diff == 0 else (math.copysign(math.inf, diff), math.nan, 0.0)
    t = (mean_a - mean_b) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, min(1.0, 2.0 * student_t_sf(abs(t), df))


def student_t_quantile(p: float, df: float) -> float:
    """t with P(T <= t) = p for Student's t with df > 0: bisection on student_t_sf, which is monotone.
    Standard library only; 60 halvings of a bracket grown to contain the answer reach double precision."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    tail = 1.0 - p
    low, high = 0.0, 1.0
    while student_t_sf(high, df) > tail:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_sf(mid, df) > tail:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


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
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys)) / df
    se = math.sqrt(residual / sxx)
    half = student_t_quantile(0.975, df) * se
    return LineFit(slope, intercept, se, df, (slope - half, slope + half))
