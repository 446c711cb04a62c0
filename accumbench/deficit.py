"""How far a candidate may be behind the best, with confidence: the one evidence behind "as good as the best".

A candidate is as good as the best only when a one-sided upper confidence bound on its *deficit* (the best's
metric minus its own, on validation; positive means worse) lies below a margin. Failing to show a difference
is not enough: with 2-3 seeds a test across seeds has about one degree of freedom and rejects almost nothing,
so weak evidence would read as equality.

Two sources of noise, both present in every comparison, added in variance because they are independent:

    training   which seed trained the run. Where both candidates ran the same seeds (a sweep trains every cell at
               the same ones: the same initialisation and data order), the spread of their per-seed differences,
               a paired t with k-1 degrees of freedom; else each candidate's spread between its seeds, s^2/k a
               side, with Welch-Satterthwaite degrees of freedom. This level is not bootstrapped: a bootstrap of
               two seeds has three outcomes and half their variance, and covered the true deficit in 86% of the
               simulations of bench/deficit_coverage.py at 2 seeds, where 95% was asked.
    examples   which examples the validation split drew: a bootstrap over the validation examples with the
               same indices for every run of both candidates (paired: the difficulty they share cancels),
               each run's metric recomputed from its stored predictions, so accuracy, F1 and MCC alike.

    bound = deficit + t(confidence, df) * sqrt(var_seeds + var_examples)

The seed spread is measured on the one validation split, so it also holds each run's own example-by-example
luck; the example level keeps only what a candidate's runs share (the runs' resampled scores' covariance), so
nothing is counted twice. The simulations cover at 93.3-96.7% where 95% is asked, over eight regimes of
seeds, examples and training noise (bench/deficit_coverage.py, 300 simulations each).
One seed per candidate: the example level alone, with a normal quantile, and seed-to-seed variation goes
unmeasured (the caller says so). No predictions (runs recorded before they were kept, or a loss): Welch's t
interval on the seed means alone.

Numpy, vectorised: the example resamples are drawn once per Scorer (one pick) as multinomial counts and shared
by all its comparisons, and every run's confusion matrices under every resample are one matrix product. Seeded, so one store gives one answer everywhere.
scipy (t quantiles) is imported where it is used, keeping `accumbench --help` light.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from accumbench import metrics
from accumbench.task_metrics import batched_metric

RESAMPLES = 2000
SEED = 0
# Where the evidence came from, as the sentences name it.
SEEDS_AND_EXAMPLES = "seeds and examples"
EXAMPLES_ONLY = "examples (one seed each: seed-to-seed variation not measured)"
SEED_MEANS = "t interval on seed means (no stored predictions)"
NO_EVIDENCE = "no evidence"


@dataclass(frozen=True)
class DeficitBound:
    """The deficit of a candidate to the best (positive: worse), and its one-sided confidence bounds."""

    deficit: float
    upper: float  # the deficit is below this with `confidence`: inf where nothing bounds it
    lower: float  # ... and above this with `confidence`: -inf where nothing bounds it
    confidence: float
    source: str  # SEEDS_AND_EXAMPLES, EXAMPLES_ONLY, SEED_MEANS or NO_EVIDENCE
    seeds: tuple[int, int]  # runs of the best, runs of the candidate
    examples: int  # validation examples resampled (0: none)
    se_seeds: float = 0.0  # the two noise sources' standard errors, for "what would show it"
    se_examples: float = 0.0

    def within(self, margin: float) -> bool:
        """Shown within `margin` of the best: the upper bound lies below it."""
        return bool(self.upper < margin)

    def worse_than(self, margin: float) -> bool:
        """Shown worse than the best by more than `margin`: the lower bound lies above it."""
        return bool(self.lower > margin)


@dataclass(frozen=True)
class RunPredictions:
    """One run's predictions on the validation split (the same examples, in the same order, for every run)."""

    labels: Sequence[int]
    predicted: Sequence[int]
    key: object = None  # the run's id: a Scorer scores a run with a key once


def t_quantile(confidence: float, df: float) -> float:
    """The one-sided `confidence` quantile of Student's t (normal where df is infinite)."""
    from scipy import stats as scipy_stats

    return float(scipy_stats.norm.ppf(confidence) if math.isinf(df) else scipy_stats.t.ppf(confidence, df))


def _seed_variance(values: np.ndarray) -> tuple[float, float]:
    """(s^2 / k, k - 1): the variance of a mean over k seeds, and its degrees of freedom (0 with one seed)."""
    k = len(values)
    return (float(values.var(ddof=1)) / k, k - 1) if k > 1 else (0.0, 0)


def _welch_df(parts: list[tuple[float, float]], total: float) -> float:
    """Welch-Satterthwaite: the degrees of freedom of a sum of variances, each with its own df (inf: known)."""
    denominator = sum(v * v / df for v, df in parts if df > 0 and v > 0)
    return total * total / denominator if denominator > 0 else math.inf


