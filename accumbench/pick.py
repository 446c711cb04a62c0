"""`accumbench pick-best`: the best effective batch size per model, chosen on validation only, with
the uncertainty of the choice stated.

    protocol   = tuned (the default when some EBS has 2+ lrs): each EBS at its own best lr first
                 (tuning.py), then the stages below over those; pooled: every cell competes as it is
    candidates = the cells of a model (configurations up to their seed; report.cell_key)
    best       = the highest mean validation accuracy over seeds (or lowest val loss, --metric)
    screen     = which candidates are not significantly worse than the best, on validation:
                 Welch's t-test across seeds when both have 2+ seeds, else an exact McNemar test on
                 the paired validation predictions (matched by seed)
    pick       = among those, the cheapest by training time; a tie (within 2%) goes to the larger EBS

Why nested: pooled, a noisy cell at a poor lr can pass the screen and win on time, so the lr choice
leaks into the EBS answer. `compare_protocols` shows the pick under each protocol the runs support.

Test data never enters the choice: the pick's test accuracy (with a 95% interval) and an exact
McNemar test on the paired *test* predictions against every other candidate are reported after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from accumbench import stats
from accumbench.config import format_lr, rate_key
from accumbench.noise_scale import CriticalBatchFit, fit_critical_batch_size, nearest_tried, steps_to_target
from accumbench.report import NOISE_NOTES, RunData, cell_label, varying
from accumbench.tuning import (
    LINEAR_ALPHA, SQRT_ALPHA, BestLr, ScalingFit, best_lrs, fit_scaling, has_lr_grid, tuned_runs,
)

METRICS = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}
PROTOCOLS = ("tuned", "pooled")
PROTOCOL_MEANINGS = {"pooled": "every (EBS, lr) cell competes as it is",
                     "tuned": "each EBS at its best lr on validation, then EBS against EBS"}
TIME_TIE = 0.02  # training times within 2% of each other are a tie: the larger EBS wins it


@dataclass
class Candidate:
    cell: str
    label: str
    effective_batch_size: int
    runs: pd.DataFrame  # this candidate's runs, one per seed
    metric_mean: float
    metric_std: float  # NaN with one seed
    train_seconds: float  # mean total training time over seeds
    # Filled in against the best candidate (None for the best itself):
    screen_test: Optional[str] = None  # "welch" or "mcnemar-validation"
    screen_p: Optional[float] = None
    welch_p: Optional[float] = None
    mcnemar_validation_p: Optional[float] = None
    mcnemar_test_p: Optional[float] = None
    mcnemar_test_discordant: Optional[tuple[int, int]] = None  # (best right & this wrong, best wrong & this right)
    not_worse: bool = True

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs["seed"].tolist())


@dataclass
class Pick:
    group: str  # the model (or "all")
    metric: str
    alpha: float
    candidates: list[Candidate]  # best first, then by metric
    best: Candidate
    chosen: Candidate
    test_accuracy: float
    test_ci: tuple[float, float]
    test_examples: int
    justification: str
    warnings: list[str] = field(default_factory=list)
    noise: Optional[NoiseAdvice] = None  # what the measured gradient noise scale recommends
    critical: list[CriticalBatch] = field(default_factory=list)  # one per lr rule / variant with 2+ EBS
    protocol: str = "pooled"
    best_lrs: list[BestLr] = field(default_factory=list)  # tuned: each EBS's best lr (stage 1)
    scaling: list[ScalingFit] = field(default_factory=list)  # tuned: lr* ∝ EBS^alpha per grid


@dataclass
class NoiseAdvice:
    """The gradient noise scale of a model's runs, beside the empirical pick (noise_scale.py)."""

    runs: int  # runs that measured B_simple in their first epoch
    first: Optional[float]  # median B_simple of the first epoch over those runs
    first_range: Optional[tuple[float, float]]
    last: Optional[float]  # median B_simple of the runs' last epochs
    nearest: Optional[int]  # the tried EBS nearest `first` on a log scale
    text: str


@dataclass
class CriticalBatch:
    """Steps to a validation-accuracy target per EBS, and S(B) = S_min + E_min/B fitted to them."""

    label: str  # the lr rule / variant these cells share ('' when the group has one)
    target: float
    target_rule: str  # how the target was set
    points: list[tuple[int, float, int]]  # (EBS, mean steps to target over the seeds that reached it, seeds)
    unreached: list[int]  # EBS where no seed reached the target
    fit: Optional[CriticalBatchFit]
    nearest: Optional[int]  # the tried EBS nearest B_crit
    text: str


