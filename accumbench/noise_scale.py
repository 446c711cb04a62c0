"""The gradient noise scale, measured for free from the accumulation micro-batches, and the critical
batch size fitted from a sweep (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Σ) / |G|², where G is the true gradient and Σ the per-sample gradient covariance.
Batches much smaller than B_simple waste steps (the update is mostly noise); much larger ones waste
samples (the noise is already gone). Gradient accumulation computes what the estimator of App. A.1
needs, for every optimizer group of k >= 2 micro-batches:

    g_j      the gradient of micro-batch j's mean loss (b_j samples): read in the backward pass,
             before it is added to .grad, by a hook on every parameter (MicroBatchGradNorms)
    G_group  the accumulated gradient = the gradient of the group's mean loss (B samples): the
             gradient norm the optimizer step measures anyway (before clipping, after unscaling)

Since E|g_b|² = |G|² + tr(Σ)/b for a mean over b samples, two batch sizes give two equations:

    |G|²_est = (B·|G_big|² − b·|G_small|²) / (B − b)
    S_est    = (|G_small|² − |G_big|²) / (1/b − 1/B)
    with |G_small|² = mean_j |g_j|², |G_big|² = |G_group|², and 1/b = mean_j 1/b_j (a ragged last
    micro-batch keeps both estimates unbiased: the expectation of mean_j |g_j|² has mean_j 1/b_j in it)

Both are unbiased but very noisy per step, and their ratio is not unbiased: a mean of per-step ratios
lands ~4% high on the linear-regression known answer (tests/test_noise_scale.py). So each is averaged
on its own, as bias-corrected exponential moving averages, and B_simple = EMA(S) / EMA(|G|²).

Why micro-batches must be random subsets of their group: with --group-by-length the group is sorted
by length before it is cut, so each micro-batch is one length stratum, and the spread *between*
strata (short and long reviews pull the weights differently) is counted about b times over as noise.
That biases tr(Σ), and B_simple, upward: by 6% ± 4% on SST-2 with MiniLM (bench/noise_scale.py cuts
the same groups both ways), small beside the estimate's own noise, so pick-best calls it an upper
estimate rather than refusing it; --no-group-by-length measures on random micro-batches.

Everything here is plain Python on floats, so reports import it without torch; the hooks that read
each micro-batch's gradient in the backward pass are backends/grad_norms.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_DECAY = 0.99  # EMA weight of the past: about the last 100 optimizer steps of an epoch


@dataclass(frozen=True)
class GroupNorms:
    """What one optimizer group tells about the gradient noise (all ranks summed)."""

    micro_sq_sum: float  # sum over the group's micro-batches of |g_j|²
    inverse_size_sum: float  # sum over the group's micro-batches of 1 / b_j
    micro_batches: int  # k: micro-batches of the group with samples in them
    group_size: int  # B: samples of the group
    group_sq: float  # |G_group|²: the accumulated gradient's squared norm

    @property
    def usable(self) -> bool:
        """Two batch sizes are needed, so a group of one micro-batch (k = 1) tells nothing."""
        return self.micro_batches >= 2 and math.isfinite(self.micro_sq_sum) and math.isfinite(self.group_sq)

    def estimates(self) -> tuple[float, float]:
        """(|G|²_est, S_est = tr(Σ)_est) of App. A.1 from this group alone; unbiased, noisy."""
        if not self.usable:
            raise ValueError("the noise scale needs a group of at least two micro-batches with finite gradients")
        small_sq = self.micro_sq_sum / self.micro_batches
        small = self.micro_batches / self.inverse_size_sum  # b: the harmonic mean micro-batch size
        big = float(self.group_size)
        grad_sq = (big * self.group_sq - small * small_sq) / (big - small)
        trace = (small_sq - self.group_sq) / (1 / small - 1 / big)
        return grad_sq, trace


def measurable(effective_batch_size: int, micro_batch_size: int) -> bool:
    """Whether a step has the two batch sizes the estimator needs: 2+ micro-batches (over all processes)."""
    return effective_batch_size // micro_batch_size >= 2


class NoiseScaleEMA:
    """Bias-corrected exponential moving averages of |G|²_est and S_est, kept apart: their ratio is
    B_simple. (Dividing per step and then averaging is biased; see the module docstring.)"""

    def __init__(self, decay: float = DEFAULT_DECAY) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._grad_sq = self._trace = 0.0
        self._weight = 0.0  # 1 - decay**steps: the bias correction (Adam's)
        self.steps = 0

    def update(self, grad_sq: float, trace: float) -> None:
        self._grad_sq = self.decay * self._grad_sq + (1 - self.decay) * grad_sq
        self._trace = self.decay * self._trace + (1 - self.decay) * trace
        self._weight = self.decay * self._weight + (1 - self.decay)
        self.steps += 1

    @property
    def grad_sq(self) -> float | None:
        """EMA of |G|²_est, bias-corrected; None before the first update."""
        return self._grad_sq / self._weight if self.steps else None

    @property
    def trace(self) -> float | None:
        """EMA of S_est = tr(Σ)_est, bias-corrected; None before the first update."""
        return self._trace / self._weight if self.steps else None

    @property
    def noise_scale(self) -> float | None:
        """B_simple = EMA(S) / EMA(|G|²). None before the first update, and NaN while EMA(|G|²) <= 0:
        the noise swamps the signal (|G|² is estimated as a small difference), so B_simple is
        beyond what these batch sizes can resolve."""
        if not self.steps:
            return None
        if not self.grad_sq > 0:
            return math.nan
        return self.trace / self.grad_sq


# --- the critical batch size from a sweep ----------------------------------------------------------

def steps_to_target(points: Sequence[tuple[int, float]], target: float) -> float | None:
    """The optimizer step at which validation accuracy first reaches `target`, from (step, accuracy)
    evaluations in step order, linearly interpolated between the evaluation before and the one at
    the crossing (evaluations are sparse; a step count quantised to them would blur S(B)). None if
    the target is never reached."""
    previous = (0, None)
    for step, accuracy in points:
        if accuracy >= target:
            before_step, before_accuracy = previous
            if before_accuracy is None or accuracy == before_accuracy:
                return float(step)
            fraction = (target - before_accuracy) / (accuracy - before_accuracy)
            return before_step + fraction * (step - before_step)
        previous = (step, accuracy)
    return None


@dataclass(frozen=True)
class CriticalBatchFit:
    """S(B) = S_min + E_min / B (McCandlish et al. eq. 2.11 in steps), fitted over the tried EBS."""

    s_min: float  # optimizer steps at an infinitely large batch
    e_min: float  # samples at an infinitely small batch
    points: tuple[tuple[int, float], ...]  # (EBS, steps to target)
    relative_rms_residual: float  # sqrt(mean((S_fit / S - 1)²)): how well the model explains the points

    @property
    def b_crit(self) -> float | None:
        """E_min / S_min, the batch size where the trade-off turns; None when the fit is not of that
        shape (S_min <= 0: steps still falling at the largest EBS; E_min <= 0: steps not falling, where
        a term E_min/B under a millionth of S_min at the smallest EBS is rounding, not a fall)."""
        smallest = min(b for b, _ in self.points)
        if self.s_min <= 0 or self.e_min / smallest <= 1e-6 * self.s_min:
            return None
        return self.e_min / self.s_min

    @property
    def b_crit_in_tried_range(self) -> bool:
        """Whether B_crit lies between the smallest and largest EBS tried; outside it is an extrapolation."""
        sizes = [b for b, _ in self.points]
        return self.b_crit is not None and min(sizes) <= self.b_crit <= max(sizes)


def fit_critical_batch_size(points: Sequence[tuple[int, float]]) -> CriticalBatchFit:
    """Least squares of S = S_min + E_min·x in x = 1/B, each point weighted by 1/S²: that minimises
    relative residuals, as S spans orders of magnitude (13,500 steps at EBS 16 and 1,195 at EBS 1024
    for B_crit 200) and its noise grows with it; plain residuals would let the smallest EBS decide
    S_min alone. Needs two EBS at least; two fit exactly."""
    points = tuple(sorted((int(b), float(s)) for b, s in points))
    if len({b for b, _ in points}) < 2:
        raise ValueError("the critical batch size needs steps-to-target at two effective batch sizes at least")
    weights = [1.0 / s**2 for _, s in points]
    xs = [1.0 / b for b, _ in points]
    ys = [s for _, s in points]
    total = sum(weights)
    mean_x = sum(w * x for w, x in zip(weights, xs)) / total
    mean_y = sum(w * y for w, y in zip(weights, ys)) / total
    sxx = sum(w * (x - mean_x) ** 2 for w, x in zip(weights, xs))
    sxy = sum(w * (x - mean_x) * (y - mean_y) for w, x, y in zip(weights, xs, ys))
    e_min = sxy / sxx
    s_min = mean_y - e_min * mean_x
    residual = math.sqrt(sum(((s_min + e_min * x) / y - 1) ** 2 for x, y in zip(xs, ys)) / len(points))
    return CriticalBatchFit(s_min, e_min, points, residual)


def nearest_tried(value: float, tried: Sequence[int]) -> int:
    """The tried batch size nearest `value` on a log scale (batch sizes go up in factors)."""
    return min(tried, key=lambda b: (abs(math.log(b / value)), b))
