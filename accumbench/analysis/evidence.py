"""What the gradient noise scale and the critical batch size say, beside the empirical pick.

    runs' B_simple in their first and last epochs -> the median, and the tried EBS nearest it     noise_advice
    validation accuracy per optimizer step        -> steps to a target per EBS,
                                                     S(B) = S_min + E_min/B fitted, B_crit          critical_batch_sizes

The estimators themselves are plain math in noise_scale.py (McCandlish et al. 2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from accumbench.analysis.runs import NOISE_NOTES, RunData, varying
from accumbench.formatting import format_lr
from accumbench.noise_scale import CriticalBatchFit, fit_critical_batch_size, nearest_tried, steps_to_target


@dataclass
class NoiseAdvice:
    """The gradient noise scale of a model's runs, beside the empirical pick (noise_scale.py)."""

    runs: int  # runs that measured B_simple in their first epoch
    first: float | None  # median B_simple of the first epoch over those runs
    first_range: tuple[float, float] | None
    last: float | None  # median B_simple of the runs' last epochs
    nearest: int | None  # the tried EBS nearest `first` on a log scale
    text: str


@dataclass
class CriticalBatch:
    """Steps to a validation-accuracy target per EBS, and S(B) = S_min + E_min/B fitted to them."""

    label: str  # the lr rule / variant these cells share ('' when the group has one)
    target: float
    target_rule: str  # how the target was set
    points: list[tuple[int, float, int]]  # (EBS, mean steps to target over the seeds that reached it, seeds)
    unreached: list[int]  # EBS where no seed reached the target
    fit: CriticalBatchFit | None
    nearest: int | None  # the tried EBS nearest B_crit
    text: str


def noise_advice(runs: pd.DataFrame, tried: list[int]) -> NoiseAdvice:
    """'measured B_simple ≈ 180 in epoch 1; EBS 256 is the tried size nearest it', from the runs that
    measured it, or why none did."""
    measured = runs[runs["noise_scale_first"].notna()]
    if measured.empty:
        notes = [n for n in dict.fromkeys(runs["noise_note_first"]) if n]
        why = "; ".join(f"{n}: {NOISE_NOTES[n]}" for n in notes) or "no run measured it"
        return NoiseAdvice(0, None, None, None, None, f"noise scale: not measured ({why})")
    # The median over runs: a run's epoch-1 value depends on how many of its steps fall in the first
    # phase of fine-tuning, where a fresh head's gradient is weak and B_simple huge (a large EBS has
    # few steps an epoch, most of them there), so one run can sit far above the others.
    first = float(measured["noise_scale_first"].median())
    low, high = float(measured["noise_scale_first"].min()), float(measured["noise_scale_first"].max())
    last_values = measured["noise_scale_last"].dropna()
    last = float(last_values.median()) if not last_values.empty else None
    nearest = nearest_tried(first, tried)
    n = len(measured)
    spread = f" (median of {n} runs, {low:.3g}–{high:.3g})" if n > 1 else ""
    later = f" and ≈ {last:.3g} in the last" if last is not None else ""
    without = runs.loc[runs["noise_scale_first"].isna(), "noise_note_first"].value_counts()
    unmeasured = "".join(f"; {count} run{'s' if count != 1 else ''} without it ({note})"
                         for note, count in without.items())
    # Length strata count their spread as noise (noise_scale.py): a few percent high on SST-2.
    sorted_cut = any(config.group_by_length for config in measured["config"])
    upper = " (measured on length-sorted micro-batches: if anything, too high)" if sorted_cut else ""
    text = (f"noise scale: B_simple ≈ {first:.3g} in epoch 1{spread}{later}{upper}, the batch size beyond which "
            f"more samples per step start to pay off less; EBS {nearest} is the tried size nearest it{unmeasured}. "
            "A hint for the EBS range of the next sweep, not the answer")
    return NoiseAdvice(n, first, (low, high), last, nearest, text)


