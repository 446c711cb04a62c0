"""`sweep --race`: a raced run asks, after each epoch, whether its lr is already significantly worse than
its group's best (analysis/racing.py decides; this reads the store for it).

Every decision reads the store at decision time: the epochs and validation predictions that the sweep's
runs in the group have recorded by then, whichever worker or machine trained them. So workers sharing one
PostgreSQL database race correctly, and a resumed sweep judges against everything already recorded.
"""

from __future__ import annotations

import json
from typing import Any

from accumbench.analysis.racing import EpochOutcome, PruneDecision, judge, race_group
from accumbench.config import RunConfig
from accumbench.store import Store
from accumbench.vocabulary import DIVERGED_PREFIX, FAILED, FINISHED, PRUNED, RUNNING


def _counts(run: dict[str, Any]) -> bool:
    """A run whose epochs are evidence: live, finished, pruned or diverged. Not a KILLED or crashed one:
    its cell runs again, and the same seed must not count twice."""
    return run["status"] in (RUNNING, FINISHED, PRUNED) or (
        run["status"] == FAILED and (run["error"] or "").startswith(DIVERGED_PREFIX))


class Racer:
    """The judge of one sweep's runs, for engine.fit's `race`."""

    def __init__(self, store: Store, sweep_id: int, config: RunConfig, metric: str, alpha: float, after: int) -> None:
        self.store, self.sweep_id, self.config = store, sweep_id, config
        self.metric, self.alpha, self.after = metric, alpha, after

    def decide(self, run_id: int, epoch: int) -> PruneDecision | None:
        if epoch < self.after:
            return None
        group = race_group(self.config)
        members = {run["id"]: run for run in self.store.sweep_runs(self.sweep_id) if _counts(run)
                   and race_group(RunConfig.from_dict(json.loads(run["config_json"]))) == group}
        if run_id not in members:  # a run outside any sweep (a test's): judged all the same
            members[run_id] = self.store.get_run(run_id)
        ids = list(members)
        values = {row["run_id"]: row[self.metric] for row in self.store.epochs_of(ids) if row["epoch"] == epoch}
        predictions = self.store.predictions(ids, "validation", epochs={run: epoch for run in ids})
        outcomes = [EpochOutcome(run, members[run]["seed"], members[run]["lr"], values[run],
                                 predictions[run]["labels"], predictions[run]["predicted"], predictions[run]["split_hash"])
                    for run in ids if run in predictions and values.get(run) is not None]
        if not any(o.run_id == run_id for o in outcomes):
            return None
        me = members[run_id]
        positive = me["positive_class"] if me["positive_class"] is not None else 1
        return judge(outcomes, run_id, epoch, self.metric, self.alpha, int(me["num_labels"] or 2), positive)
