"""Racing the lr grid (sweep --race): stop a run early when its lr is significantly worse than its group's
best lr at the same epoch, on paired evidence, and claim cells in the order that gets that evidence early.

    group        the cells that differ only by lr and seed (same model, EBS, backend, lr rule, everything else)
    arm          one lr of a group: its runs, one per seed
    judge        after epoch e of a run: the group's best arm at e (the best mean validation metric over the
                 runs that reached e) against the run's arm, example by example on the validation set:
                 McNemar's discordant counts summed over the seeds both arms ran (a McNemar stratified by
                 seed; by example alone where they share no seed), or for F1 and MCC a paired bootstrap
                 stratified the same way. Significantly worse at --race-alpha: the run stops, PRUNED.
    claim_order  seed by seed; within a seed round-robin over the groups, each group's lrs from the middle
                 of its grid outward, so that every group has a central lr's first epoch to compare with early

Why not Welch across seeds, as pick-best's screen uses when it can: a grid has 2 or 3 seeds, and with so
few a t-test almost never rejects, so racing would save nothing. The examples pair, and there are hundreds.
Why a strict alpha (RACE_ALPHA): an early epoch is a short horizon; a small lr that starts slowly can end
best. bench/race.py replays racing over a complete grid and counts the prunes that were wrong.

Pure: the sweep's worker (sweep/race.py) reads the store and asks `judge`; the replay (race_replay.py)
asks it over stored epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from accumbench import stats, task_metrics
from accumbench.analysis.runs import RunData, lr_free_key
from accumbench.config import RunConfig
from accumbench.formatting import format_lr, format_seconds, rate_key, short_model
from accumbench.vocabulary import BOOTSTRAPPED, METRICS, RACE_ALPHA, higher_is_better


def race_group(config: RunConfig) -> str:
    """The group a cell races in: its configuration up to its seed and lr, its lr rule kept."""
    return f"{lr_free_key(config)}:{config.lr_scaling}"


@dataclass(frozen=True)
class EpochOutcome:
    """One run of a group at one epoch: what `judge` compares."""

    run_id: int
    seed: int
    lr: float  # the rate trained with (runs.lr)
    value: float  # the race metric at this epoch
    labels: Sequence[int]  # the validation labels, in split order
    predicted: Sequence[int]  # this run's validation predictions at this epoch
    split_hash: str

    @property
    def arm(self) -> str:
        return rate_key(self.lr)


@dataclass(frozen=True)
class PruneDecision:
    """Why a run stopped: its arm against its group's best arm after `epoch`."""

    run_id: int
    epoch: int
    lost_to: int  # the best arm's run paired with it: the one of its seed, else the first
    lost_to_lr: float
    lr: float
    p_value: float
    test: str  # 'mcnemar' or 'bootstrap'
    value: float  # the arm's mean race metric at the epoch
    best_value: float  # the best arm's
    seeds_paired: int  # strata of the test: seeds both arms ran (or runs paired by example alone)

    def describe(self, metric: str = "val_accuracy") -> str:
        """'pruned after epoch 1: lr 1e-3 at validation accuracy 0.512 against 0.803 at lr 1e-4 (run 5),
        McNemar p=2.1e-40'"""
        test = "McNemar" if self.test == "mcnemar" else "paired bootstrap"
        return (f"pruned after epoch {self.epoch}: lr {format_lr(self.lr)} at {METRICS[metric]} {self.value:.3f} "
                f"against {self.best_value:.3f} at lr {format_lr(self.lost_to_lr)} (run {self.lost_to}), "
                f"{test} p={self.p_value:.2g}")

    def columns(self) -> dict[str, object]:
        """The run columns that record it (schema version 8)."""
        return dict(pruned_epoch=self.epoch, pruned_by=self.lost_to, pruned_p=self.p_value, pruned_test=self.test)


def _mean(outcomes: list[EpochOutcome]) -> float:
    values = [o.value for o in outcomes if o.value is not None and math.isfinite(o.value)]
    return sum(values) / len(values) if values else math.nan


def _pairs(mine: list[EpochOutcome], best: list[EpochOutcome]) -> list[tuple[EpochOutcome, EpochOutcome]]:
    """(mine, best) runs on the same examples: the seeds both ran; where they share none, by example alone
    (the runs in seed order, zipped)."""
    by_seed = {o.seed: o for o in best}
    shared = [(o, by_seed[o.seed]) for o in sorted(mine, key=lambda o: o.seed) if o.seed in by_seed]
    pairs = shared or list(zip(sorted(mine, key=lambda o: o.seed), sorted(best, key=lambda o: o.seed)))
    return [(a, b) for a, b in pairs if a.split_hash == b.split_hash and len(a.predicted) == len(b.predicted)]


def bootstrap_resamples(alpha: float) -> int:
    """Enough resamples that a bootstrap p-value can fall below `alpha` (its smallest is 2 / (1 + R))."""
    return max(2000, math.ceil(4 / alpha))


