"""`accumbench pick-best`: the best effective batch size per model, chosen on validation only, with
the uncertainty of the choice stated.

    protocol   = tuned (the default when some EBS has 2+ lrs): each EBS at its own best lr first
                 (tuning.py), then the stages below over those; pooled: every cell competes as it is
    candidates = the cells of a model (configurations up to their seed; runs.cell_key)
    best       = the highest mean validation accuracy over seeds (or lowest val loss, --metric)
    as good    = the candidates shown within --margin of the best on validation: the upper confidence
                 bound (1 - alpha) of their deficit lies below the margin (deficit.py: the seeds' spread
                 and a bootstrap over the validation examples, paired across runs, from the stored
                 predictions at each run's best epoch). Not merely "not significantly worse": with 2-3
                 seeds a test rejects almost nothing, and weak evidence would read as equality
    pick       = among those, the cheapest by what it trained (cost.py: samples, then optimizer steps;
                 measured seconds only where far beyond their noise), the same on every machine

Why nested: pooled, every lr of every EBS competes, so how densely and how well each EBS's lrs were tried
leaks into the EBS answer. `choice.compare_protocols` shows the pick under each protocol the runs support.

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

from accumbench import deficit, stats
from accumbench.analysis.answer import justification, reconcile, too_small_to_show
from accumbench.analysis.cost import Cheapest, cheapest
from accumbench.analysis.evidence import CriticalBatch, NoiseAdvice, critical_batch_sizes, noise_advice
from accumbench.analysis.runs import RunData, cell_label, varying
from accumbench.analysis.tuning import BestLr, ScalingFit, best_lrs, fit_scaling, has_lr_grid, tuned_runs
from accumbench.deficit import DEFAULT_EVIDENCE, DeficitBound, Margin, RunPredictions
from accumbench.errors import UserError
from accumbench.files import check_output_file
from accumbench.formatting import plain_number, unknown_choice
from accumbench.metrics import named
from accumbench.race_rule import RaceRule, check_rule
from accumbench.vocabulary import (
    BOOTSTRAPPED,
    METRICS,
    POOLED,
    RACE_AFTER,
    RACE_ALPHA,
    RACE_GUARD,
    TUNED,
    higher_is_better,
    test_metric,
)

GROUPINGS = ("model", "none")  # --by: one pick per model, or one over all runs


@dataclass(frozen=True)
class PickOptions:
    """How pick-best chooses, checked as a whole before any run is read (bad input: one UserError)."""

    metric: str = "val_accuracy"
    by: str = "model"
    alpha: float = 0.05  # the bound's one-sided error: 0.05 is a 95% upper bound on each deficit
    margin: float | None = None  # None: the metric's default (deficit.Margin)
    target: float | None = None  # the validation accuracy steps-to-target counts to
    protocol: str | None = None  # None: per group, default_protocol
    compare_protocols: bool = False
    replay_race: bool = False  # race_replay.py: racing replayed over the grid instead of a pick
    race_alpha: float = RACE_ALPHA
    race_after: int = RACE_AFTER
    race_margin: float | None = None  # None: the metric's own margin
    race_guard: str = RACE_GUARD
    save_config: Path | None = None  # write the picked cell as a train YAML (saved_config.py)

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if self.by not in GROUPINGS:
            raise UserError(unknown_choice("--by", self.by, GROUPINGS))
        if not 0 < self.alpha < 0.5:
            raise UserError(f"--alpha must be between 0 and 0.5 (0.05 gives 95% bounds), got "
                            f"{plain_number(self.alpha)}; e.g. --alpha 0.05")
        check_margin(self.margin, self.metric)
        if self.target is not None and not 0 < self.target <= 1:
            raise UserError(f"--target is a validation accuracy in (0, 1], got {plain_number(self.target)}; e.g. --target 0.85")
        if self.protocol is not None and self.protocol not in PICK_PROTOCOLS:
            raise UserError(unknown_choice("--protocol", self.protocol, PICK_PROTOCOLS))
        if self.protocol is not None and self.compare_protocols:
            raise UserError("--compare-protocols shows every protocol; drop --protocol")
        if self.replay_race and (self.compare_protocols or self.protocol is not None):
            raise UserError("--replay-race replays racing under the tuned protocol; drop --compare-protocols and --protocol")
        self.race_rule  # noqa: B018 - checked here, before any run is read
        if self.save_config is not None:
            if self.compare_protocols or self.replay_race:
                raise UserError("--save-config writes the one pick; drop --compare-protocols and --replay-race")
            check_output_file(self.save_config, "--save-config", "best.yaml")

    @property
    def evidence(self) -> Margin:
        return Margin(self.margin, 1 - self.alpha)

    @property
    def race_rule(self) -> RaceRule:
        """--replay-race's rule, on the metric pick-best chooses on (racing's own, replayed)."""
        return check_rule(self.race_alpha, self.race_after, self.race_margin, self.race_guard,
                          self.metric if self.replay_race else "val_accuracy", flag="--replay-race")


def check_metric(metric: str) -> None:
    """--metric (pick-best, report): a metric that runs are chosen on, on validation."""
    if metric not in METRICS:
        raise UserError(unknown_choice("--metric", metric, METRICS, " (selection is on validation)"))


def check_margin(margin: float | None, metric: str) -> None:
    """--margin (pick-best, report): a deficit the user accepts, in the metric's units; bad input is one UserError."""
    if margin is None:
        return
    if not math.isfinite(margin) or margin < 0:
        raise UserError(f"--margin must be 0 or more, got {plain_number(margin)}; e.g. --margin 0.01 (one point)")
    if margin >= 1:
        what = (f"a share of the best's {named(metric).words}" if deficit.relative(metric)
                else f"in units of {METRICS.get(metric, metric)}, which is bounded by 1")
        raise UserError(f"--margin {plain_number(margin)} is 1 or more ({what}): every candidate would pass; "
                        "e.g. --margin 0.01 (one point)")


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
    deficit: DeficitBound | None = None  # how far behind the best on validation, with its confidence bounds
    mcnemar_test_p: float | None = None  # reported only: test data never enters the choice
    mcnemar_test_discordant: tuple[int, int] | None = None  # (best right & this wrong, best wrong & this right)
    as_good: bool = True  # the best itself, or shown within the margin of it

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs["seed"].tolist())