def _groups(runs: pd.DataFrame, by: str) -> list[tuple[str, pd.DataFrame]]:
    """One group per model (by='model') or one over everything (by='none'), and per backend when both
    ran: they are two implementations of one training, so letting them compete would pick a backend
    (by speed) rather than a batch size, and pooling their runs would count every seed twice.
    `accumbench report` compares the backends."""
    keys = (["model"] if by == "model" else []) + (["backend"] if runs["backend"].nunique() > 1 else [])
    if not keys:
        return [("all models", runs)]
    return [(", ".join(map(str, name if isinstance(name, tuple) else (name,))), group)
            for name, group in runs.groupby(keys, sort=True)]


def default_protocol(runs: pd.DataFrame) -> str:
    """tuned when some EBS has more than one lr (there is an lr to tune), else pooled (the same then)."""
    return "tuned" if has_lr_grid(runs) else "pooled"


def pick_best(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
              alpha: float = 0.05, by: str = "model", target: Optional[float] = None,
              protocol: Optional[str] = None) -> list[Pick]:
    """One Pick per model (by='model') or one over everything (by='none'), and per backend.
    `predictions` is {'validation': {run_id: ...}, 'test': {run_id: ...}} as Store.predictions returns.
    `protocol` None chooses per group (default_protocol)."""
    picks = []
    for name, group in _groups(data.runs, by):
        pick = _pick_by_protocol(name, group, data, predictions, metric, alpha, protocol or default_protocol(group))
        tried = sorted({c.effective_batch_size for c in pick.candidates})
        pick.noise = noise_advice(group, tried)
        if pick.protocol == "tuned":
            # Steps-to-target assumes each batch size at its best lr (McCandlish et al.), as tuned picks them.
            pick.critical = critical_batch_sizes(tuned_runs(group, pick.best_lrs), data, target, slices=("variant",))
        else:
            pick.critical = critical_batch_sizes(group, data, target)
        picks.append(pick)
    return picks


def _pick_by_protocol(name: str, group: pd.DataFrame, data: RunData, predictions: dict[str, dict[int, dict[str, Any]]],
                      metric: str, alpha: float, protocol: str) -> Pick:
    if protocol == "pooled":
        return _pick_group(name, group, predictions, metric, alpha)
    best = best_lrs(group, metric, data.diverged)
    pick = _pick_group(name, tuned_runs(group, best), predictions, metric, alpha, tuned=True)
    pick.protocol, pick.best_lrs, pick.scaling = "tuned", best, fit_scaling(best)
    pick.warnings += [b.warning for b in best if b.warning]
    return pick


# --- the noise scale and the critical batch size, beside the empirical pick -------------------------


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
    upper = " (from length-sorted micro-batches: an upper estimate)" if sorted_cut else ""
    text = (f"noise scale: measured B_simple ≈ {first:.3g} in epoch 1{spread}{later}{upper}; "
            f"EBS {nearest} is the tried size nearest it{unmeasured}")
    return NoiseAdvice(n, first, (low, high), last, nearest, text)


def _accuracy_curves(data: RunData, run_ids: list[int]) -> dict[int, list[tuple[int, float]]]:
    """Per run, (optimizer step, validation accuracy) of every evaluation: epoch ends and --eval-every."""
    curves: dict[int, dict[int, float]] = {run_id: {} for run_id in run_ids}
    for frame, step in ((data.epochs, "optimizer_steps"), (data.evals, "step")):
        for run_id, at, accuracy in zip(frame["run_id"], frame[step], frame["val_accuracy"]):
            if run_id in curves:
                curves[run_id][int(at)] = float(accuracy)
    return {run_id: sorted(points.items()) for run_id, points in curves.items()}


def critical_batch_sizes(runs: pd.DataFrame, data: RunData, target: Optional[float],
                         slices: tuple[str, ...] = ("lr_scaling", "base_lr", "variant")) -> list[CriticalBatch]:
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


def _candidates(group: pd.DataFrame, metric: str) -> list[Candidate]:
    vary = varying(group, ("model", "lr_scaling", "base_lr", "variant"))
    out = []
    for cell, runs in group.groupby("cell", sort=False):
        first = runs.iloc[0]
        values = runs[metric].astype(float)
        out.append(Candidate(cell=cell, label=cell_label(first, vary), effective_batch_size=int(first["effective_batch_size"]),
                             runs=runs, metric_mean=values.mean(), metric_std=values.std(),
                             train_seconds=runs["train_seconds"].mean()))
    higher_is_better = metric == "val_accuracy"
    # NaN (a diverged run's loss) sorts last whichever way the metric goes.
    out.sort(key=lambda c: (math.isnan(c.metric_mean), -c.metric_mean if higher_is_better else c.metric_mean))
    return out


