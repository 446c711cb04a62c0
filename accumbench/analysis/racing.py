"""Racing the lr grid (sweep --race): stop an arm early when it is shown worse than its group's best by more
than the margin, spare the slow starters, claim the likely answer first, and skip what is already decided.

    group        the cells that differ only by lr and seed (same model, EBS, backend, lr rule, everything else)
    arm          one lr of a group: its runs, one per seed
    judge        after epoch e of a run: the group's best arm at e (the best mean validation metric over the
                 runs that reached e) against the run's arm, with pick-best's evidence (deficit.py): seeds and
                 examples together, paired by seed where both arms ran the same seeds. The run stops, PRUNED,
                 only when the deficit's lower bound (one-sided, at 1 - alpha) is above the margin: worse by
                 more than the margin, with confidence. Significantly worse is not enough.
    guard        (closing) ...but not while it is closing the gap: when its last epoch's gain on the leader,
                 carried over the epochs left, would bring it within the margin. After one epoch there is no
                 gain to carry, and a slow starter cannot be told from a bad lr, so no arm stops before two.
    claim_order  seed by seed; within a seed the groups in turn; within a group the lr it is expected to be
                 best at first, then its neighbours outward: the group's own best so far (an earlier seed),
                 else the lr-scaling fit over the groups already tuned (sqrt from a single one), else the
                 middle of its grid. So each group's leader is strong early and the others lose to it early.
    skip_reason  a cell never trained (SKIPPED): its arm was already pruned, or finished shown worse than the
                 group's best by more than the margin, on another seed (an arm is its seeds); or its lr lies
                 beyond a bracketed optimum, two lrs between it and the group's best being already worse by
                 more than the margin.

Why bound the deficit rather than test it: a p-value says "worse", not "worse by enough to matter", and a
large validation set calls a half-point gap significant; the margin is the size of a deficit that matters,
the same one pick-best uses. bench/race.py replays racing over complete grids and counts the wrong prunes.

Pure: the sweep's worker (sweep/race.py) reads the store and asks these; the replay (race_replay.py) asks them
over stored epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from accumbench import deficit, metrics
from accumbench.analysis.runs import RunData, lr_free_key, series_key
from accumbench.config import RunConfig
from accumbench.deficit import DeficitBound, RunPredictions
from accumbench.formatting import format_lr, format_seconds, rate_key, short_model
from accumbench.race_rule import DEFAULT_RULE, RaceRule
from accumbench.vocabulary import METRICS


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
    deficit: float  # the best arm's mean metric less the arm's, at the epoch
    lower: float  # the deficit's lower bound: above `margin`
    margin: float
    alpha: float
    value: float  # the arm's mean race metric at the epoch
    best_value: float  # the best arm's
    seeds_paired: int  # seeds both arms ran (0: the arms share none, compared unpaired)
    test: str = "margin"

    def describe(self, metric: str = "val_accuracy") -> str:
        """'pruned after epoch 2: lr 1e-3 at validation accuracy 0.512 against 0.803 at lr 1e-4 (run 5), 29.1
        points behind, at least 25.3 with 99% confidence: beyond the 1-point margin'"""
        return (f"pruned after epoch {self.epoch}: lr {format_lr(self.lr)} at {METRICS[metric]} {self.value:.3f} "
                f"against {self.best_value:.3f} at lr {format_lr(self.lost_to_lr)} (run {self.lost_to}), "
                f"{deficit.amount(self.deficit, metric)} behind, at least {deficit.amount(self.lower, metric)} with "
                f"{1 - self.alpha:.4g} confidence: beyond the margin of {deficit.amount(self.margin, metric)}")

    def columns(self) -> dict[str, object]:
        """The run columns that record it (schema version 10)."""
        return dict(pruned_epoch=self.epoch, pruned_by=self.lost_to, pruned_p=self.alpha, pruned_test=self.test,
                    pruned_deficit=self.deficit, pruned_bound=self.lower)


