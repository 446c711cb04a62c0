"""`pick-best --replay-race`: racing replayed over a complete lr grid from its stored epochs, to measure its
risk instead of hoping.

    the grid's runs in racing's claim order (racing.claim_order), one worker, as `sweep --race` would run them
      -> after each epoch e from --race-after on (but the last): racing.judge against what the runs before it
         had recorded by then, each cut where the replay pruned it
      -> per pick group: the training time saved (the epochs a pruned run would not have trained, at the
         seconds they took), the tuned pick with and without racing, the best lr per EBS, and the wrong prunes

A wrong prune is an arm (an EBS at one lr) that racing pruned, but that at the end of its full training is
shown within pick-best's margin of its EBS's best lr by pick-best's own evidence (pick.deficit_to_best: the
deficit's upper bound, from seeds and validation examples together, below --margin): an arm pick-best would
have counted as good. The cautious count beside it, `not_ruled_out`, also counts every pruned arm that the
same evidence cannot show worse than the best by more than the margin (the deficit's lower bound is not above
it): racing stopped it on evidence that, fully trained, does not rule it out.
Diverged runs are replayed as they ran: they end themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from accumbench.analysis.pick import pick_best, screened_candidates
from accumbench.analysis.racing import EpochOutcome, PruneDecision, claim_order, judge, race_group
from accumbench.analysis.runs import PRUNED_COLUMNS, RunData, load_predictions
from accumbench.analysis.tuning import has_lr_grid
from accumbench.deficit import DEFAULT_EVIDENCE, DeficitBound, Margin
from accumbench.errors import UserError
from accumbench.formatting import format_lr, format_seconds, rate_key
from accumbench.vocabulary import TUNED


@dataclass
class ReplayedPrune:
    decision: PruneDecision
    effective_batch_size: int
    seed: int
    saved_seconds: float
    wrong: bool  # its arm, fully trained, is shown within the margin of its EBS's best lr
    not_ruled_out: bool  # ... or is at least not shown worse than it by more than the margin
    final: DeficitBound | None  # its arm's deficit to the best, fully trained (None: it is the best)


@dataclass
class RaceReplay:
    group: str
    alpha: float
    after: int
    metric: str
    evidence: Margin
    seconds: float  # the whole grid's training time as recorded (every epoch's epoch_seconds)
    prunes: list[ReplayedPrune]
    arms: int  # (EBS, lr) arms in the grid
    pick_full: int  # the EBS the tuned pick chooses on the whole grid
    pick_raced: int  # ... and on what racing would have left
    best_lrs_full: dict[int, float] = field(default_factory=dict)  # EBS -> its best lr
    best_lrs_raced: dict[int, float] = field(default_factory=dict)

    @property
    def saved_seconds(self) -> float:
        return sum(p.saved_seconds for p in self.prunes)

    @property
    def saved_share(self) -> float:
        return self.saved_seconds / self.seconds if self.seconds else 0.0

    @property
    def arms_pruned(self) -> list[tuple[int, float]]:
        return sorted({(p.effective_batch_size, p.decision.lr) for p in self.prunes})

    @property
    def wrong_arms(self) -> list[tuple[int, float]]:
        return sorted({(p.effective_batch_size, p.decision.lr) for p in self.prunes if p.wrong})

    @property
    def arms_not_ruled_out(self) -> list[tuple[int, float]]:
        return sorted({(p.effective_batch_size, p.decision.lr) for p in self.prunes if p.not_ruled_out})

    @property
    def same_answer(self) -> bool:
        return self.pick_full == self.pick_raced and self.best_lrs_full == self.best_lrs_raced

    @property
    def text(self) -> str:
        arms = lambda found: ", ".join(f"EBS {e} lr {format_lr(lr)}" for e, lr in found) or "none"  # noqa: E731
        best = "same best lr per EBS" if self.best_lrs_full == self.best_lrs_raced else (
            "best lr per EBS " + ", ".join(f"{e}: {format_lr(self.best_lrs_full[e])} -> "
                                          f"{format_lr(self.best_lrs_raced.get(e, float('nan')))}"
                                          for e in self.best_lrs_full if self.best_lrs_full[e] != self.best_lrs_raced.get(e)))
        pick = (f"the same pick (EBS {self.pick_full})" if self.pick_full == self.pick_raced
                else f"a different pick: EBS {self.pick_raced} instead of EBS {self.pick_full}")
        return (f"{self.group}: racing at alpha {self.alpha:g} from epoch {self.after} on would have pruned "
                f"{len(self.prunes)} runs in {len(self.arms_pruned)} of {self.arms} (EBS, lr) arms ({arms(self.arms_pruned)}), "
                f"saving {format_seconds(self.saved_seconds)} of {format_seconds(self.seconds)} of training "
                f"({self.saved_share:.0%}); {pick}, {best}; wrong prunes (shown within "
                f"{self.evidence.words(self.metric)} of their EBS's best): {arms(self.wrong_arms)}; not ruled out "
                f"(not shown worse by more): {arms(self.arms_not_ruled_out)}")

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "race_alpha": self.alpha, "race_after": self.after, "metric": self.metric,
                "seconds": self.seconds, "saved_seconds": self.saved_seconds, "saved_share": self.saved_share,
                "arms": self.arms, "arms_pruned": [{"effective_batch_size": e, "lr": lr} for e, lr in self.arms_pruned],
                "pick_full": self.pick_full, "pick_raced": self.pick_raced,
                "best_lr_full": {str(e): lr for e, lr in self.best_lrs_full.items()},
                "best_lr_raced": {str(e): lr for e, lr in self.best_lrs_raced.items()},
                "same_answer": self.same_answer,
                "wrong_prunes": [{"effective_batch_size": e, "lr": lr} for e, lr in self.wrong_arms],
                "margin": self.evidence.of(self.metric), "confidence": self.evidence.confidence,
                "not_ruled_out": [{"effective_batch_size": e, "lr": lr} for e, lr in self.arms_not_ruled_out],
                "prunes": [{"run_id": p.decision.run_id, "effective_batch_size": p.effective_batch_size,
                            "lr": p.decision.lr, "seed": p.seed, "epoch": p.decision.epoch,
                            "lost_to": p.decision.lost_to, "p": p.decision.p_value, "test": p.decision.test,
                            "saved_seconds": p.saved_seconds, "wrong": p.wrong, "not_ruled_out": p.not_ruled_out,
                            "final_deficit": None if p.final is None else p.final.deficit,
                            "final_bounds": None if p.final is None else [p.final.lower, p.final.upper]}
                           for p in self.prunes],
                "text": self.text}


def replay_race(store: Any, data: RunData, alpha: float, after: int, evidence: Margin = DEFAULT_EVIDENCE) -> list[RaceReplay]:
    """Racing replayed over the finished runs of `data` (a grid no one raced), one RaceReplay per pick group."""
    if not data.pruned.empty:
        raise UserError(f"--replay-race replays a grid that was not raced, and {len(data.pruned)} of these runs were "
                        "PRUNED; pick a sweep trained without --race (--sweep NAME)")
    if not has_lr_grid(data.runs):
        raise UserError("--replay-race needs an lr grid (some EBS trained at 2+ lrs); sweep with --lrs first")
    runs, epochs, metric = data.runs, data.epochs, data.metric
    last = epochs.groupby("run_id")["epoch"].max()
    values = epochs.set_index(["run_id", "epoch"])[metric]
    ids = [int(r) for r in runs["run_id"]]
    predictions = {e: store.predictions(ids, "validation", epochs=dict.fromkeys(ids, e)) for e in range(1, int(last.max()) + 1)}
    by_run = runs.set_index("run_id")
    groups = {int(r): race_group(c) for r, c in zip(runs["run_id"], runs["config"])}
    rank = {c.config_hash: i for i, c in enumerate(claim_order(list({c.config_hash: c for c in runs["config"]}.values())))}
    order = sorted(ids, key=lambda r: (rank[by_run.at[r, "config"].config_hash], r))

    reached: dict[int, int] = {}
    decisions: list[PruneDecision] = []
    for run in order:
        reached[run] = int(last[run])
        for epoch in range(after, int(last[run])):
            outcomes = [_outcome(other, epoch, by_run, values, predictions) for other in reached
                        if groups[other] == groups[run] and reached[other] >= epoch]
            outcomes = [o for o in outcomes if o is not None]
            if not any(o.run_id == run for o in outcomes):
                continue
            positive = by_run.at[run, "positive_class"]
            decision = judge(outcomes, run, epoch, metric, alpha, int(by_run.at[run, "num_labels"] or 2),
                             1 if pd.isna(positive) else int(positive))
            if decision is not None:
                reached[run] = epoch
                decisions.append(decision)
                break

    at_best = load_predictions(store, data)  # read once: both picks and the wrong-prune screens use it
    full_picks = pick_best(data, at_best, metric=metric, evidence=evidence, protocol=TUNED)
    cut_ids = {d.run_id for d in decisions}
    raced = replace(data, runs=runs[~runs["run_id"].isin(cut_ids)].reset_index(drop=True),
                    pruned=_as_pruned(decisions, by_run, epochs))
    left = {split: {r: found for r, found in by_id.items() if r not in cut_ids} for split, by_id in at_best.items()}
    raced_picks = {p.group: p for p in pick_best(raced, left, metric=metric, evidence=evidence, protocol=TUNED)}
    out = []
    for full in full_picks:
        # The group's runs: every lr of every EBS it tuned (its candidates are among them).
        members = {int(r) for r in runs[runs["lr_free"].isin({b.key for b in full.best_lrs})]["run_id"]}
        prunes = []
        for decision in (d for d in decisions if d.run_id in members):
            run = by_run.loc[decision.run_id]
            spent = epochs[(epochs["run_id"] == decision.run_id) & (epochs["epoch"] > decision.epoch)]
            prunes.append(ReplayedPrune(decision, int(run["effective_batch_size"]), int(run["seed"]),
                                        float(spent["epoch_seconds"].sum()),
                                        *ends_as_good(runs, run, at_best["validation"], metric, evidence)))
        group_runs = runs[runs["run_id"].isin(members)]
        arms = group_runs.assign(rate=group_runs["lr"].map(rate_key))[["lr_free", "rate"]].drop_duplicates()
        seconds = float(epochs[epochs["run_id"].isin(members)]["epoch_seconds"].sum())
        raced_pick = raced_picks[full.group]
        out.append(RaceReplay(full.group, alpha, after, metric, evidence, seconds, prunes, len(arms),
                              full.chosen.effective_batch_size, raced_pick.chosen.effective_batch_size,
                              {b.effective_batch_size: b.best.lr for b in full.best_lrs},
                              {b.effective_batch_size: b.best.lr for b in raced_pick.best_lrs}))
    return out


def _outcome(run: int, epoch: int, by_run: pd.DataFrame, values: pd.Series,
             predictions: dict[int, dict[int, dict[str, Any]]]) -> EpochOutcome | None:
    found = predictions.get(epoch, {}).get(run)
    value = values.get((run, epoch))
    if found is None or value is None or pd.isna(value):
        return None
    return EpochOutcome(run, int(by_run.at[run, "seed"]), float(by_run.at[run, "lr"]), float(value),
                        found["labels"], found["predicted"], found["split_hash"])


def ends_as_good(runs: pd.DataFrame, run: pd.Series, predictions: dict[int, dict[str, Any]], metric: str,
                 evidence: Margin) -> tuple[bool, bool, DeficitBound | None]:
    """Whether the run's arm, fully trained, is shown within the margin of its EBS's best lr, whether it is at
    least not shown worse than that by more, and its deficit: by pick-best's own evidence among the cells of its
    group (the best is as good)."""
    group = runs[(runs["lr_free"] == run["lr_free"]) & (runs["lr_scaling"] == run["lr_scaling"])]
    candidates = screened_candidates(group, predictions, metric, evidence)
    mine = next(c for c in candidates if rate_key(float(c.runs["lr"].iloc[0])) == rate_key(float(run["lr"])))
    if mine is candidates[0]:
        return True, True, None
    if mine.metric_mean != mine.metric_mean:  # diverged: worse, whatever bounds it
        return False, False, mine.deficit
    return mine.as_good, not mine.deficit.worse_than(evidence.of(metric)), mine.deficit


def _as_pruned(decisions: list[PruneDecision], by_run: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The replay's prunes as RunData.pruned rows, for the pick on what racing would have left."""
    rows = []
    for d in decisions:
        run = by_run.loc[d.run_id]
        rows.append({**{c: run[c] for c in ("lr", "base_lr", "lr_scaling", "lr_free", "series", "effective_batch_size",
                                           "model", "backend", "seed")},
                     "run_id": d.run_id, "pruned_epoch": d.epoch, "pruned_by": d.lost_to, "pruned_p": d.p_value,
                     "pruned_test": d.test, "epochs_planned": int(run["epochs"]), "seconds": 0.0, "saved_seconds": 0.0,
                     "error": d.describe()})
    return pd.DataFrame(rows, columns=PRUNED_COLUMNS)