def _accuracy_curves(data: RunData, run_ids: list[int]) -> dict[int, list[tuple[int, float]]]:
    """Per run, (optimizer step, validation accuracy) of every evaluation: epoch ends and --eval-every."""
    curves: dict[int, dict[int, float]] = {run_id: {} for run_id in run_ids}
    for frame, step in ((data.epochs, "optimizer_steps"), (data.evals, "step")):
        for run_id, at, accuracy in zip(frame["run_id"], frame[step], frame["val_accuracy"]):
            if run_id in curves:
                curves[run_id][int(at)] = float(accuracy)
    return {run_id: sorted(points.items()) for run_id, points in curves.items()}


def critical_batch_sizes(runs: pd.DataFrame, data: RunData, target: float | None,
                         slices: tuple[str, ...] = ("lr_scaling", "optim_rules", "base_lr", "variant")) -> list[CriticalBatch]:
    """Per slice (an lr rule and base lr, a variant) with 2+ EBS: the steps each EBS took to reach the
    validation-accuracy target (mean over seeds), S(B) = S_min + E_min/B fitted to them, and
    B_crit = E_min/S_min."""
    curves = _accuracy_curves(data, runs["run_id"].tolist())
    best_seen = max((acc for curve in curves.values() for _, acc in curve), default=math.nan)
    if target is None:
        target, rule = 0.99 * best_seen, f"99% of the best seen, {best_seen:.4f}"
    else:
        rule = "--target"
    vary = varying(runs, slices)
    out = []
    for key, group in runs.groupby(vary, sort=True) if vary else [((), runs)]:
        values = dict(zip(vary, key if isinstance(key, tuple) else (key,)))
        label = " ".join(f"lr {format_lr(v)}" if c == "base_lr" else str(v) for c, v in values.items() if v)
        if group["effective_batch_size"].nunique() < 2:
            continue
        points, unreached = [], []
        for ebs, cell in group.groupby("effective_batch_size", sort=True):
            reached = [s for s in (steps_to_target(curves[r], target) for r in cell["run_id"]) if s is not None]
            if reached:
                points.append((int(ebs), sum(reached) / len(reached), len(reached)))
            else:
                unreached.append(int(ebs))
        out.append(_critical_batch(label, target, rule, points, unreached))
    return out


def _critical_batch(label: str, target: float, rule: str, points: list[tuple[int, float, int]],
                    unreached: list[int]) -> CriticalBatch:
    head = f"critical batch size{' (' + label + ')' if label else ''}"
    goal = f"validation accuracy {target:.4f} ({rule})"
    missed = f"; EBS {', '.join(map(str, unreached))} never reached it" if unreached else ""
    if len(points) < 2:
        return CriticalBatch(label, target, rule, points, unreached, None, None,
                             f"{head}: needs steps to {goal} at two EBS at least{missed}")
    fit = fit_critical_batch_size([(b, s) for b, s, _ in points])
    tried = [b for b, _, _ in points]
    shape = (f"S(B) = {fit.s_min:,.0f} + {fit.e_min:,.0f}/B steps to {goal}, fitted over EBS "
             f"{', '.join(map(str, tried))} (rms residual {fit.relative_rms_residual:.1%})")
    nearest = None
    if fit.b_crit is None:
        verdict = ("steps still fall at the largest EBS tried, so B_crit lies above it" if fit.s_min <= 0
                   else "steps do not fall as the EBS grows, so B_crit lies below the smallest tried")
    else:
        nearest = nearest_tried(fit.b_crit, tried)
        outside = "" if fit.b_crit_in_tried_range else " (outside the tried sizes: an extrapolation)"
        verdict = f"B_crit ≈ {fit.b_crit:.3g}{outside}; EBS {nearest} is the tried size nearest it"
    return CriticalBatch(label, target, rule, points, unreached, fit, nearest, f"{head}: {shape}: {verdict}{missed}")
