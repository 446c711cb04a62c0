"""When racing stops an arm (sweep --race, pick-best --replay-race): the rule's four settings and their checks.

Light on purpose (no numpy, no pandas): the sweep's options are checked with it before anything loads.
analysis/racing.py applies the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accumbench import metrics
from accumbench.errors import UserError
from accumbench.formatting import plain_number, unknown_choice
from accumbench.vocabulary import METRICS, RACE_AFTER, RACE_ALPHA, RACE_GUARD, RACE_GUARDS


@dataclass(frozen=True)
class RaceRule:
    """When racing stops an arm: the margin it must be behind by, the confidence of that, the first epoch, the guard."""

    alpha: float = RACE_ALPHA  # the one-sided error of the deficit's lower bound
    margin: float | None = None  # None: the metric's own (metrics.Metric.margin)
    after: int = RACE_AFTER
    guard: str = RACE_GUARD

    def margin_of(self, metric: str) -> float:
        return self.margin if self.margin is not None else metrics.named(metric).margin

    def words(self, metric: str) -> str:
        """'alpha 0.01, margin 0.01, from epoch 2, guard closing'"""
        return f"alpha {self.alpha:g}, margin {self.margin_of(metric):g}, from epoch {self.after}, guard {self.guard}"

    def to_json(self) -> dict[str, object]:
        return {"race_alpha": self.alpha, "race_margin": self.margin, "race_after": self.after,
                "race_guard": self.guard}


def check_rule(alpha: object, after: object, margin: object, guard: object, metric: str, flag: str = "--race") -> RaceRule:
    """--race-alpha, --race-after, --race-margin, --race-guard and --race-metric, checked together (sweep and
    pick-best --replay-race): one UserError naming the option and a value that works."""
    try:
        alpha = float(alpha)  # type: ignore[arg-type]
        if isinstance(after, bool) or float(after) != int(after):  # type: ignore[arg-type]
            raise ValueError
        after = int(after)  # type: ignore[call-overload]
        margin = None if margin is None else float(margin)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError("--race-alpha and --race-margin must be numbers and --race-after a whole number of epochs; "
                        "e.g. --race-alpha 0.01 --race-margin 0.01 --race-after 2") from None
    if not 0 < alpha < 1:
        raise UserError(f"--race-alpha must be between 0 and 1, got {plain_number(alpha)}; the default is "
                        f"{RACE_ALPHA:g} (an arm stops when its deficit is above the margin with 1 - alpha confidence)")
    if after < 1:
        raise UserError(f"--race-after must be at least 1, got {after}: a run can stop after its first epoch at "
                        "the earliest; e.g. --race-after 1")
    if guard not in RACE_GUARDS:
        raise UserError(unknown_choice("--race-guard", str(guard), RACE_GUARDS))
    if metric not in METRICS:
        raise UserError(unknown_choice("--race-metric", metric, METRICS))
    if metrics.named(metric).score is None:
        scored = [m.name for m in metrics.TABLE if m.score is not None]
        raise UserError(f"{flag} cannot use a margin on {METRICS[metric]}: racing bounds an arm's deficit from each "
                        f"validation example's prediction, and a loss is not kept per example; race on "
                        f"{', '.join(scored)} (e.g. --race-metric {scored[0]})")
    if margin is not None and not (math.isfinite(margin) and 0 <= margin < 1):
        raise UserError(f"--race-margin must be at least 0 and below 1 (in units of {METRICS[metric]}), got "
                        f"{plain_number(margin)}; e.g. --race-margin 0.01 (one point)")
    return RaceRule(alpha, margin, after, str(guard))


DEFAULT_RULE = RaceRule()