def _mean(outcomes: Sequence[EpochOutcome]) -> float:
    values = [o.value for o in outcomes if o.value is not None and math.isfinite(o.value)]
    return sum(values) / len(values) if values else math.nan


def _latest_by_arm(outcomes: Sequence[EpochOutcome]) -> dict[str, list[EpochOutcome]]:
    """The outcomes by arm, one run per lr and seed, the latest: a dead worker's run and the rerun of its cell
    must not count twice."""
    latest: dict[tuple[str, int], EpochOutcome] = {}
    for outcome in sorted(outcomes, key=lambda o: o.run_id):
        latest[(outcome.arm, outcome.seed)] = outcome
    arms: dict[str, list[EpochOutcome]] = {}
    for outcome in latest.values():
        arms.setdefault(outcome.arm, []).append(outcome)
    return arms


def _best_arm(means: dict[str, float], higher: bool, prefer: str | None = None) -> str | None:
    """The arm with the best mean (ties go to `prefer`); None when none is finite."""
    best = prefer if prefer is not None and not math.isnan(means.get(prefer, math.nan)) else None
    for arm, mean in means.items():
        if not math.isnan(mean) and (best is None or (mean > means[best] if higher else mean < means[best])):
            best = arm
    return best


def arm_deficit(best: Sequence[EpochOutcome], mine: Sequence[EpochOutcome], metric: str, alpha: float,
                num_labels: int = 2, positive: int = 1) -> tuple[DeficitBound, int] | None:
    """`mine`'s deficit to `best` at one epoch, bounded at 1 - alpha from seeds and examples together (pick-best's
    evidence, deficit.Scorer): paired by seed over the seeds both ran, else every run of each unpaired. With the
    number of seeds paired. None when the metric is not scored from predictions or the runs saw other examples."""
    scored = metrics.named(metric)
    if scored.score is None:
        return None
    by_seed = {o.seed: o for o in best}
    shared = sorted(o.seed for o in mine if o.seed in by_seed)
    if shared:
        mine_by_seed = {o.seed: o for o in mine}
        best, mine = [by_seed[s] for s in shared], [mine_by_seed[s] for s in shared]
    runs = [*best, *mine]
    if len({(o.split_hash, len(o.predicted)) for o in runs}) != 1:
        return None
    predictions = [RunPredictions(o.labels, o.predicted, key=o.run_id) for o in runs]
    scorer = deficit.Scorer(scored.key, num_labels, positive, confidence=1 - alpha)
    bound = scorer.bound(predictions[:len(best)], predictions[len(best):], paired=bool(shared) and len(shared) > 1)
    return bound, len(shared)


def closing(gap_before: float, gap_now: float, epochs_left: int, margin: float) -> bool:
    """The slow-starter guard: whether an arm that gained `gap_before - gap_now` on the leader over the last
    epoch would, gaining as much in each of the `epochs_left`, end within `margin` of it."""
    gained = gap_before - gap_now
    return gained > 0 and gap_now - gained * epochs_left <= margin


