"""Every effective batch size at its own best learning rate: the first stage of the tuned protocol.

Batch sizes compared at one shared lr are compared unfairly: the rate that suits EBS 64 is too small
for EBS 1024 (Shallue et al., JMLR 2019, "Measuring the effects of data parallelism"; Google's Deep
Learning Tuning Playbook). So `pick-best` selects in two nested stages, on validation only:

    cells that differ only in their lr (runs.lr_free_key: same model, EBS, backend, everything else)
      -> the lr with the best mean validation metric over seeds            best_lrs
      -> at an end of the grid tried? say so, and name the next lr to try   BestLr.warning, next_lr
      -> between grid points: the vertex of the parabola through the best
         lr and its two neighbours, in log lr                               parabola_vertex
    lr* over the EBS of one grid -> log lr* = a + alpha log EBS, alpha with
         a 95% interval, beside sqrt (0.5) and linear (1.0)                 fit_scaling
    then EBS against EBS, each at its best lr                               analysis/pick.py

A cell's lr is the rate it trained with (runs.lr: --lr scaled by its rule), so a grid of base rates
under --lr-scaling tunes the same way as a plain one. An lr whose runs all diverged is part of the grid
tried (it bounds the search) but can never be the best; so is an lr that racing pruned (sweep --race):
it was found significantly worse than the best at some epoch, and a run of it is PRUNED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from accumbench import stats
from accumbench.analysis.runs import DIVERGED_COLUMNS, PRUNED_COLUMNS, RunData, cell_label, varying
from accumbench.formatting import format_lr, rate_key
from accumbench.vocabulary import higher_is_better

SQRT_ALPHA, LINEAR_ALPHA = 0.5, 1.0


@dataclass
class LrPoint:
    """One lr tried at one EBS: its runs' validation metric over seeds."""

    lr: float  # the rate trained with
    cell: str | None  # the cell (runs.cell_key); None when every run at this lr diverged
    mean: float  # NaN when every run diverged
    std: float  # NaN with one seed
    seeds: int  # finished runs
    diverged: int  # runs that diverged
    pruned: int = 0  # runs that racing stopped or skipped: the lr lost to a better one, so it is never the best
    skipped: int = 0  # ... of them, the ones racing never trained (SKIPPED)


@dataclass
class BestLr:
    """The best lr of one EBS (one lr_free_key), out of the lrs tried there."""

    key: str  # runs.lr_free_key
    series: str  # runs.series_key: the lr x EBS grid this EBS belongs to
    series_label: str  # the model or variant where the group has several ('' otherwise)
    effective_batch_size: int
    label: str  # 'EBS 64', with the series label
    tried: list[LrPoint]  # ascending lr
    best: LrPoint
    edge: str | None  # 'smallest' or 'largest' when the best lr is at that end of 2+ lrs tried
    suggestion: float | None  # the next lr to try beyond that end
    refined_lr: float  # lr*: the best lr, moved to the parabola's vertex where both neighbours were measured
    refined: bool

    @property
    def warning(self) -> str | None:
        if self.edge is None:
            return None
        return (f"{self.label}: best lr {format_lr(self.best.lr)} is the {self.edge} tried; "
                f"add {format_lr(self.suggestion)}")

    @property
    def lrs_tried(self) -> str:
        def note(p: LrPoint) -> str:
            if p.pruned:
                return " (skipped)" if p.skipped == p.pruned else " (pruned)"
            return " (diverged)" if p.seeds == 0 else ""

        return ", ".join(format_lr(p.lr) + note(p) for p in self.tried)


def parabola_vertex(x0: float, y0: float, x1: float, y1: float, x2: float, y2: float) -> float:
    """The x of the vertex of the parabola through three points (x0 < x1 < x2), clamped to [x0, x2].
    With y1 the best of the three (the highest accuracy, or the lowest loss) it lies between x0 and x2;
    a flat triple has no vertex and keeps x1."""
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if denominator == 0:
        return x1
    return min(max(x1 - 0.5 * numerator / denominator, x0), x2)


_NICE = (1.0, 2.0, 3.0, 5.0, 10.0)