def from_seed_means(best: Sequence[float], other: Sequence[float], higher_is_better: bool = True,
                    confidence: float = 0.95, relative: bool = False) -> DeficitBound:
    """Welch's t bound on the difference of seed means, for runs without stored predictions (or a loss).
    `relative`: the deficit as a share of the best's mean (a loss, whose scale is the task's own)."""
    a, b = np.asarray(best, dtype=float), np.asarray(other, dtype=float)
    seeds = (len(a), len(b))
    if np.isnan(a).any() or np.isnan(b).any():
        return DeficitBound(math.nan, math.inf, -math.inf, confidence, NO_EVIDENCE, seeds, 0)
    sign = 1.0 if higher_is_better else -1.0
    deficit = float(sign * (a.mean() - b.mean()))
    if min(seeds) < 2:  # one run has no spread to measure: nothing bounds the training noise
        bound = DeficitBound(deficit, math.inf, -math.inf, confidence, NO_EVIDENCE, seeds, 0)
    else:
        parts = [_seed_variance(a), _seed_variance(b)]
        variance = parts[0][0] + parts[1][0]
        half = t_quantile(confidence, _welch_df(parts, variance)) * math.sqrt(variance) if variance > 0 else 0.0
        bound = DeficitBound(deficit, deficit + half, deficit - half, confidence, SEED_MEANS, seeds, 0,
                             se_seeds=math.sqrt(variance))
    if relative:
        scale = abs(float(a.mean())) or 1.0
        bound = DeficitBound(bound.deficit / scale, bound.upper / scale, bound.lower / scale, confidence, bound.source,
                             seeds, 0, bound.se_seeds / scale)
    return bound


@functools.lru_cache(maxsize=8)
def example_weights(examples: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, examples] multinomial counts: how often each validation example is drawn in each resample.
    One draw serves every run of a comparison: that is the pairing. Seeded, so the draw is kept (read-only) and
    shared by every Scorer of the same split size: racing builds one per decision."""
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(examples, np.full(examples, 1.0 / examples), size=resamples).astype(np.float32)
    weights.flags.writeable = False
    return weights


def run_scores(runs: Sequence[RunPredictions], metric: str, num_classes: int, positive: int,
               weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each run's metric on the full split [runs], and under every resample [resamples, runs])."""
    cells = num_classes * num_classes
    codes = np.stack([np.asarray(r.labels, dtype=np.int64) * num_classes + np.asarray(r.predicted, dtype=np.int64)
                      for r in runs])  # [runs, examples]: each example's confusion cell
    examples = codes.shape[1]
    onehot = np.zeros((examples, len(runs) * cells), dtype=np.float32)  # counts stay exact to 2^24
    onehot[np.broadcast_to(np.arange(examples), codes.shape), codes + (np.arange(len(runs)) * cells)[:, None]] = 1.0
    score = batched_metric(metric)
    # Counts are exact in float32 (the product's speed); the scores are taken in float64.
    full = score(onehot.sum(axis=0, dtype=np.float64).reshape(len(runs), num_classes, num_classes), positive)
    counts = (weights @ onehot).astype(np.float64)
    resampled = score(counts.reshape(len(weights), len(runs), num_classes, num_classes), positive)
    return np.asarray(full, dtype=float), np.asarray(resampled, dtype=float)


def _own_variance(resampled: np.ndarray) -> float:
    """The part of a seed mean's example-resampling variance that is each run's own (the runs' variance less
    their covariance, over k): what the spread between seeds counts too. 0 with one run, which has no spread."""
    k = resampled.shape[1]
    if k < 2:
        return 0.0
    covariance = np.cov(resampled, rowvar=False)
    variances = float(np.trace(covariance)) / k
    shared = (float(covariance.sum()) - k * variances) / (k * (k - 1))
    return max(0.0, variances - shared) / k