def judge(outcomes: Sequence[EpochOutcome], run_id: int, epoch: int, metric: str = "val_accuracy",
          rule: RaceRule = DEFAULT_RULE, num_labels: int = 2, positive: int = 1,
          previous: Sequence[EpochOutcome] = (), epochs: int | None = None) -> PruneDecision | None:
    """Whether run `run_id` stops after `epoch`: `outcomes` are its group's runs at that epoch (itself
    included), `previous` the same group's at epoch - 1 (the guard's), `epochs` the run's planned epochs. None
    when its arm is the group's best (ties go to it), when no other arm has reached the epoch, when nothing
    pairs, when its deficit is not shown above the margin, or when the guard spares it."""
    if epoch < rule.after:
        return None
    arms = _latest_by_arm(outcomes)
    mine = next(o for o in outcomes if o.run_id == run_id)
    means = {arm: _mean(runs) for arm, runs in arms.items()}
    if math.isnan(means[mine.arm]):
        return None  # a non-finite metric: divergence, which the engine stops on its own
    best_arm = _best_arm(means, metrics.named(metric).higher_is_better, prefer=mine.arm)
    if best_arm == mine.arm:
        return None
    found = arm_deficit(arms[best_arm], arms[mine.arm], metric, rule.alpha, num_labels, positive)
    margin = rule.margin_of(metric)
    if found is None or not found[0].worse_than(margin):
        return None
    bound, seeds_paired = found
    if rule.guard == "closing":
        before = _latest_by_arm(previous)
        ids = {o.run_id for o in (*arms[best_arm], *arms[mine.arm])}
        best_before = [o for o in before.get(best_arm, []) if o.run_id in ids]
        mine_before = [o for o in before.get(mine.arm, []) if o.run_id in ids]
        if not best_before or not mine_before:
            return None  # one epoch is no trajectory: a slow starter looks like a bad lr
        gap_before = _mean(best_before) - _mean(mine_before)
        if closing(gap_before, bound.deficit, max(0, (epochs or epoch) - epoch), margin):
            return None
    lost_to = next((b for b in arms[best_arm] if b.seed == mine.seed), arms[best_arm][0])
    return PruneDecision(run_id, epoch, lost_to.run_id, lost_to.lr, mine.lr, bound.deficit, bound.lower, margin,
                         rule.alpha, means[mine.arm], means[best_arm], seeds_paired)


# --- which cell next: the claim order and the skips ---------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run of a raced sweep as the planner sees it: its cell, how it ended, and its best epoch's outcome."""

    config: RunConfig
    status: str  # 'finished', 'pruned', 'skipped', 'diverged' or 'running'
    run_id: int
    best: EpochOutcome | None = None  # a finished run's best epoch on the race metric (as pick-best reads it)
    pruned_epoch: int | None = None


@dataclass
class Standing:
    """What a group knows so far: its best finished arm, and the arms already worse by more than the margin."""

    best_lr: float | None = None
    best_run: int | None = None
    worse: dict[str, str] = field(default_factory=dict)  # arm -> why, in words
    pruned: dict[str, RunRecord] = field(default_factory=dict)  # arm -> the run racing pruned


def standings(records: Sequence[RunRecord], metric: str, rule: RaceRule, num_labels: int = 2,
              positive: int = 1) -> dict[str, Standing]:
    """Per group: the best arm among its finished runs (mean metric at their best epochs, as pick-best chooses), and
    every arm shown worse than it by more than the margin there (the judge's own bound, no guard: they are done),
    pruned or diverged."""
    by_group: dict[str, list[RunRecord]] = {}
    for record in records:
        by_group.setdefault(race_group(record.config), []).append(record)
    higher = metrics.named(metric).higher_is_better
    out = {}
    for group, members in by_group.items():
        standing = Standing()
        for record in members:
            arm = rate_key(record.config.scaled_lr)
            if record.status == "pruned":
                standing.pruned.setdefault(arm, record)
                standing.worse.setdefault(arm, f"pruned after epoch {record.pruned_epoch} (run {record.run_id})")
            elif record.status == "diverged":
                standing.worse.setdefault(arm, f"diverged (run {record.run_id})")
        arms = _latest_by_arm([r.best for r in members if r.status == "finished" and r.best is not None])
        means = {arm: _mean(runs) for arm, runs in arms.items()}
        best = _best_arm(means, higher)
        if best is not None:
            standing.best_lr, standing.best_run = arms[best][0].lr, arms[best][0].run_id
            margin = rule.margin_of(metric)
            for arm, runs in arms.items():
                found = None if arm == best else arm_deficit(arms[best], runs, metric, rule.alpha, num_labels, positive)
                if found is not None and found[0].worse_than(margin):
                    standing.worse.setdefault(arm, f"finished {deficit.amount(found[0].deficit, metric)} behind lr "
                                                   f"{format_lr(arms[best][0].lr)}, at least "
                                                   f"{deficit.amount(found[0].lower, metric)} (run {runs[0].run_id})")
        out[group] = standing
    return out