def next_lr(edge: float, neighbour: float) -> float:
    """One grid step beyond `edge`, away from `neighbour` (the step is their ratio), rounded to a rate
    people write (1, 2, 3 or 5 x 10^k, nearest in log): 1e-4 after 3e-5 gives 3e-4; 1e-5 before 3e-5, 3e-6."""
    raw = edge * (edge / neighbour)
    decade = 10.0 ** math.floor(math.log10(raw))
    nice = float(f"{decade * min(_NICE, key=lambda m: abs(math.log(raw / (decade * m)))):.3g}")  # 3e-4, not 3.0000000000000003e-4
    beyond = nice > edge * 1.01 if raw > edge else nice < edge / 1.01
    return nice if beyond else float(f"{raw:.2g}")  # a fine grid: rounding would land back on the edge


def _points(runs: pd.DataFrame, diverged: pd.DataFrame, pruned: pd.DataFrame, metric: str) -> list[LrPoint]:
    """The lrs tried at one EBS, ascending. Two cells that trained at the same rate (an lr rule at its
    base EBS, and the plain rate) ran the same training: the better one stands for that lr."""
    higher = higher_is_better(metric)
    by_lr: dict[str, LrPoint] = {}
    for cell, cell_runs in runs.groupby("cell", sort=False):
        values = cell_runs[metric].astype(float)
        point = LrPoint(float(cell_runs["lr"].iloc[0]), cell, values.mean(), values.std(), len(values), 0)
        key = rate_key(point.lr)
        held = by_lr.get(key)
        if held is None or _better(point.mean, held.mean, higher):
            by_lr[key] = point
    for lr, count in diverged["lr"].astype(float).value_counts().items():
        key = rate_key(lr)
        if key in by_lr:
            by_lr[key].diverged += int(count)
        else:
            by_lr[key] = LrPoint(float(lr), None, math.nan, math.nan, 0, int(count))
    for lr, skipped in zip(pruned["lr"].astype(float), pruned["skipped"].astype(bool)):
        point = by_lr.setdefault(rate_key(lr), LrPoint(float(lr), None, math.nan, math.nan, 0, 0))
        point.pruned += 1
        point.skipped += int(skipped)
    return sorted(by_lr.values(), key=lambda p: p.lr)


def _better(a: float, b: float, higher: bool) -> bool:
    """a beats b; NaN (no finished run) never beats anything."""
    if math.isnan(a):
        return False
    return math.isnan(b) or (a > b if higher else a < b)


def best_lrs(runs: pd.DataFrame, metric: str = "val_accuracy", diverged: pd.DataFrame | None = None,
             pruned: pd.DataFrame | None = None) -> list[BestLr]:
    """Per EBS (per lr_free_key) of `runs`, the lr with the best mean `metric` over seeds, ordered by
    series, then EBS. `diverged` (RunData.diverged) adds the lrs whose runs blew up to the grid tried, and
    `pruned` (RunData.pruned) the lrs racing stopped: tried, and never the best."""
    diverged = diverged if diverged is not None else pd.DataFrame(columns=DIVERGED_COLUMNS)
    pruned = pruned if pruned is not None else pd.DataFrame(columns=PRUNED_COLUMNS)
    higher = higher_is_better(metric)
    vary = varying(runs, ("model", "variant"))
    out = []
    for key, at_ebs in runs.groupby("lr_free", sort=False):
        tried = _points(at_ebs, diverged[diverged["lr_free"] == key], pruned[pruned["lr_free"] == key], metric)
        # A pruned lr lost to another; only if racing left no lr whole (a best that later lost a seed) do
        # the finished runs of pruned lrs compete.
        eligible = [p for p in tried if p.seeds and not p.pruned] or [p for p in tried if p.seeds]
        best = eligible[0]
        for point in eligible[1:]:
            if _better(point.mean, best.mean, higher):
                best = point
        index = tried.index(best)
        edge = suggestion = None
        if len(tried) > 1 and index in (0, len(tried) - 1):
            edge = "smallest" if index == 0 else "largest"
            suggestion = next_lr(best.lr, tried[1 if index == 0 else -2].lr)
        refined_lr, refined = best.lr, False
        if edge is None and len(tried) >= 3:
            low, high = tried[index - 1], tried[index + 1]
            if low.seeds and high.seeds and not (low.pruned or high.pruned):  # no whole metric to fit through
                x = parabola_vertex(math.log(low.lr), low.mean, math.log(best.lr), best.mean,
                                    math.log(high.lr), high.mean)
                refined_lr, refined = math.exp(x), True
        first = at_ebs.iloc[0]
        series_label = " ".join(str(first[c]) for c in vary if first[c])
        out.append(BestLr(key, first["series"], series_label, int(first["effective_batch_size"]), cell_label(first, vary),
                          tried, best, edge, suggestion, refined_lr, refined))
    order = {series: i for i, series in enumerate(dict.fromkeys(b.series for b in out))}
    return sorted(out, key=lambda b: (order[b.series], b.effective_batch_size))