@dataclass
class Pick:
    group: str  # the model (or "all")
    metric: str
    evidence: Margin  # what "as good as the best" demanded: the margin and the bound's confidence
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
    protocol: str = POOLED
    best_lrs: list[BestLr] = field(default_factory=list)  # tuned: each EBS's best lr (stage 1)
    scaling: list[ScalingFit] = field(default_factory=list)  # tuned: lr* ∝ EBS^alpha per grid
    # One line per signal (noise scale, critical batch size) that points to another EBS than the pick: what
    # that means, and what validation said about that EBS. Empty where they agree.
    reconciled: list[str] = field(default_factory=list)
    cost: Cheapest | None = None  # how the pick won among the candidates validation cannot tell apart
    test_score: float | None = None  # F1 or MCC: the pick's mean on test, beside its accuracy
    pruned: list[dict[str, Any]] = field(default_factory=list)  # racing's decisions in this group (sweep --race)

    @property
    def margin(self) -> float:
        return self.evidence.of(self.metric)


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
    return TUNED if has_lr_grid(runs, pruned) else POOLED


def pick_best(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
              evidence: Margin = DEFAULT_EVIDENCE, by: str = "model", target: float | None = None,
              protocol: str | None = None) -> list[Pick]:
    """One Pick per model (by='model') or one over everything (by='none'), and per backend.
    `predictions` is {'validation': {run_id: ...}, 'test': {run_id: ...}} as Store.predictions returns.
    `protocol` None chooses per group (default_protocol)."""
    picks = []
    for name, group in pick_groups(data.runs, by):
        pick = pick_by_protocol(name, group, data, predictions, metric, evidence,
                                protocol or default_protocol(group, data.pruned))
        tried = sorted({c.effective_batch_size for c in pick.candidates})
        pick.noise = noise_advice(group, tried)
        if pick.protocol == TUNED:
            # Steps-to-target assumes each batch size at its best lr (McCandlish et al.), as tuned picks them.
            pick.critical = critical_batch_sizes(tuned_runs(group, pick.best_lrs), data, target, slices=("variant",))
        else:
            pick.critical = critical_batch_sizes(group, data, target)
        pick.reconciled = reconcile(pick)
        cut = data.pruned[data.pruned["lr_free"].isin(group["lr_free"])]
        pick.pruned = [dict(run_id=int(r.run_id), effective_batch_size=int(r.effective_batch_size), lr=float(r.lr),
                            seed=int(r.seed), epoch=int(r.pruned_epoch), skipped=bool(r.skipped),
                            lost_to=None if pd.isna(r.pruned_by) else int(r.pruned_by),
                            deficit=None if pd.isna(r.pruned_deficit) else float(r.pruned_deficit),
                            bound=None if pd.isna(r.pruned_bound) else float(r.pruned_bound),
                            test=r.pruned_test, why=r.error) for r in cut.itertuples()]
        if data.without_metric:
            pick.warnings.append(f"{data.without_metric} run(s) left out: recorded before accumbench recorded "
                                 f"{METRICS[metric]}; --metric val_accuracy compares them all")
        picks.append(pick)
    return picks


def pick_pooled(name: str, group: pd.DataFrame, data: RunData, predictions: dict[str, dict[int, dict[str, Any]]],
                metric: str, evidence: Margin) -> Pick:
    """Every (EBS, lr) cell competes as it is."""
    return pick_among(name, group, predictions, metric, evidence)


def pick_tuned(name: str, group: pd.DataFrame, data: RunData, predictions: dict[str, dict[int, dict[str, Any]]],
               metric: str, evidence: Margin) -> Pick:
    """Each EBS at its best lr on validation first (tuning.py), then EBS against EBS."""
    best = best_lrs(group, metric, data.diverged, data.pruned)
    pick = pick_among(name, tuned_runs(group, best), predictions, metric, evidence, tuned=True)
    pick.protocol, pick.best_lrs, pick.scaling = TUNED, best, fit_scaling(best)
    pick.warnings += [b.warning for b in best if b.warning]
    return pick


