"""`sweep --race`: a raced run asks, after each epoch, whether its arm is already worse than its group's best by
more than the margin, and a worker asks, before each claim, which cell comes next and which need not train at
all (analysis/racing.py decides; this reads the store for it).

Every decision reads the store at decision time: the epochs and validation predictions that the sweep's
runs in the group have recorded by then, whichever worker or machine trained them. So workers sharing one
PostgreSQL database race correctly, and a resumed sweep judges against everything already recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from accumbench import metrics
from accumbench.analysis.racing import (
    EpochOutcome,
    PruneDecision,
    RaceRule,
    RunRecord,
    Standing,
    judge,
    race_group,
    standings,
)
from accumbench.config import RunConfig
from accumbench.store import Store
from accumbench.vocabulary import DIVERGED_PREFIX, FAILED, FINISHED, PRUNED, RUNNING


def _counts(run: dict[str, Any]) -> bool:
    """A run whose epochs are evidence: live, finished, pruned or diverged. Not a KILLED or crashed one:
    its cell runs again, and the same seed must not count twice."""
    return run["status"] in (RUNNING, FINISHED, PRUNED) or _diverged(run)


def _diverged(run: dict[str, Any]) -> bool:
    return run["status"] == FAILED and (run["error"] or "").startswith(DIVERGED_PREFIX)


def _labels(run: dict[str, Any]) -> tuple[int, int]:
    """(number of labels, the positive class) of a run, for the metric's score."""
    return int(run["num_labels"] or 2), run["positive_class"] if run["positive_class"] is not None else 1


def _outcomes(store: Store, members: dict[int, dict[str, Any]], metric: str, epoch_of: dict[int, int]
              ) -> list[EpochOutcome]:
    """Each run's outcome at its epoch in `epoch_of`, where it recorded the metric and its predictions."""
    ids = list(epoch_of)
    values = {row["run_id"]: row[metric] for row in store.epochs_of(ids) if row["epoch"] == epoch_of.get(row["run_id"])}
    predictions = store.predictions(ids, "validation", epochs=epoch_of)
    return [EpochOutcome(run, members[run]["seed"], members[run]["lr"], values[run], predictions[run]["labels"],
                         predictions[run]["predicted"], predictions[run]["split_hash"])
            for run in ids if run in predictions and values.get(run) is not None]


def best_epochs(rows: Sequence[dict[str, Any]], metric: str) -> dict[int, int]:
    """Each run's best epoch on `metric` (the first of equals, as the recorded best epoch is chosen)."""
    higher = metrics.named(metric).higher_is_better
    best: dict[int, tuple[float, int]] = {}
    for row in sorted(rows, key=lambda r: (r["run_id"], r["epoch"])):
        value = row[metric]
        if value is None or value != value:
            continue
        held = best.get(row["run_id"])
        if held is None or (value > held[0] if higher else value < held[0]):
            best[row["run_id"]] = (value, row["epoch"])
    return {run_id: epoch for run_id, (_, epoch) in best.items()}


class Racer:
    """The judge of one sweep's runs, for engine.fit's `race`."""

    def __init__(self, store: Store, sweep_id: int, config: RunConfig, metric: str, rule: RaceRule) -> None:
        self.store, self.sweep_id, self.config = store, sweep_id, config
        self.metric, self.rule = metric, rule

    def decide(self, run_id: int, epoch: int) -> PruneDecision | None:
        if epoch < self.rule.after:
            return None
        group = race_group(self.config)
        members = {run["id"]: run for run in self.store.sweep_runs(self.sweep_id) if _counts(run)
                   and race_group(RunConfig.from_dict(json.loads(run["config_json"]))) == group}
        if run_id not in members:  # a run outside any sweep (a test's): judged all the same
            members[run_id] = self.store.get_run(run_id)
        now = _outcomes(self.store, members, self.metric, dict.fromkeys(members, epoch))
        if not any(o.run_id == run_id for o in now):
            return None
        before = _outcomes(self.store, members, self.metric, dict.fromkeys(members, epoch - 1)) if epoch > 1 else []
        num_labels, positive = _labels(members[run_id])
        return judge(now, run_id, epoch, self.metric, self.rule, num_labels, positive, previous=before,
                     epochs=int(members[run_id]["epochs"] or self.config.epochs))


def sweep_standings(store: Store, runs: Sequence[dict[str, Any]], metric: str, rule: RaceRule) -> dict[str, Standing]:
    """What each group of a raced sweep knows so far (racing.standings), from its recorded runs: the finished
    ones at their best epoch, the pruned and the diverged."""
    records, finished = [], {}
    for run in runs:
        config = RunConfig.from_dict(json.loads(run["config_json"]))
        if run["status"] == FINISHED:
            finished[run["id"]] = (run, config)
        elif run["status"] == PRUNED:
            records.append(RunRecord(config, "pruned", run["id"], pruned_epoch=run["pruned_epoch"]))
        elif _diverged(run):
            records.append(RunRecord(config, "diverged", run["id"]))
    if not finished and not records:
        return {}
    labels = (2, 1)
    if finished:
        members = {run_id: run for run_id, (run, _) in finished.items()}
        best_epoch = best_epochs(store.epochs_of(list(members)), metric)
        outcomes = {o.run_id: o for o in _outcomes(store, members, metric, best_epoch)}
        labels = _labels(next(iter(members.values())))
        records += [RunRecord(config, "finished", run_id, outcomes.get(run_id)) for run_id, (_, config) in finished.items()]
    return standings(records, metric, rule, *labels)