def _paired_discordance(best: Candidate, other: Candidate, preds: dict[int, dict[str, Any]]) -> Optional[tuple[int, int]]:
    """(b, c) summed over the seeds both ran, pairing runs of the same seed on the same examples;
    None when no seed can be paired (no predictions recorded, or different splits)."""
    b = c = paired = 0
    others = {row.seed: row.run_id for row in other.runs.itertuples()}
    for row in best.runs.itertuples():
        mine, theirs = preds.get(row.run_id), preds.get(others.get(row.seed))
        if mine is None or theirs is None or mine["split_hash"] != theirs["split_hash"]:
            continue
        db, dc = stats.discordant_pairs(mine["labels"], mine["predicted"], theirs["predicted"])
        b, c, paired = b + db, c + dc, paired + 1
    return (b, c) if paired else None


def _pick_group(name: str, group: pd.DataFrame, predictions: dict[str, dict[int, dict[str, Any]]],
                metric: str, alpha: float, tuned: bool = False) -> Pick:
    candidates = _candidates(group, metric)
    best = candidates[0]
    warnings = []
    if all(len(c.runs) < 2 for c in candidates):
        warnings.append("one seed per cell: the comparison rests on exact McNemar tests of single runs "
                        "(validation to choose, test to report); run more seeds (--seeds) for a test across seeds")
    for other in candidates[1:]:
        if len(best.runs) >= 2 and len(other.runs) >= 2:
            _, _, other.welch_p = stats.welch_t_test(best.runs[metric].astype(float).tolist(),
                                                     other.runs[metric].astype(float).tolist())
        validation = _paired_discordance(best, other, predictions.get("validation", {}))
        if validation is not None:
            other.mcnemar_validation_p = stats.mcnemar_exact(*validation)
        test = _paired_discordance(best, other, predictions.get("test", {}))
        if test is not None:
            other.mcnemar_test_discordant = test
            other.mcnemar_test_p = stats.mcnemar_exact(*test)
        if other.welch_p is not None and not math.isnan(other.welch_p):
            other.screen_test, other.screen_p = "welch", other.welch_p
        elif other.mcnemar_validation_p is not None:
            other.screen_test, other.screen_p = "mcnemar-validation", other.mcnemar_validation_p
        # Untestable (no paired predictions, a single seed) or diverged: no evidence it is as good.
        other.not_worse = (other.screen_p is not None and other.screen_p >= alpha
                           and not math.isnan(other.metric_mean))
        if other.screen_p is None:
            warnings.append(f"{other.label} could not be tested against {best.label} (no paired predictions)")

    contenders = [best] + [c for c in candidates[1:] if c.not_worse]
    fastest = min(c.train_seconds for c in contenders)
    tied = [c for c in contenders if c.train_seconds <= fastest * (1 + TIME_TIE)]
    chosen = max(tied, key=lambda c: c.effective_batch_size)

    test_accuracies = chosen.runs["test_accuracy"].astype(float).tolist()
    n_test = int(chosen.runs["num_test_samples"].iloc[0])
    mean, low, high = stats.mean_accuracy_ci(test_accuracies, n_test)
    justification = _justify(candidates, best, chosen, contenders, metric, alpha)
    if tuned:
        justification = f"each EBS at its best lr on validation, then EBS against EBS: {justification}"
    return Pick(name, metric, alpha, candidates, best, chosen, mean, (low, high), n_test, justification, warnings)


def _fmt(candidate: Candidate, metric: str) -> str:
    seeds = len(candidate.runs)
    spread = "" if math.isnan(candidate.metric_std) else f"±{candidate.metric_std:.4f}"
    return f"{candidate.metric_mean:.4f}{spread} ({seeds} seed{'s' if seeds != 1 else ''})"


def _names(candidates: list[Candidate]) -> str:
    labels = [c.label.removeprefix("EBS ") for c in candidates]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _ps(candidates: list[Candidate]) -> str:
    return ", ".join(f"{c.screen_p:.2g}" if c.screen_p is not None else "untested" for c in candidates)


