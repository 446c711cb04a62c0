"""The critical batch size along training, measured by branching (Merrill et al. 2025, "Critical Batch Size
Revisited"): from a run's state saved at a point of training, short branches train the same number of
samples at several EBS (accumbench branch); the critical batch size at that point is the largest EBS whose
loss stays within a tolerance of the smallest EBS's loss.

    loss(B)   the validation loss a branch at EBS B reaches, averaged over the branch seeds
    B_crit    the largest B such that loss(B') <= (1 + tolerance) x loss(B_min) for every B' <= B

"Stays within": the first EBS past the tolerance ends the run of EBS that keep up, so a lucky larger EBS
beyond a failing one does not count. Beside it stands the run's B_simple at the same point (the noise scale
measured from the micro-batches, McCandlish et al. 2018): two estimates, one measured, one predicted.

Plain Python on the store's rows: the report and the study page read it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from accumbench.errors import UserError

DEFAULT_TOLERANCE = 0.01  # relative: 1% more loss than the smallest EBS's


def check_tolerance(tolerance: float) -> float:
    if not (0 < tolerance < 1) or not math.isfinite(tolerance):
        raise UserError(f"--tolerance must be a relative loss increase in (0, 1), got {tolerance:g}; pass e.g. --tolerance 0.01")
    return tolerance


def critical_batch_size(losses: dict[int, float], tolerance: float = DEFAULT_TOLERANCE) -> int:
    """The largest EBS whose loss, and every smaller EBS's, is within (1 + tolerance) of the smallest EBS's loss.
    E.g. {16: 0.50, 64: 0.504, 256: 0.52} at 1%: 64 (0.504 <= 0.505; 0.52 is not)."""
    sizes = sorted(losses)
    bound = (1 + tolerance) * losses[sizes[0]]
    critical = sizes[0]
    for size in sizes[1:]:
        if not losses[size] <= bound:  # NaN fails too
            break
        critical = size
    return critical


@dataclass
class CriticalPoint:
    """One saved state's branches: the loss per EBS (seeds averaged) and the critical batch size there."""

    run_id: int
    step: int
    epoch: float
    samples_seen: int
    losses: dict[int, float]  # EBS -> mean validation loss over seeds
    accuracies: dict[int, float]
    seeds: int  # branch seeds averaged (the fewest any EBS has)
    critical: int
    noise_scale: float | None = None  # the run's B_simple at this point (its epoch's), when measured
    samples: int = 0  # trained in each branch

    def to_json(self) -> dict[str, Any]:
        return dict(run_id=self.run_id, step=self.step, epoch=self.epoch, samples_seen=self.samples_seen,
                    critical_batch_size=self.critical, b_simple=self.noise_scale, seeds=self.seeds,
                    branch_samples=self.samples, losses={str(k): v for k, v in self.losses.items()},
                    accuracies={str(k): v for k, v in self.accuracies.items()})


@dataclass
class CriticalCurve:
    """A run's critical batch size along training, one point per saved state that has branches."""

    run_id: int
    tolerance: float
    points: list[CriticalPoint] = field(default_factory=list)


def critical_curves(states: Sequence[dict[str, Any]], branches: Sequence[dict[str, Any]],
                    epochs: Sequence[dict[str, Any]] = (), tolerance: float | None = None) -> list[CriticalCurve]:
    """Each run's curve from the store's rows (states_of, branches_of, epochs_of), at `tolerance` (None: the one
    the run's latest branch was measured for). With branches of several lengths from one state, the longest is
    used. B_simple at a state saved after epoch e is epoch e's."""
    noise = {(row["run_id"], row["epoch"]): row.get("noise_scale") for row in epochs}
    by_state: dict[int, list[dict[str, Any]]] = {}
    latest: dict[int, float] = {}  # each run's tolerance: its latest branch's
    for row in sorted(branches, key=lambda r: r.get("id") or 0):
        by_state.setdefault(row["state_id"], []).append(row)
        if row.get("tolerance"):
            latest[row["run_id"]] = row["tolerance"]
    curves: dict[int, CriticalCurve] = {}
    for state in sorted(states, key=lambda s: (s["run_id"], s["step"])):
        rows = by_state.get(state["id"])
        if not rows:
            continue
        longest = max(row["samples"] for row in rows)
        rows = [row for row in rows if row["samples"] == longest]
        losses, accuracies, seeds = {}, {}, {}
        for size in sorted({row["effective_batch_size"] for row in rows}):
            same = [row for row in rows if row["effective_batch_size"] == size]
            losses[size] = sum(row["val_loss"] for row in same) / len(same)
            accuracies[size] = sum(row["val_accuracy"] for row in same) / len(same)
            seeds[size] = len(same)
        epoch = state["epoch"]
        b_simple = noise.get((state["run_id"], round(epoch))) if float(epoch).is_integer() and epoch > 0 else None
        at = tolerance if tolerance is not None else latest.get(state["run_id"], DEFAULT_TOLERANCE)
        point = CriticalPoint(state["run_id"], state["step"], epoch, state["samples_seen"], losses, accuracies,
                              min(seeds.values()), critical_batch_size(losses, at),
                              b_simple if b_simple is None or math.isfinite(b_simple) else None, longest)
        curves.setdefault(state["run_id"], CriticalCurve(state["run_id"], at)).points.append(point)
    return list(curves.values())


def curves_of(store: Any, run_ids: Sequence[int], tolerance: float | None = None) -> list[CriticalCurve]:
    """The curves of those of these runs that have saved states with branches, read from an open store."""
    states = store.states_of(list(run_ids))
    with_states = sorted({state["run_id"] for state in states})
    if not with_states:
        return []
    return critical_curves(states, store.branches_of(with_states), store.epochs_of(with_states), tolerance)
