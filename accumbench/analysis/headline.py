"""The headline figure's data: per pick, each EBS at its best lr, on the selection metric, with its interval
and its cost, the pick and the EBS validation cannot tell from the best marked. present/plots.py draws it.

    interval   over seeds: mean ± t(0.975, k-1)·sd/√k; one seed of an accuracy: the binomial interval on
               the validation examples; one seed of a loss: none (a loss has no binomial noise to state)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from accumbench import stats


@dataclass(frozen=True)
class HeadlinePoint:
    effective_batch_size: int
    lr: float  # the rate it trained at (its best, under the tuned protocol)
    mean: float  # the selection metric on validation, mean over seeds
    low: float
    high: float
    seeds: int
    interval: str  # 't over seeds', 'binomial' or 'none'
    picked: bool
    as_good: bool  # the best, or not significantly worse than it: the group the pick was chosen from
    train_seconds: float  # mean over seeds
    optimizer_steps: float  # mean over seeds


@dataclass(frozen=True)
class Headline:
    model: str
    group: str  # the pick's group: the model, with its backend where both ran
    metric: str
    points: list[HeadlinePoint]  # ascending EBS


def headline(pick: Any) -> Headline:
    """One point per EBS: the candidate of that EBS that did best on validation (under the tuned protocol,
    the only one: each EBS at its best lr)."""
    per_ebs: dict[int, Any] = {}
    for candidate in pick.candidates:  # best first: the first of each EBS is its best
        per_ebs.setdefault(candidate.effective_batch_size, candidate)
    points = []
    for ebs, candidate in sorted(per_ebs.items()):
        values = candidate.runs[pick.metric].astype(float).tolist()
        examples = candidate.runs["num_val_samples"].iloc[0]  # None or NaN where a run did not record it
        low, high, interval = _interval(values, pick.metric, int(examples) if examples == examples and examples else 0)
        points.append(HeadlinePoint(
            ebs, float(candidate.runs["lr"].iloc[0]), statistics.fmean(values), low, high, len(values), interval,
            candidate is pick.chosen, candidate is pick.best or candidate.not_worse, float(candidate.train_seconds),
            float(candidate.runs["optimizer_steps"].mean())))
    return Headline(str(pick.chosen.runs["model"].iloc[0]), pick.group, pick.metric, points)


_RANGES = {"val_accuracy": (0.0, 1.0), "val_f1": (0.0, 1.0), "val_mcc": (-1.0, 1.0)}


def _interval(values: list[float], metric: str, examples: int) -> tuple[float, float, str]:
    mean = statistics.fmean(values)
    if any(math.isnan(v) for v in values):
        return mean, mean, "none"
    if len(values) > 1:
        half = stats.student_t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        low, high = _RANGES.get(metric, (-math.inf, math.inf))  # an accuracy cannot leave [0, 1]
        return max(low, mean - half), min(high, mean + half), "t over seeds"
    if metric == "val_accuracy" and examples > 0:
        half = stats.Z95 * stats.accuracy_se(min(max(mean, 0.0), 1.0), examples)
        return max(0.0, mean - half), min(1.0, mean + half), "binomial"
    return mean, mean, "none"
