"""`accumbench pick-best`: the best effective batch size per model, chosen on validation only, with
the uncertainty of the choice stated.

    candidates = the cells of a model (configurations up to their seed; report.cell_key)
    best       = the highest mean validation accuracy over seeds (or lowest val loss, --metric)
    screen     = which candidates are not significantly worse than the best, on validation:
                 Welch's t-test across seeds when both have 2+ seeds, else an exact McNemar test on
                 the paired validation predictions (matched by seed)
    pick       = among those, the cheapest by training time; a tie (within 2%) goes to the larger EBS

Test data never enters the choice: the pick's test accuracy (with a 95% interval) and an exact
McNemar test on the paired *test* predictions against every other candidate are reported after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from accumbench import stats
from accumbench.report import RunData, cell_label, varying

METRICS = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}
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


def pick_best(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
              alpha: float = 0.05, by: str = "model") -> list[Pick]:
    """One Pick per model (by='model') or one over everything (by='none').
    `predictions` is {'validation': {run_id: ...}, 'test': {run_id: ...}} as Store.predictions returns.

    With both backends recorded, each backend gets its own pick: they are two implementations of one
    training, so letting them compete would pick a backend (by speed) rather than a batch size, and
    pooling their runs would count every seed twice. `accumbench report` compares the backends."""
    runs = data.runs
    keys = (["model"] if by == "model" else []) + (["backend"] if runs["backend"].nunique() > 1 else [])
    if not keys:
        return [_pick_group("all models", runs, predictions, metric, alpha)]
    return [_pick_group(", ".join(map(str, name if isinstance(name, tuple) else (name,))), group, predictions,
                        metric, alpha) for name, group in runs.groupby(keys, sort=True)]


def _candidates(group: pd.DataFrame, metric: str) -> list[Candidate]:
    vary = varying(group, ("model", "lr_scaling", "variant"))
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
                metric: str, alpha: float) -> Pick:
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
        "group": p.group, "metric": p.metric, "alpha": p.alpha, "pick": p.chosen.label,
        "effective_batch_size": p.chosen.effective_batch_size, "best_on_validation": p.best.label,
        "test_accuracy": p.test_accuracy, "test_accuracy_ci95": list(p.test_ci), "test_examples": p.test_examples,
        "justification": p.justification, "warnings": p.warnings,
        "candidates": [candidate(c) for c in p.candidates],
    } for p in picks]}


def _num(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN: an undefined statistic is null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
