"""`pick-best --replay-race`: racing replayed over a complete lr grid from its stored epochs, to measure its
risk instead of hoping.

    one worker, as `sweep --race` would run the grid: before each claim, what is known so far orders the cells
    (racing.claim_order) and may skip the next one (racing.skip_reason); a claimed run is judged after each
    epoch from --race-after on (but the last) against what the runs before it had recorded by then
    (racing.judge), and cut where the replay pruned it
      -> per pick group: the training time and epochs saved (what pruned runs would not have trained, and
         skipped runs' every epoch, at the seconds they took), the tuned pick with and without racing, the
         best lr per EBS, and the wrong prunes and skips

A wrong prune (or skip) is an arm (an EBS at one lr) that racing stopped, but that at the end of its full
training is not shown worse than its EBS's best lr by more than the margin: the test racing stops arms by
(the deficit's lower bound above the margin), applied to the finished grid with pick-best's evidence
(pick.deficit_to_best). Beside it, `within`: the wrong ones that evidence even shows within the margin.
Diverged runs are replayed as they ran: they end themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from accumbench.analysis.pick import pick_best, screened_candidates
from accumbench.analysis.racing import (
    EpochOutcome,
    PruneDecision,
    RunRecord,
    claim_order,
    judge,
    race_group,
    skip_reason,
    standings,
)
from accumbench.analysis.runs import PRUNED_COLUMNS, RunData, load_predictions
from accumbench.analysis.tuning import has_lr_grid
from accumbench.config import RunConfig
from accumbench.deficit import DEFAULT_EVIDENCE, DeficitBound, Margin
from accumbench.errors import UserError
from accumbench.formatting import format_lr, format_seconds, rate_key
from accumbench.race_rule import DEFAULT_RULE, RaceRule
from accumbench.vocabulary import TUNED


@dataclass
class ReplayedStop:
    """One run racing would not have trained in full: pruned after `epoch` (decision), or skipped (epoch 0)."""

    run_id: int
    effective_batch_size: int
    lr: float
    seed: int
    epoch: int  # 0: skipped, never trained
    why: str
    lost_to: int | None
    saved_seconds: float
    saved_epochs: int
    wrong: bool  # its arm, fully trained, is not shown worse than its EBS's best by more than the margin
    within: bool  # ... and is even shown within the margin of it
    final: DeficitBound | None  # its arm's deficit to the best, fully trained (None: it is the best)
    decision: PruneDecision | None = None

    @property
    def skipped(self) -> bool:
        return self.decision is None


@dataclass
class RaceReplay:
    group: str
    rule: RaceRule
    metric: str
    evidence: Margin
    seconds: float  # the whole grid's training time as recorded (every epoch's epoch_seconds)
    epochs: int  # the whole grid's epochs
    stops: list[ReplayedStop]
    arms: int  # (EBS, lr) arms in the grid
    pick_full: int  # the EBS the tuned pick chooses on the whole grid
    pick_raced: int  # ... and on what racing would have left
    best_lrs_full: dict[int, float] = field(default_factory=dict)  # EBS -> its best lr
    best_lrs_raced: dict[int, float] = field(default_factory=dict)
    floor_seconds: float = 0.0  # the training no safe rule avoids: the arms not shown worse at the end, in full
    floor_epochs: int = 0

    @property
    def ceiling_share(self) -> float:
        """The most a rule with no wrong stop could save: everything but the floor."""
        return 1 - self.floor_seconds / self.seconds if self.seconds else 0.0

    @property
    def prunes(self) -> list[ReplayedStop]:
        return [s for s in self.stops if not s.skipped]

    @property
    def skips(self) -> list[ReplayedStop]:
        return [s for s in self.stops if s.skipped]

    @property
    def saved_seconds(self) -> float:
        return sum(s.saved_seconds for s in self.stops)

    @property
    def saved_share(self) -> float:
        return self.saved_seconds / self.seconds if self.seconds else 0.0

    @property
    def epochs_trained(self) -> int:
        return self.epochs - sum(s.saved_epochs for s in self.stops)

    @property
    def arms_stopped(self) -> list[tuple[int, float]]:
        return sorted({(s.effective_batch_size, s.lr) for s in self.stops})

    @property
    def wrong_arms(self) -> list[tuple[int, float]]:
        return sorted({(s.effective_batch_size, s.lr) for s in self.stops if s.wrong})

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
        return (f"{self.group}: racing ({self.rule.words(self.metric)}) would have pruned {len(self.prunes)} runs and "
                f"skipped {len(self.skips)}, in {len(self.arms_stopped)} of {self.arms} (EBS, lr) arms "
                f"({arms(self.arms_stopped)}), training {self.epochs_trained} of {self.epochs} epochs and saving "
                f"{format_seconds(self.saved_seconds)} of {format_seconds(self.seconds)} ({self.saved_share:.0%}; "
                f"no rule without a wrong stop saves more than {self.ceiling_share:.0%}); "
                f"{pick}, {best}; wrong prunes and skips (fully trained, not shown worse than their EBS's best by "
                f"more than {self.evidence.words(self.metric)}): {arms(self.wrong_arms)}")

    def to_json(self) -> dict[str, Any]:
        arms = lambda found: [{"effective_batch_size": e, "lr": lr} for e, lr in found]  # noqa: E731
        return {"group": self.group, **self.rule.to_json(), "metric": self.metric,
                "seconds": self.seconds, "saved_seconds": self.saved_seconds, "saved_share": self.saved_share,
                "epochs": self.epochs, "epochs_trained": self.epochs_trained, "floor_epochs": self.floor_epochs,
                "floor_seconds": self.floor_seconds, "ceiling_share": self.ceiling_share,
                "arms": self.arms, "arms_stopped": arms(self.arms_stopped),
                "pick_full": self.pick_full, "pick_raced": self.pick_raced,
                "best_lr_full": {str(e): lr for e, lr in self.best_lrs_full.items()},
                "best_lr_raced": {str(e): lr for e, lr in self.best_lrs_raced.items()},
                "same_answer": self.same_answer, "wrong": arms(self.wrong_arms),
                "margin": self.evidence.of(self.metric), "confidence": self.evidence.confidence,
                "stops": [{"run_id": s.run_id, "effective_batch_size": s.effective_batch_size, "lr": s.lr,
                           "seed": s.seed, "epoch": s.epoch, "skipped": s.skipped, "why": s.why,
                           "lost_to": s.lost_to, "saved_seconds": s.saved_seconds, "saved_epochs": s.saved_epochs,
                           "wrong": s.wrong, "within": s.within,
                           "final_deficit": None if s.final is None else s.final.deficit,
                           "final_bounds": None if s.final is None else [s.final.lower, s.final.upper]}
                          for s in self.stops],
                "text": self.text}


@dataclass
class _Replayed:
    """What one worker racing the grid would have done: each run's epochs trained, its prune or skip."""

    trained: dict[int, int] = field(default_factory=dict)  # run -> epochs trained
    decisions: dict[int, PruneDecision] = field(default_factory=dict)
    skips: dict[int, tuple[str, int]] = field(default_factory=dict)  # run -> (why, the deciding run)


