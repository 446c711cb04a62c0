"""The headline figure's data: per pick, each EBS at its best lr, with what pick-best's verdict rests on: its
deficit to the best on the selection metric and the deficit's confidence bounds (deficit.py), the margin, the
pick and the EBS shown within the margin, and what each cost, by the count the pick was decided on (cost.py).
present/plots.py draws it, so that the picture and the sentence agree.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from accumbench.analysis.cost import Timing, count_basis

# What a pick's cost was decided on (cost.py's order), each with the words of the axis that draws it.
COST_BASES = {"samples": "samples trained", "steps": "optimizer steps",
              "clock": "seconds per sample (measured)"}


@dataclass(frozen=True)
class HeadlinePoint:
    effective_batch_size: int
    lr: float  # the rate it trained at (its best, under the tuned protocol)
    mean: float  # the selection metric on validation, mean over seeds
    deficit: float  # behind the best (0 for the best; in the metric's units, a share of the best's loss for a loss)
    low: float  # the deficit's confidence bounds (both 0 for the best; inf where nothing bounds it)
    high: float
    seeds: int
    picked: bool
    as_good: bool  # the best, or shown within the margin of it: the group the pick was chosen from
    train_seconds: float  # mean over seeds
    optimizer_steps: float  # mean over seeds
    samples: float = math.nan  # samples trained, mean over seeds
    seconds_per_sample: float = math.nan  # measured: the mean over seeds of each run's mean over its epochs

    def cost(self, basis: str) -> float:
        """This EBS's cost by one of COST_BASES."""
        return {"samples": self.samples, "steps": self.optimizer_steps, "clock": self.seconds_per_sample}[basis]


@dataclass(frozen=True)
class Headline:
    model: str
    group: str  # the pick's group: the model, with its backend where both ran
    metric: str
    margin: float  # the deficit a candidate had to be shown within
    margin_words: str  # '1 point', '2% of the best's loss'
    confidence: float
    points: list[HeadlinePoint]  # ascending EBS
    cost_basis: str = "steps"  # a key of COST_BASES: what the pick minimised among the EBS shown within the margin

    @property
    def cost_words(self) -> str:
        return COST_BASES[self.cost_basis]


def headline(pick: Any) -> Headline:
    """One point per EBS: the candidate of that EBS that did best on validation (under the tuned protocol,
    the only one: each EBS at its best lr)."""
    per_ebs: dict[int, Any] = {}
    for candidate in pick.candidates:  # best first: the first of each EBS is its best
        per_ebs.setdefault(candidate.effective_batch_size, candidate)
    points = []
    for ebs, candidate in sorted(per_ebs.items()):
        values = candidate.runs[pick.metric].astype(float).tolist()
        bound = candidate.deficit
        deficit, low, high = (0.0, 0.0, 0.0) if bound is None else (bound.deficit, bound.lower, bound.upper)
        points.append(HeadlinePoint(
            ebs, float(candidate.runs["lr"].iloc[0]), statistics.fmean(values), deficit, low, high, len(values),
            candidate is pick.chosen, candidate.as_good, float(candidate.train_seconds),
            float(candidate.runs["optimizer_steps"].mean()), float(candidate.samples),
            Timing.of(candidate.seconds_per_sample).mean))
    return Headline(str(pick.chosen.runs["model"].iloc[0]), pick.group, pick.metric, pick.margin,
                    pick.evidence.words(pick.metric), pick.evidence.confidence, points, cost_basis(pick))


def cost_basis(pick: Any) -> str:
    """What the pick's cost was decided on, in cost.cheapest's order: the clock where measured seconds decided
    (far beyond their noise); samples trained where those of the candidates shown within the margin differ
    beyond the tie; else optimizer steps (samples tied). With the best alone within the margin nothing was
    weighed: every candidate's samples, then, as cost.py would weigh them first."""
    if getattr(getattr(pick, "cost", None), "measured_speedup", None) is not None:
        return "clock"
    contenders = [c for c in pick.candidates if c.as_good]
    return count_basis(contenders if len(contenders) > 1 else list(pick.candidates))


def drawable(value: float) -> bool:
    return not math.isnan(value) and not math.isinf(value)