def has_lr_grid(runs: pd.DataFrame, pruned: pd.DataFrame | None = None) -> bool:
    """Whether some EBS was trained at more than one lr (counting the lrs racing pruned there): then the tuned
    protocol has something to tune."""
    if pruned is not None and len(pruned):
        runs = pd.concat([runs[["lr_free", "lr"]], pruned[pruned["lr_free"].isin(runs["lr_free"])][["lr_free", "lr"]]])
    rates = runs.assign(rate=runs["lr"].map(rate_key))
    return bool((rates.groupby("lr_free")["rate"].nunique() > 1).any())


def tuned_runs(runs: pd.DataFrame, best: list[BestLr]) -> pd.DataFrame:
    """The runs of each EBS's best-lr cell: the candidates of the second stage, EBS against EBS."""
    return runs[runs["cell"].isin({b.best.cell for b in best})]


@dataclass
class ScalingFit:
    """log lr* = intercept + alpha log EBS over the EBS of one grid whose best lr is inside it."""

    series: str
    label: str  # the series in words ('' when the group has one)
    points: list[tuple[int, float]]  # (EBS, lr*)
    at_edge: list[int]  # EBS left out: best lr at an end of the grid
    alpha: float | None  # None: fewer than 3 EBS to fit
    alpha_ci95: tuple[float, float] | None
    intercept: float | None
    text: str


def fit_scaling(best: list[BestLr], min_points: int = 3) -> list[ScalingFit]:
    """Per lr x EBS grid (series) with an lr axis: the exponent alpha of lr* ∝ EBS^alpha, from the
    refined best lr of every EBS whose best lr lies inside the grid tried, with its 95% interval."""
    out = []
    for series in dict.fromkeys(b.series for b in best):
        group = [b for b in best if b.series == series]
        if not any(len(b.tried) > 1 for b in group):
            continue  # one lr per EBS: nothing was tuned
        inside = [b for b in group if b.edge is None and len(b.tried) >= 3]
        at_edge = [b.effective_batch_size for b in group if b not in inside]
        points = [(b.effective_batch_size, b.refined_lr) for b in inside]
        label = group[0].series_label
        head = f"lr scaling{' (' + label + ')' if label else ''}"
        rules = f"sqrt predicts {SQRT_ALPHA:g}, linear {LINEAR_ALPHA:g}"
        if len({ebs for ebs, _ in points}) < min_points:
            why = (f"; EBS {', '.join(map(str, at_edge))}: best lr at an end of the grid or fewer than 3 lrs tried"
                   if at_edge else "")
            out.append(ScalingFit(series, label, points, at_edge, None, None, None,
                                  f"{head}: not fitted: needs {min_points} EBS whose best lr lies inside the grid, "
                                  f"has {len(points)}{why}"))
            continue
        fit = stats.fit_line([math.log(ebs) for ebs, _ in points], [math.log(lr) for _, lr in points])
        low, high = fit.slope_ci95
        over = ", ".join(str(ebs) for ebs, _ in points)
        left = f"; left out EBS {', '.join(map(str, at_edge))} (best lr at an end of the grid)" if at_edge else ""
        out.append(ScalingFit(series, label, points, at_edge, fit.slope, (low, high), fit.intercept,
                              f"{head}: your data: lr ∝ EBS^{fit.slope:.2f} [{low:.2f}, {high:.2f}] "
                              f"(95%, over EBS {over}){left}; {rules}"))
    return out


# --- the lr x EBS grid of `report` (drawn by present/tables.py and present/plots.py) -----------------