def _race(data: RunData, predictions: dict[int, dict[int, dict[str, Any]]], rule: RaceRule) -> _Replayed:
    """Racing replayed over the grid's finished runs, one worker claiming in racing's order (see the module)."""
    runs, epochs, metric = data.runs, data.epochs, data.metric
    last = epochs.groupby("run_id")["epoch"].max()
    values = epochs.set_index(["run_id", "epoch"])[metric]
    by_run = runs.set_index("run_id")
    first = runs.iloc[0]
    num_labels = int(first["num_labels"] or 2)
    positive = 1 if pd.isna(first["positive_class"]) else int(first["positive_class"])
    run_of: dict[str, int] = {}
    for run_id, config in zip(runs["run_id"], runs["config"]):
        run_of[config.config_hash] = int(run_id)  # the latest run of a cell
    cells: list[RunConfig] = list({c.config_hash: c for c in runs["config"]}.values())
    group_of = {run: race_group(by_run.at[run, "config"]) for run in run_of.values()}

    def outcomes(group: str, epoch: int, done: _Replayed) -> list[EpochOutcome]:
        found = (_outcome(r, epoch, by_run, values, predictions) for r, n in done.trained.items()
                 if group_of[r] == group and n >= epoch)
        return [o for o in found if o is not None]

    done, records, pending = _Replayed(), [], list(cells)
    while pending:
        known = standings(records, metric, rule, num_labels, positive)
        waiting = {c.config_hash for c in pending}
        cell = next(c for c in claim_order(cells, known) if c.config_hash in waiting)
        pending = [c for c in pending if c.config_hash != cell.config_hash]
        run = run_of[cell.config_hash]
        skip = skip_reason(cell, cells, known)
        if skip is not None:
            done.trained[run], done.skips[run] = 0, skip
            continue
        done.trained[run] = int(last[run])
        for epoch in range(max(1, rule.after), int(last[run])):
            now = outcomes(group_of[run], epoch, done)
            if not any(o.run_id == run for o in now):
                continue
            decision = judge(now, run, epoch, metric, rule, num_labels, positive,
                             previous=outcomes(group_of[run], epoch - 1, done) if epoch > 1 else (),
                             epochs=int(by_run.at[run, "epochs"]))
            if decision is not None:
                done.trained[run], done.decisions[run] = epoch, decision
                records.append(RunRecord(cell, "pruned", run, pruned_epoch=epoch))
                break
        else:
            best = int(by_run.at[run, "best_epoch"])  # on the metric, as pick-best reads the run
            records.append(RunRecord(cell, "finished", run, _outcome(run, best, by_run, values, predictions)))
    return done