PICK_PROTOCOLS = {TUNED: pick_tuned, POOLED: pick_pooled}  # --protocol's names, each to its function


def pick_by_protocol(name: str, group: pd.DataFrame, data: RunData, predictions: dict[str, dict[int, dict[str, Any]]],
                     metric: str, evidence: Margin, protocol: str) -> Pick:
    return PICK_PROTOCOLS[protocol](name, group, data, predictions, metric, evidence)


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


def _scorer(group: pd.DataFrame, metric: str, evidence: Margin) -> deficit.Scorer | None:
    """The example bootstrap of `metric` for this group's runs; None for one not computed from predictions (a loss:
    no per-example losses kept)."""
    scored = named(metric)
    if scored.score is None:
        return None
    first = group.iloc[0]
    positive = first.get("positive_class")  # NaN or None for runs of 3+ labels, or recorded before it was
    return deficit.Scorer(scored.key, int(first["num_labels"] or 2),
                          1 if pd.isna(positive) else int(positive), evidence.confidence)


def deficit_to_best(best: Candidate, other: Candidate, preds: dict[int, dict[str, Any]], metric: str,
                    evidence: Margin, scorer: deficit.Scorer | None) -> DeficitBound:
    """The one evidence behind every "as good as the best": `other`'s deficit to `best` on validation, bounded
    from seeds and examples together where every run of both kept its predictions on the same split (deficit.py;
    paired by seed where both ran the same seeds: the same initialisation and data order), else from the seed
    means alone (older stores; a loss, relative to the best's)."""
    mine, theirs = best.runs.sort_values("seed"), other.runs.sort_values("seed")
    ids = [int(r) for r in (*mine["run_id"], *theirs["run_id"])]
    found = [preds.get(r) for r in ids]
    if scorer is not None and all(f is not None for f in found) and len({f["split_hash"] for f in found}) == 1:
        runs = [RunPredictions(f["labels"], f["predicted"], key=r) for f, r in zip(found, ids)]
        paired = len(mine) > 1 and mine["seed"].tolist() == theirs["seed"].tolist()
        return scorer.bound(runs[:len(mine)], runs[len(mine):], paired=paired)
    return deficit.from_seed_means(mine[metric].astype(float).tolist(), theirs[metric].astype(float).tolist(),
                                   higher_is_better(metric), evidence.confidence, relative=deficit.relative(metric))


def pick_among(name: str, group: pd.DataFrame, predictions: dict[str, dict[int, dict[str, Any]]],
               metric: str, evidence: Margin, tuned: bool = False) -> Pick:
    candidates = _candidates(group, metric)
    best = candidates[0]
    margin = evidence.of(metric)
    scorer = _scorer(group, metric, evidence)
    for other in candidates[1:]:
        other.deficit = deficit_to_best(best, other, predictions.get("validation", {}), metric, evidence, scorer)
        # A diverged candidate (NaN) or one nothing bounds (one seed, no predictions) is not shown as good.
        other.as_good = not math.isnan(other.metric_mean) and other.deficit.within(margin)
        test = _paired_discordance(best, other, predictions.get("test", {}))
        if test is not None:
            other.mcnemar_test_discordant = test
            other.mcnemar_test_p = stats.mcnemar_exact(*test)

    contenders = [best] + [c for c in candidates[1:] if c.as_good]
    cost = cheapest(contenders)
    chosen = cost.chosen

    test_accuracies = chosen.runs["test_accuracy"].astype(float).tolist()
    n_test = int(chosen.runs["num_test_samples"].iloc[0])
    mean, low, high = stats.mean_accuracy_ci(test_accuracies, n_test)
    text = justification(candidates, best, chosen, contenders, metric, evidence, cost.reason)
    if tuned:
        text = f"each EBS at its best lr on validation, then EBS against EBS: {text}"
    on_test = chosen.runs[test_metric(metric)].astype(float).mean() if metric in BOOTSTRAPPED else None
    warnings = [line for line in (_single_seeds(candidates), too_small_to_show(candidates, best, metric, evidence))
                if line]
    return Pick(name, metric, evidence, candidates, best, chosen, mean, (low, high), n_test, text, warnings,
                cost=cost, test_score=on_test)


def _single_seeds(candidates: list[Candidate]) -> str | None:
    if len(candidates) < 2 or any(len(c.runs) > 1 for c in candidates):
        return None
    return ("one seed per cell: each bound rests on the validation examples alone, and seed-to-seed variation was "
            "not measured; run more seeds (--seeds) for a bound that sees it")


def screened_candidates(runs: pd.DataFrame, predictions: dict[str, dict[int, dict[str, Any]]],
                        metric: str = "val_accuracy", evidence: Margin = DEFAULT_EVIDENCE) -> list[Candidate]:
    """The cells of `runs` as candidates, best first, each bounded against the best as pick-best bounds them
    (Candidate.deficit, .as_good): how the race replay tells a wrong prune."""
    return pick_among("", runs, {"validation": predictions}, metric, evidence).candidates