def expected_best_lr(cell: RunConfig, cells: Sequence[RunConfig], known: dict[str, Standing]) -> float | None:
    """The lr `cell`'s group is expected to be best at: its own best so far; else the lr-scaling fit over the
    other groups of its series (and lr rule) already tuned (log lr against log EBS, least squares, the exponent kept in
    [0, 1]; from a single one, the sqrt rule); None when nothing is known."""
    own = known.get(race_group(cell))
    if own is not None and own.best_lr is not None:
        return own.best_lr
    series = series_key(cell)
    points = {}
    for other in cells:
        standing = known.get(race_group(other))
        if (standing is not None and standing.best_lr is not None and series_key(other) == series
                and other.lr_scaling == cell.lr_scaling):
            points[other.effective_batch_size] = standing.best_lr
    if not points:
        return None
    xs = [math.log(e) for e in points]
    ys = [math.log(lr) for lr in points.values()]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = 0.5 if spread == 0 else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    slope = min(1.0, max(0.0, slope))
    return math.exp(mean_y + slope * (math.log(cell.effective_batch_size) - mean_x))


def claim_order(cells: Sequence[RunConfig], known: dict[str, Standing] | None = None) -> list[RunConfig]:
    """The cells in racing's claim order: seed by seed (one seed's grid is already an answer); within a seed the
    groups in turn; within a group the lr expected to be best first (expected_best_lr), then its neighbours,
    nearest in log lr first; with nothing known, from the middle of the grid outward (of 4 lrs: the 2nd, 3rd,
    1st, 4th)."""
    known = known or {}
    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    groups = list(dict.fromkeys(race_group(cell) for cell in cells))
    rates: dict[str, list[float]] = {}
    for cell in cells:
        rates.setdefault(race_group(cell), []).append(cell.scaled_lr)
    middle_out = {}
    for group, lrs in rates.items():
        ordered = sorted({rate_key(lr): lr for lr in lrs}.values())
        middle = (len(ordered) - 1) / 2
        for position, index in enumerate(sorted(range(len(ordered)), key=lambda i: (abs(i - middle), i))):
            middle_out[(group, rate_key(ordered[index]))] = position
    anchors = {race_group(c): expected_best_lr(c, cells, known) for c in cells}

    def within_group(cell: RunConfig) -> tuple[float, int]:
        group, anchor = race_group(cell), anchors[race_group(cell)]
        distance = 0.0 if anchor is None else abs(math.log(cell.scaled_lr / anchor))
        return round(distance, 9), middle_out[(group, rate_key(cell.scaled_lr))]

    return sorted(cells, key=lambda c: (seeds.index(c.seed), groups.index(race_group(c)), within_group(c)))


def skip_reason(cell: RunConfig, cells: Sequence[RunConfig], known: dict[str, Standing]) -> tuple[str, int] | None:
    """(why, the run that decided it) when racing need not train `cell` at all: its arm was pruned, or shown worse
    than its group's best by more than the margin, on another seed; or its lr lies beyond its group's best with two
    lrs between them already worse by more than the margin. None: train it."""
    standing = known.get(race_group(cell))
    if standing is None:
        return None
    arm = rate_key(cell.scaled_lr)
    if arm in standing.pruned:
        pruned = standing.pruned[arm]
        return (f"skipped: lr {format_lr(cell.scaled_lr)} was pruned on seed {pruned.config.seed} after epoch "
                f"{pruned.pruned_epoch} (run {pruned.run_id})", pruned.run_id)
    if arm in standing.worse and standing.best_run is not None:  # finished (or diverged) worse on another seed
        return f"skipped: lr {format_lr(cell.scaled_lr)} {standing.worse[arm]}", int(standing.best_run)
    if standing.best_lr is None:
        return None
    best, lr = standing.best_lr, cell.scaled_lr
    lrs = sorted({rate_key(c.scaled_lr): c.scaled_lr for c in cells if race_group(c) == race_group(cell)}.values())
    between = [x for x in lrs if min(best, lr) < x < max(best, lr) and rate_key(x) != rate_key(best)]
    worse = [x for x in between if rate_key(x) in standing.worse]
    if len(worse) < 2:
        return None
    side = "above" if lr > best else "below"
    return (f"skipped: lr {format_lr(lr)} lies {side} the bracketed optimum lr {format_lr(best)} (run "
            f"{standing.best_run}), beyond {' and '.join(format_lr(x) for x in worse)}, already worse by more than "
            f"the margin", int(standing.best_run))