def _justify(candidates: list[Candidate], best: Candidate, chosen: Candidate, contenders: list[Candidate],
             metric: str, alpha: float) -> str:
    """The pick in one sentence of evidence, e.g. 'EBS 256: validation accuracy 0.9012±0.0021 (3 seeds);
    64 and 1024 are not significantly different (p=0.41, 0.63); 256 is the fastest of the three'."""
    words = METRICS[metric]
    others = [c for c in candidates if c is not chosen]
    same = [c for c in others if c.not_worse and c is not best]
    worse = [c for c in others if not c.not_worse and c is not best]
    text = f"{chosen.label}: {words} {_fmt(chosen, metric)}"
    if chosen is not best:
        text += (f"; the best, {best.label} at {_fmt(best, metric)}, is not significantly better "
                 f"(p={chosen.screen_p:.2g}, {_test_name(chosen)})")
    if same:
        verb = "is" if len(same) == 1 else "are"
        text += f"; {_names(same)} {verb} not significantly different from the best (p={_ps(same)})"
    if worse:
        verb = "is" if len(worse) == 1 else "are"
        text += f"; {_names(worse)} {verb} significantly worse or untested (p={_ps(worse)}, alpha {alpha:g})"
    if len(contenders) == 1:
        text += f"; no other candidate is as good, so {chosen.label.removeprefix('EBS ')} is the pick"
    else:
        count = {2: "two", 3: "three", 4: "four", 5: "five"}.get(len(contenders), str(len(contenders)))
        text += (f"; {chosen.label.removeprefix('EBS ')} is the fastest of the {count} "
                 f"({chosen.train_seconds:.0f} s of training)")
    return text


def _test_name(candidate: Candidate) -> str:
    return {"welch": "Welch's t-test across seeds", "mcnemar-validation": "exact McNemar on validation"}.get(
        candidate.screen_test or "", "untested")


def as_json(picks: list[Pick]) -> dict[str, Any]:
    """The same as the printed pick, for machines."""

    def candidate(c: Candidate) -> dict[str, Any]:
        return {
            "label": c.label, "effective_batch_size": c.effective_batch_size, "seeds": c.seeds,
            "run_ids": sorted(c.runs["run_id"].tolist()), "metric_mean": _num(c.metric_mean),
            "metric_std": _num(c.metric_std), "train_seconds": _num(c.train_seconds),
            "screen_test": c.screen_test, "screen_p": _num(c.screen_p), "welch_p": _num(c.welch_p),
            "mcnemar_validation_p": _num(c.mcnemar_validation_p), "mcnemar_test_p": _num(c.mcnemar_test_p),
            "mcnemar_test_discordant": list(c.mcnemar_test_discordant) if c.mcnemar_test_discordant else None,
            "not_significantly_worse": c.not_worse,
        }

    return {"picks": [{
        "group": p.group, "metric": p.metric, "alpha": p.alpha, "protocol": p.protocol, "pick": p.chosen.label,
        "effective_batch_size": p.chosen.effective_batch_size, "lr": _lr_of(p.chosen),
        "best_on_validation": p.best.label,
        "test_accuracy": p.test_accuracy, "test_accuracy_ci95": list(p.test_ci), "test_examples": p.test_examples,
        "justification": p.justification, "warnings": p.warnings,
        "candidates": [candidate(c) for c in p.candidates],
        "noise_scale": None if p.noise is None else {
            "runs": p.noise.runs, "epoch_1": _num(p.noise.first), "epoch_1_range": p.noise.first_range,
            "last_epoch": _num(p.noise.last), "nearest_tried": p.noise.nearest, "text": p.noise.text},
        "critical_batch_size": [{
            "label": c.label, "target": _num(c.target), "target_rule": c.target_rule,
            "steps_to_target": [{"effective_batch_size": b, "steps": s, "seeds": n} for b, s, n in c.points],
            "unreached": c.unreached,
            "s_min": _num(c.fit.s_min) if c.fit else None, "e_min": _num(c.fit.e_min) if c.fit else None,
            "b_crit": _num(c.fit.b_crit) if c.fit else None,
            "relative_rms_residual": _num(c.fit.relative_rms_residual) if c.fit else None,
            "nearest_tried": c.nearest, "text": c.text} for c in p.critical],
        "best_lr_per_ebs": [best_lr_json(b) for b in p.best_lrs],
        "lr_scaling_fit": [{
            "label": f.label, "alpha": _num(f.alpha), "alpha_ci95": None if f.alpha_ci95 is None else list(f.alpha_ci95),
            "intercept": _num(f.intercept), "points": [{"effective_batch_size": b, "lr": lr} for b, lr in f.points],
            "at_edge": f.at_edge, "sqrt_predicts": SQRT_ALPHA, "linear_predicts": LINEAR_ALPHA, "text": f.text} for f in p.scaling],
    } for p in picks]}