@dataclass
class LrGrid:
    """One lr x EBS grid of validation accuracy: rows are the lrs as given (a base rate and its rule),
    columns the EBS; `best` marks each EBS's best lr."""

    model: str
    backend: str
    variant: str
    metric: str  # the validation metric of the cells (the one the runs' best epochs were chosen on)
    rows: list[tuple[str, float]]  # (lr rule, base lr), in display order
    effective_batch_sizes: list[int]
    cells: dict[tuple[int, int], tuple[float, float, int, float]]  # (row, EBS) -> (mean, std, seeds, lr trained)
    best: dict[int, int]  # EBS -> row of its best lr
    pruned: dict[tuple[int, int], int] = field(default_factory=dict)  # (row, EBS) -> runs racing stopped there
    skipped: dict[tuple[int, int], int] = field(default_factory=dict)  # ... of them, the runs it never trained

    @staticmethod
    def row_label(rule: str, base_lr: float) -> str:
        return format_lr(base_lr) if rule == "none" else f"{format_lr(base_lr)} {rule}"

    def to_json(self) -> dict:
        return {"model": self.model, "backend": self.backend, "variant": self.variant, "metric": self.metric,
                "effective_batch_sizes": self.effective_batch_sizes,
                "rows": [{"lr_scaling": rule, "base_lr": base, "cells": [
                    {"effective_batch_size": ebs, "lr": self.cells[(i, ebs)][3],
                     "mean": None if math.isnan(self.cells[(i, ebs)][0]) else self.cells[(i, ebs)][0],
                     "std": None if math.isnan(self.cells[(i, ebs)][1]) else self.cells[(i, ebs)][1],
                     "seeds": self.cells[(i, ebs)][2],
                     "diverged": self.cells[(i, ebs)][2] == 0 and (i, ebs) not in self.pruned,
                     "pruned": self.pruned.get((i, ebs), 0), "skipped": self.skipped.get((i, ebs), 0),
                     "best": self.best.get(ebs) == i}
                    for ebs in self.effective_batch_sizes if (i, ebs) in self.cells]}
                    for i, (rule, base) in enumerate(self.rows)]}


def lr_grids(data: RunData) -> list[LrGrid]:
    """One grid per series with an lr axis (some EBS trained at 2+ lrs), for `report`."""
    runs = data.runs
    grids = []
    for series, group in runs.groupby("series", sort=False):
        if not has_lr_grid(group, data.pruned):
            continue
        best = best_lrs(group, data.metric, data.diverged, data.pruned)
        blown = data.diverged[data.diverged["series"] == series]
        cut = data.pruned[data.pruned["series"] == series]
        rows = sorted({(rule, float(base)) for frame in (group, blown, cut)
                       for rule, base in zip(frame["lr_scaling"], frame["base_lr"])},
                      key=lambda r: (r[0] != "none", r[0], r[1]))
        index = {row: i for i, row in enumerate(rows)}
        cells = {}
        pruned: dict[tuple[int, int], int] = {}
        for run in (*blown.itertuples(), *cut.itertuples()):  # (NaN, NaN, 0 seeds): tried, and diverged or pruned
            cells[(index[(run.lr_scaling, float(run.base_lr))], int(run.effective_batch_size))] = (
                math.nan, math.nan, 0, float(run.lr))
        skipped: dict[tuple[int, int], int] = {}
        for run in cut.itertuples():
            where = (index[(run.lr_scaling, float(run.base_lr))], int(run.effective_batch_size))
            pruned[where] = pruned.get(where, 0) + 1
            skipped[where] = skipped.get(where, 0) + int(bool(run.skipped))
        for _, cell_runs in group.groupby("cell", sort=False):
            first = cell_runs.iloc[0]
            values = cell_runs[data.metric].astype(float)
            row = index[(first["lr_scaling"], float(first["base_lr"]))]
            cells[(row, int(first["effective_batch_size"]))] = (values.mean(), values.std(), len(values), float(first["lr"]))
        chosen = {}
        for b in best:
            first = group[group["cell"] == b.best.cell].iloc[0]
            chosen[b.effective_batch_size] = index[(first["lr_scaling"], float(first["base_lr"]))]
        first = group.iloc[0]
        # A grid under β/ε/wd rules is another series: its title says which.
        variant = ", ".join(part for part in (f"rules {first['optim_rules']}" if first["optim_rules"] else "",
                                              str(first["variant"])) if part)
        grids.append(LrGrid(str(first["model"]), str(first["backend"]), variant, data.metric, rows,
                            sorted(group["effective_batch_size"].astype(int).unique().tolist()), cells, chosen, pruned, skipped))
    return grids


def best_lr_cells(data: RunData) -> set[str]:
    """The cells that are their EBS's best lr on validation, in every series trained at two or more lrs."""
    return {b.best.cell for _, series in data.runs.groupby("series", sort=False) if has_lr_grid(series, data.pruned)
            for b in best_lrs(series, data.metric, data.diverged, data.pruned)}