def replay_race(store: Any, data: RunData, rule: RaceRule = DEFAULT_RULE,
                evidence: Margin = DEFAULT_EVIDENCE) -> list[RaceReplay]:
    """Racing replayed over the finished runs of `data` (a grid no one raced), one RaceReplay per pick group."""
    if not data.pruned.empty:
        raise UserError(f"--replay-race replays a grid that was not raced, and {len(data.pruned)} of these runs were "
                        "PRUNED or SKIPPED; pick a sweep trained without --race (--sweep NAME)")
    if not has_lr_grid(data.runs):
        raise UserError("--replay-race needs an lr grid (some EBS trained at 2+ lrs); sweep with --lrs first")
    runs, epochs, metric = data.runs, data.epochs, data.metric
    ids = [int(r) for r in runs["run_id"]]
    last = epochs.groupby("run_id")["epoch"].max()
    predictions = {e: store.predictions(ids, "validation", epochs=dict.fromkeys(ids, e)) for e in range(1, int(last.max()) + 1)}
    done = _race(data, predictions, rule)
    by_run = runs.set_index("run_id")
    # Wrong is judged at racing's own margin, with pick-best's confidence, on the finished grid.
    judged = Margin(rule.margin_of(metric), evidence.confidence)

    at_best = load_predictions(store, data)  # read once: both picks and the wrong-prune screens use it
    full_picks = pick_best(data, at_best, metric=metric, evidence=evidence, protocol=TUNED)
    cut_ids = {r for r, n in done.trained.items() if n < int(last[r])}
    raced = replace(data, runs=runs[~runs["run_id"].isin(cut_ids)].reset_index(drop=True),
                    pruned=_as_pruned(done, cut_ids, by_run))
    left = {split: {r: found for r, found in by_id.items() if r not in cut_ids} for split, by_id in at_best.items()}
    raced_picks = {p.group: p for p in pick_best(raced, left, metric=metric, evidence=evidence, protocol=TUNED)}
    out = []
    for full in full_picks:
        # The group's runs: every lr of every EBS it tuned (its candidates are among them).
        members = {int(r) for r in runs[runs["lr_free"].isin({b.key for b in full.best_lrs})]["run_id"]}
        stops = []
        for run_id in sorted(cut_ids & members, key=lambda r: (r not in done.decisions, r)):
            run = by_run.loc[run_id]
            trained = done.trained[run_id]
            spent = epochs[(epochs["run_id"] == run_id) & (epochs["epoch"] > trained)]
            decision = done.decisions.get(run_id)
            why, lost_to = ((decision.describe(metric), decision.lost_to) if decision is not None
                            else done.skips[run_id])
            within, not_ruled_out, final = ends_as_good(runs, run, at_best["validation"], metric, judged)
            stops.append(ReplayedStop(run_id, int(run["effective_batch_size"]), float(run["lr"]), int(run["seed"]),
                                      trained, why, lost_to, float(spent["epoch_seconds"].sum()), len(spent),
                                      not_ruled_out, within, final, decision))
        group_runs = runs[runs["run_id"].isin(members)].assign(rate=lambda f: f["lr"].map(rate_key))
        arms = group_runs[["lr_free", "rate"]].drop_duplicates()
        spent = epochs[epochs["run_id"].isin(members)]
        # What no safe rule avoids: every epoch of the arms that, fully trained, are not shown worse than their
        # EBS's best by more than the margin (a rule that stopped one would have stopped it wrongly).
        needed = set()
        for arm in arms.itertuples():
            arm_runs = group_runs[(group_runs["lr_free"] == arm.lr_free) & (group_runs["rate"] == arm.rate)]
            if ends_as_good(runs, arm_runs.iloc[0], at_best["validation"], metric, judged)[1]:
                needed.update(int(r) for r in arm_runs["run_id"])
        floor = spent[spent["run_id"].isin(needed)]
        raced_pick = raced_picks[full.group]
        out.append(RaceReplay(full.group, rule, metric, judged, float(spent["epoch_seconds"].sum()), len(spent),
                              stops, len(arms), full.chosen.effective_batch_size,
                              raced_pick.chosen.effective_batch_size,
                              {b.effective_batch_size: b.best.lr for b in full.best_lrs},
                              {b.effective_batch_size: b.best.lr for b in raced_pick.best_lrs},
                              float(floor["epoch_seconds"].sum()), len(floor)))
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


def _as_pruned(done: _Replayed, cut_ids: set[int], by_run: pd.DataFrame) -> pd.DataFrame:
    """The replay's prunes and skips as RunData.pruned rows, for the pick on what racing would have left."""
    rows = []
    for run_id in sorted(cut_ids):
        run, decision = by_run.loc[run_id], done.decisions.get(run_id)
        rows.append({**{c: run[c] for c in ("lr", "base_lr", "lr_scaling", "lr_free", "series", "effective_batch_size",
                                           "model", "backend", "seed")},
                     "run_id": run_id, "pruned_epoch": done.trained[run_id],
                     "pruned_by": decision.lost_to if decision is not None else done.skips[run_id][1],
                     "pruned_p": None, "pruned_test": "margin", "skipped": decision is None,
                     "pruned_deficit": decision.deficit if decision is not None else None,
                     "pruned_bound": decision.lower if decision is not None else None,
                     "epochs_planned": int(run["epochs"]), "seconds": 0.0, "saved_seconds": 0.0,
                     "error": decision.describe() if decision is not None else done.skips[run_id][0]})
    return pd.DataFrame(rows, columns=PRUNED_COLUMNS)