class Scorer:
    """Bounds deficits on one metric, each run scored once under one set of example resamples: every
    comparison of a pick (the best against each candidate) reuses the best's scores and the same draws."""

    def __init__(self, metric: str = "accuracy", num_classes: int = 2, positive: int = 1, confidence: float = 0.95,
                 resamples: int = RESAMPLES, seed: int = SEED) -> None:
        self.metric, self.num_classes, self.positive = metric, num_classes, positive
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self._weights: dict[int, np.ndarray] = {}
        self._scores: dict[object, tuple[float, np.ndarray]] = {}

    def _score(self, runs: Sequence[RunPredictions], examples: int) -> tuple[np.ndarray, np.ndarray]:
        if examples not in self._weights:
            self._weights[examples] = example_weights(examples, self.resamples, self.seed)
        missing = [r for r in runs if r.key is None or r.key not in self._scores]
        if missing:
            full, resampled = run_scores(missing, self.metric, self.num_classes, self.positive, self._weights[examples])
            scored = {id(r): (full[i], resampled[:, i]) for i, r in enumerate(missing)}
            self._scores.update({r.key: scored[id(r)] for r in missing if r.key is not None})
        found = [self._scores[r.key] if r.key is not None and r.key in self._scores else scored[id(r)] for r in runs]
        return np.array([f for f, _ in found]), np.stack([v for _, v in found], axis=1)

    def bound(self, best: Sequence[RunPredictions], other: Sequence[RunPredictions], paired: bool = False
              ) -> DeficitBound:
        """The deficit of `other` to `best` (higher is better), from every run's validation predictions on the
        same examples: seeds and examples together. `paired`: best[i] and other[i] ran the same seed (the same
        initialisation and data order), so the seed level is the spread of their differences (a paired t)."""
        examples = len(best[0].labels)
        if any(len(r.labels) != examples or len(r.predicted) != examples for r in (*best, *other)):
            raise ValueError("every run must be scored on the same validation examples")
        if paired and len(best) != len(other):
            raise ValueError("paired runs come in pairs: one of each candidate per seed")
        full, resampled = self._score([*best, *other], examples)
        k = len(best)
        deficit = float(full[:k].mean() - full[k:].mean())
        by_examples = resampled[:, :k].mean(axis=1) - resampled[:, k:].mean(axis=1)
        parts = ([_seed_variance(full[:k] - full[k:])] if paired and k > 1
                 else [_seed_variance(full[:k]), _seed_variance(full[k:])])
        var_seeds = sum(v for v, _ in parts)
        # The seed spread was measured on this one split, so it holds each run's own example luck already; the
        # example level keeps only what the runs of a candidate share (their example draws' common part).
        own = _own_variance(resampled[:, :k]) + _own_variance(resampled[:, k:])
        var_examples = max(0.0, float(by_examples.var(ddof=1)) - own) if self.resamples > 1 else 0.0
        variance = var_seeds + var_examples
        half = t_quantile(self.confidence, _welch_df(parts, variance)) * math.sqrt(variance) if variance > 0 else 0.0
        source = EXAMPLES_ONLY if k == 1 and len(other) == 1 else SEEDS_AND_EXAMPLES
        return DeficitBound(deficit, deficit + half, deficit - half, self.confidence, source, (k, len(other)),
                            examples, se_seeds=math.sqrt(var_seeds), se_examples=math.sqrt(var_examples))


def from_predictions(best: Sequence[RunPredictions], other: Sequence[RunPredictions], metric: str = "accuracy",
                     num_classes: int = 2, positive: int = 1, confidence: float = 0.95,
                     resamples: int = RESAMPLES, seed: int = SEED, paired: bool = False) -> DeficitBound:
    """One comparison's bound (Scorer.bound)."""
    return Scorer(metric, num_classes, positive, confidence, resamples, seed).bound(best, other, paired)


# --- what "as good as the best" demands --------------------------------------------------------------------

# Each metric's default margin is its own (metrics.Metric.margin): one point of accuracy, F1 or MCC. Validation
# loss has no fixed scale (0.3 on one task, 1.1 on another), so its margin is a share of the best's loss: 2%
# holds roughly what a point of accuracy moves the loss by on the demo and SST-2.
DEFAULT_LOSS_MARGIN = metrics.LOSS.margin
LOSS = metrics.LOSS.name


def _metric(name: str) -> metrics.Metric:
    """The metric of a selection name; a name outside the table is measured in points, as accuracy is."""
    return next((metric for metric in metrics.TABLE if metric.name == name), metrics.ACCURACY)


def relative(metric: str) -> bool:
    """Whether deficits on `metric` are a share of the best's value (a loss), not points."""
    return _metric(metric).relative


@dataclass(frozen=True)
class Margin:
    """How close to the best a candidate must be shown to be, and with what confidence."""

    value: float | None = None  # None: the metric's default (metrics.Metric.margin)
    confidence: float = 0.95

    def of(self, metric: str) -> float:
        if self.value is not None:
            return self.value
        return _metric(metric).margin

    def words(self, metric: str) -> str:
        """'1 point', '0.5 points', '2% of the best's loss'."""
        value = self.of(metric)
        if relative(metric):
            return f"{value * 100:.3g}{_metric(metric).unit}"
        points = value * 100
        return f"{points:.3g} point{'' if points == 1 else 's'}"


def amount(value: float, metric: str) -> str:
    """A deficit or a bound in the margin's units: points (0.003 -> '0.3'), or a share of the best's loss."""
    if math.isinf(value):
        return "unbounded"
    return f"{value * 100:.1f}%" if relative(metric) else f"{value * 100:.1f}"


DEFAULT_EVIDENCE = Margin()  # each metric's default margin, at 95% confidence