# --- what racing did, for report ---------------------------------------------------------------------------


@dataclass
class RacedGroup:
    """One group's racing, from the store: the runs it stopped or skipped and the training time that saved."""

    label: str  # 'minilm EBS 16', with the lr rule where there is one
    pruned: list[dict]  # run_id, lr, seed, epoch, deficit, bound, lost_to, skipped: one per PRUNED or SKIPPED run
    seconds: float  # the group's training time as it ran (every epoch's epoch_seconds, pruned runs' included)
    saved_seconds: float  # the epochs pruned and skipped runs did not train, each at its run's own pace

    @property
    def saved_share(self) -> float:
        """Of the time the group would have taken unraced."""
        return self.saved_seconds / (self.seconds + self.saved_seconds) if self.seconds + self.saved_seconds else 0.0

    @property
    def text(self) -> str:
        def one(p: dict) -> str:
            if p["skipped"]:
                return f"lr {format_lr(p['lr'])} seed {p['seed']} skipped (decided by run {p['lost_to']})"
            behind = "" if p["deficit"] is None else f", {p['deficit'] * 100:.1f} behind, at least {p['bound'] * 100:.1f}"
            return f"lr {format_lr(p['lr'])} seed {p['seed']} after epoch {p['epoch']} (lost to run {p['lost_to']}{behind})"

        stopped = sum(not p["skipped"] for p in self.pruned)
        skipped = len(self.pruned) - stopped
        counts = f"{stopped} run{'s' if stopped != 1 else ''} pruned" + (f", {skipped} skipped" if skipped else "")
        return (f"{self.label}: {counts} ({'; '.join(one(p) for p in self.pruned)}); "
                f"~{format_seconds(self.saved_seconds)} of training saved ({self.saved_share:.0%} of the group's)")

    def to_json(self) -> dict:
        return {"group": self.label, "pruned": self.pruned, "seconds": self.seconds,
                "saved_seconds": self.saved_seconds, "saved_share": self.saved_share}


def _number(value: object) -> float | None:
    return None if value is None or value != value else float(value)  # type: ignore[arg-type]


def race_summary(data: RunData) -> list[RacedGroup]:
    """Per group with a PRUNED or SKIPPED run (RunData.pruned), what racing stopped and saved, in the runs' order."""
    if data.pruned.empty:
        return []
    spent = data.epochs.groupby("run_id")["epoch_seconds"].sum()
    out = []
    for (lr_free, rule), cut in data.pruned.groupby(["lr_free", "lr_scaling"], sort=False):
        finished = data.runs[(data.runs["lr_free"] == lr_free) & (data.runs["lr_scaling"] == rule)]
        first = cut.iloc[0]
        label = f"{short_model(first['model'])} EBS {first['effective_batch_size']}" + (f" {rule}" if rule != "none" else "")
        pruned = [dict(run_id=int(r.run_id), lr=float(r.lr), seed=int(r.seed), epoch=int(r.pruned_epoch or 0),
                       deficit=_number(r.pruned_deficit), bound=_number(r.pruned_bound), test=r.pruned_test,
                       lost_to=None if _number(r.pruned_by) is None else int(r.pruned_by),
                       skipped=bool(r.skipped)) for r in cut.itertuples()]
        seconds = float(spent.reindex(finished["run_id"]).fillna(0).sum() + cut["seconds"].sum())
        out.append(RacedGroup(label, pruned, seconds, float(cut["saved_seconds"].sum())))
    return out