def best_lr_json(b: BestLr) -> dict[str, Any]:
    return {
        "label": b.label, "effective_batch_size": b.effective_batch_size, "lr": b.best.lr,
        "metric_mean": _num(b.best.mean), "metric_std": _num(b.best.std), "seeds": b.best.seeds,
        "lrs_tried": [{"lr": t.lr, "metric_mean": _num(t.mean), "metric_std": _num(t.std), "seeds": t.seeds,
                       "diverged": t.diverged} for t in b.tried],
        "edge": b.edge, "suggested_lr": b.suggestion, "refined_lr": b.refined_lr, "refined": b.refined,
        "warning": b.warning,
    }


def _lr_of(candidate: Candidate) -> float:
    return float(candidate.runs["lr"].iloc[0])


def _num(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN: an undefined statistic is null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


# --- the same runs under every protocol they support -------------------------------------------------


@dataclass
class ProtocolPick:
    kind: str  # 'single lr', 'scaling rule', 'pooled' or 'tuned'
    name: str  # e.g. 'single lr 1e-4', 'sqrt scaling of 1e-4 at EBS 64', 'pooled', 'tuned'
    pick: Pick


@dataclass
class ProtocolComparison:
    group: str
    protocols: list[ProtocolPick]

    @property
    def picked(self) -> list[int]:
        return sorted({p.pick.chosen.effective_batch_size for p in self.protocols})

    @property
    def answer_changes(self) -> bool:
        return len(self.picked) > 1

    @property
    def text(self) -> str:
        if not self.protocols:
            return "no protocol can be compared: every lr was tried at one EBS only"
        if not self.answer_changes:
            return f"every protocol picks EBS {self.picked[0]}"
        by_ebs = {ebs: [p.name for p in self.protocols if p.pick.chosen.effective_batch_size == ebs] for ebs in self.picked}
        return "the EBS picked depends on the protocol: " + "; ".join(
            f"EBS {ebs} under {', '.join(names)}" for ebs, names in by_ebs.items())


def compare_protocols(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
                      alpha: float = 0.05, by: str = "model") -> list[ProtocolComparison]:
    """Per group, the pick under each protocol the runs support: every EBS at one lr (the seed study's
    way; one per lr trained at 2+ EBS, whatever rule led there), each recorded scaling rule from each base
    lr, every cell pooled, and tuned. Whether the EBS picked changes is the finding."""
    out = []
    for name, group in _groups(data.runs, by):
        rows = []
        rates = group.assign(rate=group["lr"].map(rate_key))
        for _, at_rate in sorted(rates.groupby("rate"), key=lambda item: float(item[0])):
            if at_rate["effective_batch_size"].nunique() > 1:
                lr = float(at_rate["lr"].iloc[0])
                rows.append(ProtocolPick("single lr", f"single lr {format_lr(lr)}",
                                         _pick_group(name, at_rate.drop(columns="rate"), predictions, metric, alpha)))
        scaled = group[group["lr_scaling"] != "none"]
        for (rule, base, at), rule_runs in scaled.groupby(["lr_scaling", "base_lr", "base_batch_size"], sort=True):
            if rule_runs["effective_batch_size"].nunique() > 1:
                rows.append(ProtocolPick("scaling rule", f"{rule} scaling of {format_lr(base)} at EBS {at}",
                                         _pick_group(name, rule_runs, predictions, metric, alpha)))
        if has_lr_grid(group):
            for protocol in ("pooled", "tuned"):
                rows.append(ProtocolPick(protocol, protocol,
                                         _pick_by_protocol(name, group, data, predictions, metric, alpha, protocol)))
        out.append(ProtocolComparison(name, rows))
    return out


def comparison_json(comparisons: list[ProtocolComparison]) -> dict[str, Any]:
    def row(p: ProtocolPick) -> dict[str, Any]:
        chosen = p.pick.chosen
        return {"protocol": p.kind, "name": p.name, "pick": chosen.label,
                "effective_batch_size": chosen.effective_batch_size, "lr": _lr_of(chosen),
                "metric": p.pick.metric, "metric_mean": _num(chosen.metric_mean), "metric_std": _num(chosen.metric_std),
                "seeds": len(chosen.runs), "test_accuracy": p.pick.test_accuracy,
                "test_accuracy_ci95": list(p.pick.test_ci), "justification": p.pick.justification}

    return {"comparisons": [{"group": c.group, "protocols": [row(p) for p in c.protocols],
                             "effective_batch_sizes_picked": c.picked, "answer_changes": c.answer_changes,
                             "text": c.text} for c in comparisons]}
