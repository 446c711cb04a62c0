"""Among the candidates that validation cannot tell apart, which costs the least: the same on every machine.

Measured training seconds move with the machine's load (one epoch of the same run took 37 s and the next
195 s on a busy 2-core machine), so they cannot decide a pick that another day, or another machine, must
reproduce from the same store. What a run did is counted instead, and counts do not move:

    samples trained (samples_seen)   the forward and backward passes; within 2% is a tie
    optimizer steps                  each step's optimizer update and synchronisation; fewer is cheaper
    the larger EBS                   on a tie of both; then the better on validation

At equal epochs every EBS trains the same samples, so the EBS with the fewest steps (the largest) is the
cheapest; at equal steps (--budget steps) the smallest EBS trains the fewest samples.

Measured seconds decide only where they differ far beyond their own run-to-run spread: each run's time
per sample (over its epochs), spread over the runs (seeds) of a candidate, which a sweep trains far apart
in time, so the spread sees the machine's load come and go. A candidate is taken as cheaper when it trained
at least 10% faster per sample and by more than four times the two candidates' relative spreads added;
the justification then says so. With one run a candidate has no run-to-run spread, and the counts decide:
the epochs of one run share one moment's load (a demo trained beside another job measured 2.7x between
two runs whose epochs agreed within a few percent). Nor do candidates trained by different sweeps compare
their clocks: those sweeps ran on other days or beside other jobs, a load no spread within either saw (on
SST-2, a sweep trained beside the test suite measured 1.9x slower per sample than the same cells' sweep on
a quiet machine). Perturbing timings within their noise never changes the pick.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

SAMPLES_TIE = 0.02  # sample counts within 2% of each other are a tie
MIN_SPEEDUP = 1.10  # a measured difference decides only from 10% faster per sample ...
SPREADS = 4.0  # ... and beyond four times the run-to-run spreads of the two


@dataclass(frozen=True)
class Timing:
    """A candidate's training time per sample: the mean over its runs, and the spread between them."""

    mean: float
    relative_spread: float  # standard deviation over mean, between runs; NaN with fewer than two runs
    runs: int

    @classmethod
    def of(cls, per_run: list[list[float]]) -> Timing:
        """`per_run`: each run's seconds per sample, one value per epoch."""
        means = [statistics.fmean(kept) for kept in ([v for v in run if v == v and v > 0] for run in per_run) if kept]
        if not means:
            return cls(float("nan"), float("nan"), 0)
        mean = statistics.fmean(means)
        spread = statistics.stdev(means) / mean if len(means) > 1 else float("nan")
        return cls(mean, spread, len(means))


@dataclass(frozen=True)
class Cheapest:
    chosen: Any  # the candidate
    reason: str  # why, for the justification: '32 is the cheapest of the two: ...'
    measured_speedup: float | None = None  # set where measured seconds decided: per sample, against the counts' pick


def cheapest(contenders: list[Any]) -> Cheapest:
    """The cheapest of `contenders` (each with effective_batch_size, label, samples, steps and
    seconds_per_sample, one list per run): by counts, unless a measured difference is far beyond its noise."""
    by_count = min(_tied_on_samples(contenders), key=lambda c: (c.steps, -c.effective_batch_size))
    count = {2: "two", 3: "three", 4: "four", 5: "five"}.get(len(contenders), str(len(contenders)))
    name = _short(by_count)
    others = ", ".join(f"{_counts(c)} for {_short(c)}" for c in contenders if c is not by_count)
    reason = (f"{name} is the cheapest of the {count} by what it trained: {_counts(by_count)}, against {others} "
              "(counts, not the clock: the same on every machine)")
    faster = _far_faster(contenders, by_count)
    if faster is None:
        return Cheapest(by_count, reason)
    candidate, ratio, noise = faster
    return Cheapest(candidate, f"{_short(candidate)} is the cheapest of the {count} as measured: {ratio:.2f}x faster "
                               f"per sample than {name}, far beyond their run-to-run spread (±{noise:.0%})", ratio)


def count_basis(contenders: list[Any]) -> str:
    """Which count decides among `contenders` by what they trained: 'samples' where their samples differ beyond
    SAMPLES_TIE, else 'steps' (the samples tie, and the fewest optimizer steps win)."""
    return "steps" if len(_tied_on_samples(contenders)) == len(contenders) else "samples"


def _tied_on_samples(contenders: list[Any]) -> list[Any]:
    """The contenders within SAMPLES_TIE of the fewest samples trained: a difference below it is no difference."""
    fewest = min(c.samples for c in contenders)
    return [c for c in contenders if c.samples <= fewest * (1 + SAMPLES_TIE)]


def _far_faster(contenders: list[Any], by_count: Any) -> tuple[Any, float, float] | None:
    """The contender measured fastest per sample, with its speed-up over `by_count` and their spread, when
    that speed-up is far beyond the spread; None otherwise (or where the spread cannot be known)."""
    base = Timing.of(by_count.seconds_per_sample)
    best = None
    for c in contenders:
        timing = Timing.of(c.seconds_per_sample)
        if c is by_count or timing.runs < 2 or base.runs < 2 or not _trained_together(c, by_count):
            continue
        ratio, noise = base.mean / timing.mean, timing.relative_spread + base.relative_spread
        if ratio >= MIN_SPEEDUP and ratio - 1 > SPREADS * noise and (best is None or ratio > best[1]):
            best = (c, ratio, noise)
    return best


def _trained_together(a: Any, b: Any) -> bool:
    """Whether two candidates' runs all come from one sweep (or all from none, NaN: runs of `train`): only then
    did the same stretch of the machine's load reach both, so that their spreads can speak for it."""
    sweeps = set()
    for candidate in (a, b):
        runs = getattr(candidate, "runs", None)
        if runs is not None and "sweep_id" in runs:
            sweeps |= {None if sweep != sweep or sweep is None else int(sweep) for sweep in runs["sweep_id"]}
    return len(sweeps) <= 1


def _short(candidate: Any) -> str:
    return candidate.label.removeprefix("EBS ")


def _counts(candidate: Any) -> str:
    return f"{candidate.samples:,.0f} samples in {candidate.steps:,.0f} optimizer steps"


def cheaper(a: Any, b: Any) -> bool:
    """Whether `a` costs less than `b` by counts, in cheapest's order: fewer samples beyond the tie, else (tied)
    fewer optimizer steps, else the larger EBS."""
    if a.samples * (1 + SAMPLES_TIE) < b.samples:
        return True
    if b.samples * (1 + SAMPLES_TIE) < a.samples:
        return False
    return (a.steps, -a.effective_batch_size) < (b.steps, -b.effective_batch_size)


def saving(cheap: Any, dear: Any) -> str:
    """What `cheap` saves against `dear` by counts: '4.0x fewer samples', '16x fewer optimizer steps', or ''."""
    if dear.samples > cheap.samples * (1 + SAMPLES_TIE):
        return f"{_ratio(dear.samples / cheap.samples)} fewer samples"
    if dear.steps > cheap.steps:
        return f"{_ratio(dear.steps / cheap.steps)} fewer optimizer steps"
    return ""


def _ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"
