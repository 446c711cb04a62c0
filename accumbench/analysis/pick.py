"""`accumbench pick-best`: the best effective batch size per model, chosen on validation only, with
the uncertainty of the choice stated.

    protocol   = tuned (the default when some EBS has 2+ lrs): each EBS at its own best lr first
                 (tuning.py), then the stages below over those; pooled: every cell competes as it is
    candidates = the cells of a model (configurations up to their seed; runs.cell_key)
    best       = the highest mean validation accuracy over seeds (or lowest val loss, --metric)
    screen     = which candidates are not significantly worse than the best, on validation:
                 Welch's t-test across seeds when both have 2+ seeds, else a paired test on the
                 validation predictions of the seeds both ran: exact McNemar for accuracy (and loss),
                 a paired bootstrap over the examples, stratified by seed, for F1 and MCC
    pick       = among those, the cheapest by what it trained (cost.py: samples, then optimizer steps;
                 measured seconds only where far beyond their noise), the same on every machine

Why nested: pooled, a noisy cell at a poor lr can pass the screen and win on time, so the lr choice
leaks into the EBS answer. `compare_protocols` shows the pick under each protocol the runs support.

Test data never enters the choice: the pick's test accuracy (with a 95% interval) and an exact
McNemar test on the paired *test* predictions against every other candidate are reported after it.
The evidence beside the pick (noise scale, critical batch size) is in evidence.py; the JSON in shapes.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from accumbench import stats, task_metrics
from accumbench.analysis.answer import reconcile
from accumbench.analysis.cost import Cheapest, cheapest
from accumbench.analysis.evidence import CriticalBatch, NoiseAdvice, critical_batch_sizes, noise_advice
from accumbench.analysis.runs import RunData, cell_label, varying
from accumbench.analysis.tuning import BestLr, ScalingFit, best_lrs, fit_scaling, has_lr_grid, tuned_runs
from accumbench.errors import UserError
from accumbench.formatting import plain_number, spread
from accumbench.vocabulary import (
    BOOTSTRAPPED,
    METRICS,
    PROTOCOLS,
    RACE_AFTER,
    RACE_ALPHA,
    higher_is_better,
    test_metric,
)

GROUPINGS = ("model", "none")  # --by: one pick per model, or one over all runs


@dataclass(frozen=True)
class PickOptions:
    """How pick-best chooses, checked as a whole before any run is read (bad input: one UserError)."""

    metric: str = "val_accuracy"
    by: str = "model"
    alpha: float = 0.05
    target: float | None = None  # the validation accuracy steps-to-target counts to
    protocol: str | None = None  # None: per group, default_protocol
    compare_protocols: bool = False
    replay_race: bool = False  # race_replay.py: racing replayed over the grid instead of a pick
    race_alpha: float = RACE_ALPHA
    race_after: int = RACE_AFTER
    save_config: Path | None = None  # write the picked cell as a train YAML (saved_config.py)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"unknown --metric '{self.metric}'; choose one of: {', '.join(METRICS)} "
                            "(selection is on validation)")
        if self.by not in GROUPINGS:
            raise UserError(f"unknown --by '{self.by}'; choose one of: {', '.join(GROUPINGS)}")
        if not 0 < self.alpha < 1:
            raise UserError(f"--alpha must be between 0 and 1, got {plain_number(self.alpha)}; e.g. --alpha 0.05")
        if self.target is not None and not 0 < self.target <= 1:
            raise UserError(f"--target is a validation accuracy in (0, 1], got {plain_number(self.target)}; e.g. --target 0.85")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise UserError(f"unknown --protocol '{self.protocol}'; choose one of: {', '.join(PROTOCOLS)}")
        if self.protocol is not None and self.compare_protocols:
            raise UserError("--compare-protocols shows every protocol; drop --protocol")
        if self.replay_race and (self.compare_protocols or self.protocol is not None):
            raise UserError("--replay-race replays racing under the tuned protocol; drop --compare-protocols and --protocol")
        if not 0 < self.race_alpha < 1:
            raise UserError(f"--race-alpha must be between 0 and 1, got {plain_number(self.race_alpha)}; the default "
                            f"is {RACE_ALPHA:g}")
        if self.race_after < 1:
            raise UserError(f"--race-after must be at least 1, got {self.race_after}: a run can stop after its first "
                            "epoch at the earliest")
        if self.save_config is not None:
            if self.compare_protocols or self.replay_race:
                raise UserError("--save-config writes the one pick; drop --compare-protocols and --replay-race")
            if not self.save_config.parent.is_dir():
                raise UserError(f"--save-config {self.save_config}: directory {self.save_config.parent} does not "
                                "exist; create it or save elsewhere, e.g. --save-config best.yaml")
            if self.save_config.is_dir():
                raise UserError(f"--save-config {self.save_config} is a directory; give a file name, e.g. "
                                f"{self.save_config / 'best.yaml'}")


@dataclass
class Candidate:
    cell: str
    label: str
    effective_batch_size: int
    runs: pd.DataFrame  # this candidate's runs, one per seed
    metric_mean: float
    metric_std: float  # NaN with one seed
    train_seconds: float  # mean total training time over seeds
    samples: float = 0.0  # samples trained, mean over seeds (cost.py)
    steps: float = 0.0  # optimizer steps, mean over seeds
    seconds_per_sample: list[list[float]] = field(default_factory=list)  # per run (seed), per epoch
    # Filled in against the best candidate (None for the best itself):
    screen_test: str | None = None  # "welch", "mcnemar-validation" or "bootstrap-validation"
    screen_p: float | None = None
    welch_p: float | None = None
    mcnemar_validation_p: float | None = None
    bootstrap_validation_p: float | None = None  # F1 and MCC: paired bootstrap against the best
    mcnemar_test_p: float | None = None
    mcnemar_test_discordant: tuple[int, int] | None = None  # (best right & this wrong, best wrong & this right)
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
    noise: NoiseAdvice | None = None  # what the measured gradient noise scale recommends
    critical: list[CriticalBatch] = field(default_factory=list)  # one per lr rule / variant with 2+ EBS
    protocol: str = "pooled"
    best_lrs: list[BestLr] = field(default_factory=list)  # tuned: each EBS's best lr (stage 1)
    scaling: list[ScalingFit] = field(default_factory=list)  # tuned: lr* ∝ EBS^alpha per grid
    # One line per signal (noise scale, critical batch size) that points to another EBS than the pick: what
    # that means, and what validation said about that EBS. Empty where they agree.
    reconciled: list[str] = field(default_factory=list)
    cost: Cheapest | None = None  # how the pick won among the candidates validation cannot tell apart
    test_score: float | None = None  # F1 or MCC: the pick's mean on test, beside its accuracy
    pruned: list[dict[str, Any]] = field(default_factory=list)  # racing's decisions in this group (sweep --race)


def pick_groups(runs: pd.DataFrame, by: str) -> list[tuple[str, pd.DataFrame]]:
    """One group per model (by='model') or one over everything (by='none'), and per backend when both
    ran: they are two implementations of one training, so letting them compete would pick a backend
    (by speed) rather than a batch size, and pooling their runs would count every seed twice.
    `accumbench report` compares the backends."""
    keys = (["model"] if by == "model" else []) + (["backend"] if runs["backend"].nunique() > 1 else [])
    if not keys:
        return [("all models", runs)]
    return [(", ".join(map(str, name if isinstance(name, tuple) else (name,))), group)
            for name, group in runs.groupby(keys, sort=True)]


def default_protocol(runs: pd.DataFrame, pruned: pd.DataFrame | None = None) -> str:
    """tuned when some EBS has more than one lr (there is an lr to tune, racing's pruned lrs included), else
    pooled (the same then)."""
    return "tuned" if has_lr_grid(runs, pruned) else "pooled"


def pick_best(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
              alpha: float = 0.05, by: str = "model", target: float | None = None,
              protocol: str | None = None) -> list[Pick]:
    """One Pick per model (by='model') or one over everything (by='none'), and per backend.
    `predictions` is {'validation': {run_id: ...}, 'test': {run_id: ...}} as Store.predictions returns.
    `protocol` None chooses per group (default_protocol)."""
    picks = []
    for name, group in pick_groups(data.runs, by):
        pick = pick_by_protocol(name, group, data, predictions, metric, alpha, protocol or default_protocol(group, data.pruned))
        tried = sorted({c.effective_batch_size for c in pick.candidates})
        pick.noise = noise_advice(group, tried)
        if pick.protocol == "tuned":
            # Steps-to-target assumes each batch size at its best lr (McCandlish et al.), as tuned picks them.
            pick.critical = critical_batch_sizes(tuned_runs(group, pick.best_lrs), data, target, slices=("variant",))
        else:
            pick.critical = critical_batch_sizes(group, data, target)
        pick.reconciled = reconcile(pick)
        cut = data.pruned[data.pruned["lr_free"].isin(group["lr_free"])]
        pick.pruned = [dict(run_id=int(r.run_id), effective_batch_size=int(r.effective_batch_size), lr=float(r.lr),
                            seed=int(r.seed), epoch=int(r.pruned_epoch), lost_to=int(r.pruned_by), p=float(r.pruned_p),
                            test=r.pruned_test) for r in cut.itertuples()]
        if data.without_metric:
            pick.warnings.append(f"{data.without_metric} run(s) left out: recorded before accumbench recorded "
                                 f"{METRICS[metric]}; --metric val_accuracy compares them all")
        picks.append(pick)
    return picks


def pick_by_protocol(name: str, group: pd.DataFrame, data: RunData, predictions: dict[str, dict[int, dict[str, Any]]],
                      metric: str, alpha: float, protocol: str) -> Pick:
    if protocol == "pooled":
        return pick_among(name, group, predictions, metric, alpha)
    best = best_lrs(group, metric, data.diverged, data.pruned)
    pick = pick_among(name, tuned_runs(group, best), predictions, metric, alpha, tuned=True)
    pick.protocol, pick.best_lrs, pick.scaling = "tuned", best, fit_scaling(best)
    pick.warnings += [b.warning for b in best if b.warning]
    return pick


def _candidates(group: pd.DataFrame, metric: str) -> list[Candidate]:
    vary = varying(group, ("model", "lr_scaling", "optim_rules", "base_lr", "variant"))
    out = []
    for cell, runs in group.groupby("cell", sort=False):
        first = runs.iloc[0]
        values = runs[metric].astype(float)
        out.append(Candidate(cell=cell, label=cell_label(first, vary), effective_batch_size=int(first["effective_batch_size"]),
                             runs=runs, metric_mean=values.mean(), metric_std=values.std(),
                             train_seconds=runs["train_seconds"].mean(), samples=runs["samples_seen"].mean(),
                             steps=runs["optimizer_steps"].mean(),
                             seconds_per_sample=[list(values) for values in runs["seconds_per_sample"]]))
    higher = higher_is_better(metric)
    # NaN (a diverged run's loss) sorts last whichever way the metric goes.
    out.sort(key=lambda c: (math.isnan(c.metric_mean), -c.metric_mean if higher else c.metric_mean))
    return out


def _paired_predictions(best: Candidate, other: Candidate, preds: dict[int, dict[str, Any]]
                        ) -> list[tuple[list[int], list[int], list[int]]]:
    """(labels, best's predictions, other's) for each seed both ran on the same examples (equal split
    fingerprints); empty when none can be paired (no predictions recorded, or different splits)."""
    others = {row.seed: row.run_id for row in other.runs.itertuples()}
    pairs = ((preds.get(row.run_id), preds.get(others.get(row.seed))) for row in best.runs.itertuples())
    return [(mine["labels"], mine["predicted"], theirs["predicted"]) for mine, theirs in pairs
            if mine is not None and theirs is not None and mine["split_hash"] == theirs["split_hash"]]


def _paired_discordance(best: Candidate, other: Candidate, preds: dict[int, dict[str, Any]]) -> tuple[int, int] | None:
    """(b, c) summed over the seeds both ran (McNemar's counts); None when no seed can be paired."""
    counts = [stats.discordant_pairs(*paired) for paired in _paired_predictions(best, other, preds)]
    return (sum(b for b, _ in counts), sum(c for _, c in counts)) if counts else None


def _paired_bootstrap(best: Candidate, other: Candidate, preds: dict[int, dict[str, Any]], metric: str
                      ) -> task_metrics.BootstrapResult | None:
    """The paired bootstrap of `metric` (f1 or mcc) between the best and `other` over the validation
    examples, one stratum per seed both ran; None when no seed can be paired."""
    strata = _paired_predictions(best, other, preds)
    if not strata:
        return None
    first = best.runs.iloc[0]
    positive = first.get("positive_class")  # NaN or None for runs of 3+ labels, or recorded before it was
    return task_metrics.paired_bootstrap(strata, metric, int(first["num_labels"]),
                                         positive=1 if pd.isna(positive) else int(positive))


def pick_among(name: str, group: pd.DataFrame, predictions: dict[str, dict[int, dict[str, Any]]],
                metric: str, alpha: float, tuned: bool = False) -> Pick:
    candidates = _candidates(group, metric)
    best = candidates[0]
    warnings = []
    if all(len(c.runs) < 2 for c in candidates):
        tests = ("paired bootstraps of single runs on validation (McNemar on test, reported)" if metric in BOOTSTRAPPED
                 else "exact McNemar tests of single runs (validation to choose, test to report)")
        warnings.append(f"one seed per cell: the comparison rests on {tests}; run more seeds (--seeds) "
                        "for a test across seeds")
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
        if metric in BOOTSTRAPPED and (boot := _paired_bootstrap(best, other, predictions.get("validation", {}),
                                                                 BOOTSTRAPPED[metric])) is not None:
            other.bootstrap_validation_p = boot.p_value
        if other.welch_p is not None and not math.isnan(other.welch_p):
            other.screen_test, other.screen_p = "welch", other.welch_p
        elif metric in BOOTSTRAPPED:  # McNemar tests accuracy, which is not what F1 or MCC ranks on
            other.screen_test = None if other.bootstrap_validation_p is None else "bootstrap-validation"
            other.screen_p = other.bootstrap_validation_p
        elif other.mcnemar_validation_p is not None:
            other.screen_test, other.screen_p = "mcnemar-validation", other.mcnemar_validation_p
        # Untestable (no paired predictions, a single seed) or diverged: no evidence it is as good.
        other.not_worse = (other.screen_p is not None and other.screen_p >= alpha
                           and not math.isnan(other.metric_mean))
        if other.screen_p is None:
            warnings.append(f"{other.label} could not be tested against {best.label} (no paired predictions)")

    contenders = [best] + [c for c in candidates[1:] if c.not_worse]
    cost = cheapest(contenders)
    chosen = cost.chosen

    test_accuracies = chosen.runs["test_accuracy"].astype(float).tolist()
    n_test = int(chosen.runs["num_test_samples"].iloc[0])
    mean, low, high = stats.mean_accuracy_ci(test_accuracies, n_test)
    justification = _justify(candidates, best, chosen, contenders, metric, alpha, cost.reason)
    if tuned:
        justification = f"each EBS at its best lr on validation, then EBS against EBS: {justification}"
    on_test = chosen.runs[test_metric(metric)].astype(float).mean() if metric in BOOTSTRAPPED else None
    return Pick(name, metric, alpha, candidates, best, chosen, mean, (low, high), n_test, justification, warnings,
                cost=cost, test_score=on_test)


def screened_candidates(runs: pd.DataFrame, predictions: dict[str, dict[int, dict[str, Any]]],
                        metric: str = "val_accuracy", alpha: float = 0.05) -> list[Candidate]:
    """The cells of `runs` as candidates, best first, each screened against the best as pick-best screens
    them (Candidate.not_worse): how the race replay tells a wrong prune."""
    return pick_among("", runs, {"validation": predictions}, metric, alpha).candidates


def _fmt(candidate: Candidate, metric: str) -> str:
    seeds = len(candidate.runs)
    return f"{candidate.metric_mean:.4f}{spread(candidate.metric_std, 4, '±')} ({seeds} seed{'s' if seeds != 1 else ''})"


def _names(candidates: list[Candidate]) -> str:
    labels = [c.label.removeprefix("EBS ") for c in candidates]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _ps(candidates: list[Candidate]) -> str:
    return ", ".join(f"{c.screen_p:.2g}" if c.screen_p is not None else "untested" for c in candidates)


def _justify(candidates: list[Candidate], best: Candidate, chosen: Candidate, contenders: list[Candidate],
             metric: str, alpha: float, cost: str) -> str:
    """The pick in one sentence of evidence, e.g. 'EBS 256: validation accuracy 0.9012±0.0021 (3 seeds);
    64 and 1024 are not significantly different (p=0.41, 0.63); 256 is the cheapest of the three ...'."""
    words = METRICS[metric]
    others = [c for c in candidates if c is not chosen]
    same = [c for c in others if c.not_worse and c is not best]
    rest = [c for c in others if not c.not_worse and c is not best]
    diverged = [c for c in rest if math.isnan(c.metric_mean)]
    untested = [c for c in rest if c.screen_p is None and c not in diverged]
    worse = [c for c in rest if c not in diverged and c not in untested]
    text = f"{chosen.label}: {words} {_fmt(chosen, metric)}"
    if chosen is not best:
        text += (f"; the best, {best.label} at {_fmt(best, metric)}, is not significantly better "
                 f"(p={chosen.screen_p:.2g}, {_test_name(chosen)})")
    if same:
        verb = "is" if len(same) == 1 else "are"
        text += f"; {_names(same)} {verb} not significantly different from the best (p={_ps(same)})"
    if worse:
        verb = "is" if len(worse) == 1 else "are"
        text += f"; {_names(worse)} {verb} significantly worse (p={_ps(worse)}, alpha {alpha:g})"
    if untested:
        verb = "has" if len(untested) == 1 else "have"
        text += f"; {_names(untested)} {verb} no paired predictions to test, so cannot count as as good"
    if diverged:
        text += f"; {_names(diverged)} diverged"
    if len(contenders) == 1:
        text += f"; no other candidate is as good, so {chosen.label.removeprefix('EBS ')} is the pick"
    else:
        text += f"; {cost}"
    return text


def _test_name(candidate: Candidate) -> str:
    return {"welch": "Welch's t-test across seeds", "mcnemar-validation": "exact McNemar on validation",
            "bootstrap-validation": "paired bootstrap on validation"}.get(
        candidate.screen_test or "", "untested")