def judge(outcomes: Sequence[EpochOutcome], run_id: int, epoch: int, metric: str = "val_accuracy",
          alpha: float = RACE_ALPHA, num_labels: int = 2, positive: int = 1) -> PruneDecision | None:
    """Whether run `run_id` stops after `epoch`: `outcomes` are its group's runs at that epoch (itself
    included). None when its arm is the group's best (ties go to it), when no other arm has reached the
    epoch, when nothing pairs, or when it is not significantly worse at `alpha`."""
    # One run per lr and seed, the latest: a dead worker's run and the rerun of its cell must not count twice.
    latest: dict[tuple[str, int], EpochOutcome] = {}
    for outcome in sorted(outcomes, key=lambda o: o.run_id):
        latest[(outcome.arm, outcome.seed)] = outcome
    arms: dict[str, list[EpochOutcome]] = {}
    for outcome in latest.values():
        arms.setdefault(outcome.arm, []).append(outcome)
    mine = next(o for o in outcomes if o.run_id == run_id)
    means = {arm: _mean(runs) for arm, runs in arms.items()}
    if math.isnan(means[mine.arm]):
        return None  # a non-finite metric: divergence, which the engine stops on its own
    higher = higher_is_better(metric)
    best_arm = mine.arm
    for arm, mean in means.items():
        if not math.isnan(mean) and (mean > means[best_arm] if higher else mean < means[best_arm]):
            best_arm = arm
    if best_arm == mine.arm:
        return None
    pairs = _pairs(arms[mine.arm], arms[best_arm])
    if not pairs:
        return None
    if metric in BOOTSTRAPPED:
        strata = [(b.labels, b.predicted, a.predicted) for a, b in pairs]
        result = task_metrics.paired_bootstrap(strata, BOOTSTRAPPED[metric], num_labels, positive=positive,
                                               resamples=bootstrap_resamples(alpha))
        worse, p_value, test = result.difference > 0, result.p_value, "bootstrap"
    else:  # accuracy, and loss: McNemar tests who is right, and the loss must agree on the direction
        counts = [stats.discordant_pairs(b.labels, b.predicted, a.predicted) for a, b in pairs]
        best_only, mine_only = sum(c[0] for c in counts), sum(c[1] for c in counts)
        worse, p_value, test = best_only > mine_only, stats.mcnemar_exact(best_only, mine_only), "mcnemar"
    if not (worse and p_value < alpha):
        return None
    lost_to = next((b for a, b in pairs if a.run_id == run_id), pairs[0][1])
    return PruneDecision(run_id, epoch, lost_to.run_id, lost_to.lr, mine.lr, p_value, test, means[mine.arm],
                         means[best_arm], len(pairs))


def claim_order(cells: Sequence[RunConfig]) -> list[RunConfig]:
    """The cells in racing's claim order: seed by seed (one seed's grid is already an answer); within a
    seed, round-robin over the groups, and each group's lrs from the middle of its grid outward (of 4 lrs:
    the 2nd, 3rd, 1st, 4th), so that each group gets a full first epoch at a central lr early."""
    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    groups = list(dict.fromkeys(race_group(cell) for cell in cells))
    rates: dict[str, list[float]] = {}
    for cell in cells:
        rates.setdefault(race_group(cell), []).append(cell.scaled_lr)
    rank = {}
    for group, lrs in rates.items():
        ordered = sorted({rate_key(lr): lr for lr in lrs}.values())
        middle = (len(ordered) - 1) / 2
        for position, index in enumerate(sorted(range(len(ordered)), key=lambda i: (abs(i - middle), i))):
            rank[(group, rate_key(ordered[index]))] = position
    return sorted(cells, key=lambda c: (seeds.index(c.seed), rank[(race_group(c), rate_key(c.scaled_lr))],
                                        groups.index(race_group(c))))


# --- what racing did, for report ---------------------------------------------------------------------------


@dataclass
class RacedGroup:
    """One group's racing, from the store: the runs it stopped and the training time that saved."""

    label: str  # 'minilm EBS 16', with the lr rule where there is one
    pruned: list[dict]  # run_id, lr, seed, epoch, p, test, lost_to: one per PRUNED run
    seconds: float  # the group's training time as it ran (every epoch's epoch_seconds, pruned runs' included)
    saved_seconds: float  # the epochs pruned runs did not train, each at its run's own pace

    @property
    def saved_share(self) -> float:
        """Of the time the group would have taken unraced."""
        return self.saved_seconds / (self.seconds + self.saved_seconds) if self.seconds + self.saved_seconds else 0.0

    @property
    def text(self) -> str:
        stops = "; ".join(f"lr {format_lr(p['lr'])} seed {p['seed']} after epoch {p['epoch']} (p={p['p']:.1g}, "
                          f"lost to run {p['lost_to']})" for p in self.pruned)
        return (f"{self.label}: {len(self.pruned)} run{'s' if len(self.pruned) != 1 else ''} pruned ({stops}); "
                f"~{format_seconds(self.saved_seconds)} of training saved ({self.saved_share:.0%} of the group's)")

    def to_json(self) -> dict:
        return {"group": self.label, "pruned": self.pruned, "seconds": self.seconds,
                "saved_seconds": self.saved_seconds, "saved_share": self.saved_share}


def race_summary(data: RunData) -> list[RacedGroup]:
    """Per group with a PRUNED run (RunData.pruned), what racing stopped and saved, in the runs' order."""
    if data.pruned.empty:
        return []
    spent = data.epochs.groupby("run_id")["epoch_seconds"].sum()
    out = []
    for (lr_free, rule), cut in data.pruned.groupby(["lr_free", "lr_scaling"], sort=False):
        finished = data.runs[(data.runs["lr_free"] == lr_free) & (data.runs["lr_scaling"] == rule)]
        first = cut.iloc[0]
        label = f"{short_model(first['model'])} EBS {first['effective_batch_size']}" + (f" {rule}" if rule != "none" else "")
        pruned = [dict(run_id=int(r.run_id), lr=float(r.lr), seed=int(r.seed), epoch=int(r.pruned_epoch),
                       p=float(r.pruned_p), test=r.pruned_test, lost_to=int(r.pruned_by)) for r in cut.itertuples()]
        seconds = float(spent.reindex(finished["run_id"]).fillna(0).sum() + cut["seconds"].sum())
        out.append(RacedGroup(label, pruned, seconds, float(cut["saved_seconds"].sum())))
    return out
