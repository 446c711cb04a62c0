"""`accumbench report`: the study's table from the run store, aggregated over seeds.

    store (read-only) -> one summary row per run (its best-validation epoch, totals)
      -> one row per cell (a configuration up to its seed), mean +- std over seeds, with n
      -> the backend comparison (the same cell and seed under torch and under accelerate)
      -> table | markdown | csv | json | html, and --plot figures

Selection is on validation: a run's "best epoch" is the one with the highest validation accuracy
(the run's recorded best_epoch), and its test accuracy is read at that epoch. The best test accuracy
over epochs is shown too, but only under a name that says it was chosen on the test set.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from accumbench.config import RunConfig, format_lr, rate_key
from accumbench.errors import UserError
from accumbench.noise_scale import measurable
from accumbench.progress import short_model
from accumbench.store import DIVERGED_PREFIX, FAILED
from accumbench import text_table

# The columns that name a cell in the study's table ("lr": the rate it trained with, runs.lr); any
# other setting that differs between cells is listed in a "variant" column rather than averaged over.
CELL_COLUMNS = ("model", "effective_batch_size", "backend", "lr_scaling", "lr")
_NOT_A_VARIANT = {*CELL_COLUMNS, "seed", "data_seed", "checkpoint", "checkpoint_dir"}  # "lr" here is the config's base rate

# The per-run metrics aggregated over seeds (mean and std per cell).
METRICS = ("best_train_accuracy", "val_accuracy", "best_epoch", "test_accuracy", "best_test_accuracy", "val_loss",
           "test_loss", "train_seconds", "samples_per_second", "optimizer_steps", "peak_memory_mb",
           "noise_scale_first", "noise_scale_last")
# Settings the report's budget column shows, and so its variant column does not repeat.
_BUDGET_SETTINGS = {"budget", "epochs", "train_steps"}
# Each B_simple column, and the column that says why a run has none there.
NOISE_METRICS = {"noise_scale_first": "noise_note_first", "noise_scale_last": "noise_note_last"}


class NoRuns(UserError):
    """Nothing to report: no run matches, or none finished an epoch. The study page says so instead."""


def cell_key(config: RunConfig) -> str:
    """A configuration up to its seed: the runs that are replicates of one another share it.
    (data_seed is kept apart from seed: a fixed split and a per-seed split are different cells.)"""
    unseeded = dataclasses.replace(config, seed=0, data_seed=None if config.data_seed is None else -1)
    return unseeded.config_hash


def lr_free_key(config: RunConfig) -> str:
    """A configuration up to its seed and its learning rate (and the rule that derived it): the cells
    among which the tuned protocol picks one EBS's best lr share it."""
    return cell_key(dataclasses.replace(config, lr=1.0, lr_scaling="none", base_batch_size=64))


def series_key(config: RunConfig) -> str:
    """lr_free_key up to the EBS as well: the cells of one lr x EBS grid, over which the lr scaling
    exponent is fitted."""
    return lr_free_key(dataclasses.replace(config, effective_batch_size=1, micro_batch_size=1))


@dataclass
class RunData:
    runs: pd.DataFrame  # one row per run: its columns, its config, and its summary metrics
    epochs: pd.DataFrame  # one row per (run, epoch)
    evals: pd.DataFrame  # one row per --eval-every evaluation (run, step)
    # Runs of the same filters whose loss diverged (FAILED, 'diverged at step S'): an lr that was tried
    # and blew up is evidence for the tuned protocol, though it has no metrics.
    diverged: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=DIVERGED_COLUMNS))


DIVERGED_COLUMNS = ["run_id", "lr", "base_lr", "lr_scaling", "lr_free", "series", "effective_batch_size"]


def noise_note(config: RunConfig, micro_batch_size: int, measured: bool, value: float) -> str:
    """Why a run's B_simple is missing, in a few words ('' when it has one). `micro_batch_size` is
    the run's recorded one (--micro-batch-size auto resolved; 0 if it never got that far)."""
    if measured:
        return "" if pd.notna(value) else "beyond resolution"  # EMA(|G|²) <= 0: noise swamps the signal
    if not config.noise_scale:
        return "off"
    if micro_batch_size and not measurable(config.effective_batch_size, micro_batch_size):
        return "k = 1"
    return "not recorded"  # e.g. a run recorded before accumbench measured it


# What each note means, for the sentence under the report's table.
NOISE_NOTES = {
    "k = 1": "one micro-batch per optimizer step gives one batch size, and the estimator needs two",
    "off": "trained with --no-noise-scale",
    "beyond resolution": "the |G|² average came out <= 0: the noise swamps the signal at these batch sizes",
    "not recorded": "recorded before accumbench measured the noise scale",
}


def load_runs(store: Any, *, sweep: Optional[str] = None, model: Optional[str] = None,
              backend: Optional[str] = None, status: Optional[str] = "FINISHED") -> RunData:
    """The runs that match, each summarised at its best-validation epoch. UserError if none does."""
    runs = store.find_runs(status=status, sweep=sweep, model=model, backend=backend)
    if not runs:
        filters = ", ".join(f"{k} {v}" for k, v in (("status", status), ("sweep", sweep), ("model", model),
                                                      ("backend", backend)) if v)
        known = ", ".join(s["name"] for s in store.list_sweeps()) or "none"
        raise NoRuns(f"no runs match ({filters}) in {store.url}; sweeps there: {known}")
    epochs = pd.DataFrame(store.epochs_of([r["id"] for r in runs]))
    frame = pd.DataFrame(runs).rename(columns={"id": "run_id"})
    configs = {row["id"]: RunConfig.from_dict(json.loads(row["config_json"])) for row in runs}
    frame["cell"] = frame["run_id"].map(lambda run_id: cell_key(configs[run_id]))
    frame["config"] = frame["run_id"].map(configs)
    # Derived from the config, also for runs recorded before these columns existed.
    frame["lr_scaling"] = frame["config"].map(lambda c: c.lr_scaling)
    frame["base_lr"] = frame["config"].map(lambda c: c.lr)
    frame["lr"] = frame["config"].map(lambda c: c.scaled_lr)
    frame["lr_free"] = frame["config"].map(lr_free_key)
    frame["series"] = frame["config"].map(series_key)

    if epochs.empty:
        raise NoRuns(f"the matching runs in {store.url} have no recorded epochs; nothing to report")
    per_run = epochs.groupby("run_id").agg(
        best_train_accuracy=("train_accuracy", "max"), best_test_accuracy=("test_accuracy", "max"),
        train_seconds=("train_seconds", "sum"), samples_seen=("samples_seen", "max"),
        optimizer_steps=("optimizer_steps", "max"), peak_memory_mb=("peak_memory_mb", "max"),
    )
    per_run["samples_per_second"] = per_run["samples_seen"] / per_run["train_seconds"]
    # B_simple of the first and the last epoch (noise_steps says whether it was measured at all).
    ordered = epochs.sort_values(["run_id", "epoch"])
    for name, keep in (("first", "first"), ("last", "last")):
        rows = ordered.drop_duplicates("run_id", keep=keep).set_index("run_id")
        per_run[f"noise_scale_{name}"] = rows["noise_scale"].astype(float)
        per_run[f"noise_measured_{name}"] = rows["noise_steps"].notna()
    at_best = epochs.merge(frame[["run_id", "best_epoch"]], left_on=["run_id", "epoch"],
                           right_on=["run_id", "best_epoch"])
    at_best = at_best.set_index("run_id")[["val_accuracy", "val_loss", "test_accuracy", "test_loss"]]
    frame = frame.join(per_run, on="run_id").join(at_best, on="run_id")
    frame = frame[frame["best_epoch"].notna()]  # e.g. a FAILED run that never finished an epoch
    if frame.empty:
        raise NoRuns(f"none of the matching runs in {store.url} finished an epoch; nothing to report")
    frame["variant"] = _variants(frame)
    frame["shown_variant"] = _variants(frame, frozenset(_BUDGET_SETTINGS))  # the budget has a column of its own
    frame["budget_text"] = frame["config"].map(
        lambda c: f"{c.train_steps} steps" if c.budget == "steps" else f"{c.epochs} epoch{'s' if c.epochs != 1 else ''}")
    for which in ("first", "last"):
        frame[f"noise_note_{which}"] = [
            noise_note(config, int(micro), measured, value) for config, micro, measured, value in zip(
                frame["config"], frame["micro_batch_size"], frame[f"noise_measured_{which}"],
                frame[f"noise_scale_{which}"])]
    evals = pd.DataFrame(store.evals_of(frame["run_id"].tolist()),
                         columns=["run_id", "step", "epoch", "samples_seen", "val_loss", "val_accuracy"])
    return RunData(frame.reset_index(drop=True), epochs, evals,
                   _diverged(store, sweep=sweep, model=model, backend=backend))


def _diverged(store: Any, **filters: Any) -> pd.DataFrame:
    """The diverged runs among those the filters match, keyed like the finished ones."""
    rows = []
    for run in store.find_runs(status=FAILED, **filters):
        if (run["error"] or "").startswith(DIVERGED_PREFIX):
            config = RunConfig.from_dict(json.loads(run["config_json"]))
            rows.append(dict(run_id=run["id"], lr=config.scaled_lr, base_lr=config.lr, lr_scaling=config.lr_scaling,
                             lr_free=lr_free_key(config), series=series_key(config),
                             effective_batch_size=config.effective_batch_size))
    return pd.DataFrame(rows, columns=DIVERGED_COLUMNS)


def _variants(frame: pd.DataFrame, leave_out: frozenset[str] = frozenset()) -> pd.Series:
    """For each run, the settings (other than the cell columns, the seed and `leave_out`) that differ
    between the cells being reported, e.g. 'dropout=0.2, epochs=3'; empty when they differ in nothing else."""
    settings = {run_id: {k: v for k, v in dataclasses.asdict(c).items() if k not in _NOT_A_VARIANT | leave_out}
                for run_id, c in zip(frame["run_id"], frame["config"])}
    keys = sorted({k for s in settings.values() for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]
    return frame["run_id"].map(lambda run_id: ", ".join(f"{k}={settings[run_id][k]}" for k in varying))


def cell_table(data: RunData) -> pd.DataFrame:
    """One row per cell: mean and std over seeds of every metric, n and the seeds."""
    runs = data.runs
    group = runs.groupby("cell", sort=False)
    table = group[list(CELL_COLUMNS) + ["variant", "shown_variant", "budget_text"]].first()
    table["n"] = group["run_id"].count()
    table["seeds"] = group["seed"].apply(lambda s: ",".join(map(str, sorted(s))))
    table["run_ids"] = group["run_id"].apply(lambda s: ",".join(map(str, sorted(s))))
    for metric in METRICS:
        table[f"{metric}_mean"] = group[metric].mean()
        table[f"{metric}_std"] = group[metric].std()  # NaN for one seed: no spread to report
    # Why a cell has no B_simple: the reason most of its seeds give (they share their config).
    for note in NOISE_METRICS.values():
        table[note] = group[note].agg(lambda notes: max(sorted(set(notes)), key=list(notes).count))
    table = table.sort_values(["model", "lr_scaling", "backend", "variant", "lr", "effective_batch_size"])
    return table.reset_index(drop=True)


def backend_comparison(data: RunData) -> pd.DataFrame:
    """Cells that ran under both backends with the same seed: accelerate minus torch per metric, and
    the training-time ratio accelerate/torch, averaged over the paired seeds."""
    runs = data.runs.copy()
    runs["pair"] = runs["config"].map(lambda c: cell_key(dataclasses.replace(c, backend="torch")))
    pivot = runs.pivot_table(index=["pair", "seed"], columns="backend",
                             values=["val_accuracy", "test_accuracy", "val_loss", "train_seconds"], aggfunc="first")
    columns = ["model", "effective_batch_size", "lr_scaling", "lr", "variant", "pairs", "val_accuracy_diff",
               "test_accuracy_diff", "val_loss_diff", "time_ratio"]
    if "torch" not in pivot.columns.get_level_values(1) or "accelerate" not in pivot.columns.get_level_values(1):
        return pd.DataFrame(columns=columns)
    pivot = pivot.dropna(subset=[("val_accuracy", "torch"), ("val_accuracy", "accelerate")])
    diffs = pd.DataFrame({
        "val_accuracy_diff": pivot[("val_accuracy", "accelerate")] - pivot[("val_accuracy", "torch")],
        "test_accuracy_diff": pivot[("test_accuracy", "accelerate")] - pivot[("test_accuracy", "torch")],
        "val_loss_diff": pivot[("val_loss", "accelerate")] - pivot[("val_loss", "torch")],
        "time_ratio": pivot[("train_seconds", "accelerate")] / pivot[("train_seconds", "torch")],
    }).reset_index()
    if diffs.empty:
        return pd.DataFrame(columns=columns)
    out = diffs.groupby("pair").agg(pairs=("seed", "count"), val_accuracy_diff=("val_accuracy_diff", "mean"),
                                    test_accuracy_diff=("test_accuracy_diff", "mean"),
                                    val_loss_diff=("val_loss_diff", "mean"), time_ratio=("time_ratio", "mean"))
    names = runs.groupby("pair")[["model", "effective_batch_size", "lr_scaling", "lr", "variant"]].first()
    out = names.join(out, how="inner").sort_values(["model", "lr_scaling", "variant", "lr", "effective_batch_size"])
    return out.reset_index(drop=True)[columns]


# --- rendering -----------------------------------------------------------------------------------


def _mean_std(mean: float, std: float, digits: int, sep: str = " ± ") -> str:
    """'0.912 ± 0.003'; the mean alone with one seed. digits 0: an integer ('2', not '2.0')."""
    if pd.isna(mean):
        return "-"
    if digits == 0 and float(mean).is_integer() and (pd.isna(std) or std == 0):
        return f"{int(mean):,}"
    digits = max(digits, 1) if digits == 0 and not float(mean).is_integer() else digits
    return f"{mean:,.{digits}f}" if pd.isna(std) else f"{mean:,.{digits}f}{sep}{std:,.{digits}f}"


def format_seconds(seconds: float) -> str:
    """A training time as people read it: 42s, 12m05s, 1h02m."""
    if pd.isna(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass(frozen=True)
class Column:
    """One column of the report for people: its --columns name, its heading, and how a cell reads."""

    name: str
    heading: str  # a line break makes a two-line heading in the terminal
    key: bool  # names the row: kept left, and repeated when a wide table is split
    text: Any  # cells DataFrame -> list of strings


def _metric(metric: str, digits: int, sep: str = "±") -> Any:
    return lambda cells: [_mean_std(m, s, digits, sep) for m, s in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]


def _noise(metric: str) -> Any:
    """B_simple, or why a cell has none: '- (k = 1)'."""
    def text(cells: pd.DataFrame) -> list[str]:
        values = _metric(metric, 1)(cells)
        return [f"- ({note})" if pd.isna(m) and note else value
                for m, note, value in zip(cells[f"{metric}_mean"], cells[NOISE_METRICS[metric]], values)]
    return text


# Every column of `report` for people, in order. The default is the seed study's table; --columns
# picks by name, --wide shows them all. Accuracies and losses are read at each run's best-validation
# epoch and given as mean ± std over the seeds.
COLUMNS = {c.name: c for c in (
    Column("model", "model", True, lambda cells: cells["model"].map(short_model).tolist()),
    Column("ebs", "EBS", True, lambda cells: [str(int(v)) for v in cells["effective_batch_size"]]),
    Column("backend", "backend", True, lambda cells: cells["backend"].tolist()),
    Column("lr", "lr", True, lambda cells: cells["lr"].map(format_lr).tolist()),
    Column("lr_rule", "lr\nrule", True, lambda cells: cells["lr_scaling"].tolist()),
    Column("budget", "budget", True, lambda cells: cells["budget_text"].tolist()),
    Column("variant", "variant", True, lambda cells: cells["shown_variant"].tolist()),
    Column("n", "n", False, lambda cells: [str(int(v)) for v in cells["n"]]),
    Column("seeds", "seeds", False, lambda cells: cells["seeds"].tolist()),
    # Training accuracy is a running average over each epoch: context, so the mean alone (and 80 columns fit).
    Column("train_acc", "train\nacc", False,
           lambda cells: [_mean_std(m, float("nan"), 3) for m in cells["best_train_accuracy_mean"]]),
    Column("val_acc", "val acc\nmean±std", False, _metric("val_accuracy", 3)),
    Column("test_acc", "test acc\nmean±std", False, _metric("test_accuracy", 3)),
    Column("best_epoch", "best\nepoch", False, _metric("best_epoch", 0)),
    Column("best_test_acc", "best test acc\n(picked on test)", False, _metric("best_test_accuracy", 3)),
    Column("val_loss", "val\nloss", False, _metric("val_loss", 4)),
    Column("test_loss", "test\nloss", False, _metric("test_loss", 4)),
    Column("time", "train\ntime", False, lambda cells: [format_seconds(v) for v in cells["train_seconds_mean"]]),
    Column("samples_per_s", "samples\nper s", False, _metric("samples_per_second", 1)),
    Column("steps", "optim\nsteps", False, _metric("optimizer_steps", 0)),
    Column("memory", "peak\nMB", False, _metric("peak_memory_mb", 0)),
    Column("b_simple_first", "B_simple\nepoch 1", False, _noise("noise_scale_first")),
    Column("b_simple_last", "B_simple\nlast epoch", False, _noise("noise_scale_last")),
)}
DEFAULT_COLUMNS = ("model", "ebs", "backend", "lr", "lr_rule", "budget", "variant", "n", "train_acc", "val_acc",
                   "test_acc", "time", "steps")
_WHERE_THEY_VARY = ("lr", "lr_rule", "budget", "variant")  # in the default only where cells differ in them
TABLE_NOTE = ("val and test acc at each run's best-validation epoch (test is read where validation chose), mean±std "
              "over the n seeds; train acc the best epoch's running average, mean over seeds; train time summed "
              "over epochs; optimizer steps in total")


def choose_columns(cells: pd.DataFrame, columns: Optional[str] = None, wide: bool = False) -> list[str]:
    """The columns to show: --columns a,b (by name), --wide (all), or the seed study's default, where
    lr, lr rule, budget and variant appear only if the cells differ in them. UserError on an unknown name."""
    if wide:
        return list(COLUMNS)
    if columns is not None:
        names = [name.strip().replace("-", "_") for name in columns.split(",") if name.strip()]
        unknown = [name for name in names if name not in COLUMNS]
        if unknown or not names:
            raise UserError(f"unknown --columns {', '.join(map(repr, unknown)) or '(none given)'}; "
                            f"choose from: {', '.join(COLUMNS)}")
        return names
    constant = {name for name in _WHERE_THEY_VARY if len(set(COLUMNS[name].text(cells))) < 2}
    return [name for name in DEFAULT_COLUMNS if name not in constant]


def display_table(cells: pd.DataFrame, columns: Optional[list[str]] = None) -> pd.DataFrame:
    """The cell table as text for people, one string per value; headings may hold a line break."""
    names = columns if columns is not None else choose_columns(cells)
    return pd.DataFrame({COLUMNS[name].heading: COLUMNS[name].text(cells) for name in names})


def key_count(columns: list[str]) -> int:
    """How many of the leading columns name the row (repeated in each block of a split table)."""
    return next((i for i, name in enumerate(columns) if not COLUMNS[name].key), len(columns))


def _noise_notes(cells: pd.DataFrame) -> list[str]:
    return [note for note in dict.fromkeys(n for column in NOISE_METRICS.values() for n in cells[column]) if note]


def noise_footnote(cells: pd.DataFrame) -> str:
    """One sentence per reason a B_simple is missing from the table, e.g. 'k = 1: one micro-batch ...'."""
    return "; ".join(f"B_simple {note}: {NOISE_NOTES[note]}" for note in _noise_notes(cells))


def display_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """accelerate against torch per cell (same seeds): metric differences and the training-time ratio."""
    keys = {"model": comparison["model"].map(short_model), "EBS": comparison["effective_batch_size"].astype(str)}
    for column, heading, text in (("lr_scaling", "lr\nrule", comparison["lr_scaling"]),
                                  ("lr", "lr", comparison["lr"].map(format_lr)), ("variant", "variant", comparison["variant"])):
        if text.nunique() > 1:
            keys[heading] = text
    return pd.DataFrame({
        **keys, "seed\npairs": comparison["pairs"].astype(str),
        "val acc\naccel-torch": comparison["val_accuracy_diff"].map(lambda v: f"{v:+.4f}"),
        "test acc\naccel-torch": comparison["test_accuracy_diff"].map(lambda v: f"{v:+.4f}"),
        "val loss\naccel-torch": comparison["val_loss_diff"].map(lambda v: f"{v:+.2e}"),
        "train time\naccel/torch": comparison["time_ratio"].map(lambda v: f"{v:.3f}"),
    })


COMPARISON_TITLE = "backends: accelerate against torch, same cell and seed"
FORMATS = ("table", "markdown", "csv", "json", "html")


def noise_per_run(data: RunData) -> pd.DataFrame:
    """Each run's B_simple in its first and last epoch, or why it has none."""
    columns = ["run_id", "model", "effective_batch_size", "backend", "seed", "noise_scale_first", "noise_scale_last",
               "noise_note_first", "noise_note_last"]
    return data.runs[columns].sort_values("run_id").reset_index(drop=True)


def text_report(cells: pd.DataFrame, comparison: pd.DataFrame, title: str, columns: list[str],
                lr_grids: tuple[Any, ...] = (), width: Optional[int] = None) -> str:
    """`report` for a terminal (width: its columns; a wider table is split into blocks) or a pipe (None:
    one block, lines as long as they need): the cell table, what it means, the lr x EBS grids, the
    backend comparison. Every value is printed whole."""
    shown = display_table(cells, columns)
    prose = width or 80  # sentences are wrapped for reading; table lines never are
    parts = [title, _text(shown, [COLUMNS[c].key for c in columns], key_count(columns), width),
             textwrap.fill(TABLE_NOTE, prose)]
    if noise_footnote(cells) and any(c.startswith("b_simple") for c in columns):
        parts.append(textwrap.fill(noise_footnote(cells), prose))
    for grid in lr_grids:
        frame = grid.display()
        parts += ["", grid.title, _text(frame, [True] + [False] * (frame.shape[1] - 1), 1, width)]
    compared = display_comparison(comparison)
    if not compared.empty:
        keys = sum(1 for c in compared.columns if c in ("model", "EBS", "lr\nrule", "lr", "variant"))
        parts += ["", COMPARISON_TITLE, _text(compared, [i < keys for i in range(compared.shape[1])], keys, width)]
    return "\n".join(part.rstrip("\n") for part in parts) + "\n"


def _text(frame: pd.DataFrame, left: list[bool], keys: int, width: Optional[int]) -> str:
    return text_table.render(list(frame.columns), [list(map(str, row)) for row in frame.itertuples(index=False)],
                             left, keys, width)


def render(cells: pd.DataFrame, comparison: pd.DataFrame, fmt: str, title: str, columns: list[str],
           runs: Optional[pd.DataFrame] = None, lr_grids: tuple[Any, ...] = ()) -> str:
    """The report as csv, json or markdown (`columns`: those of the table for people). `runs`
    (noise_per_run) adds each run's B_simple to the JSON; `lr_grids` (tuning.lr_grids) the lr x EBS
    tables of validation accuracy. CSV and JSON carry every column, unrounded."""
    if fmt == "csv":
        return cells.to_csv(index=False)
    if fmt == "json":
        payload = {"title": title, "cells": json.loads(cells.to_json(orient="records")),
                   "noise_scale_notes": {note: NOISE_NOTES[note] for note in _noise_notes(cells)},
                   "noise_scale_runs": [] if runs is None else json.loads(runs.to_json(orient="records")),
                   "backend_comparison": json.loads(comparison.to_json(orient="records")),
                   "lr_grids": [grid.to_json() for grid in lr_grids]}
        return json.dumps(payload, indent=2) + "\n"
    if fmt == "markdown":
        shown, compared = display_table(cells, columns), display_comparison(comparison)
        footnote = noise_footnote(cells)
        text = f"# {title}\n\n{_markdown(shown)}\n\n{TABLE_NOTE}\n" + (f"\n{footnote}\n" if footnote else "")
        for grid in lr_grids:
            text += f"\n## {grid.title}\n\n{_markdown(grid.display())}\n"
        if not compared.empty:
            text += f"\n## {COMPARISON_TITLE[0].upper()}{COMPARISON_TITLE[1:]}\n\n{_markdown(compared)}\n"
        return text
    raise ValueError(f"render: unknown format {fmt!r}")


def build(store: Any, *, fmt: str, db_label: str, sweep: Optional[str] = None, model: Optional[str] = None,
          backend: Optional[str] = None, status: Optional[str] = "FINISHED", columns: Optional[str] = None,
          wide: bool = False, figures: bool = False, width: Optional[int] = None,
          refresh: Optional[int] = None) -> tuple[str, dict[str, bytes]]:
    """`accumbench report` from an open (read-only) store: the text in `fmt` (table: for a terminal of
    `width` columns, None for a pipe; html: the study page, reloading every `refresh` s) and, for the page
    or when `figures`, each figure's PNG by file name. The page picks per model as pick-best does; the
    imports are here, not at the top, because pick and tuning build on this module."""
    try:
        data = load_runs(store, sweep=sweep, model=model, backend=backend, status=status)
    except NoRuns as exc:
        if fmt != "html":
            raise
        from accumbench.study_page import empty_page

        running = len(store.find_runs(status="RUNNING", sweep=sweep, model=model, backend=backend))
        return empty_page(db_label, str(exc).split(";")[0], running, refresh), {}
    from accumbench.tuning import lr_grids

    cells, comparison, grids = cell_table(data), backend_comparison(data), lr_grids(data)
    shown = choose_columns(cells, columns, wide)
    title = f"accumbench report: {len(data.runs)} runs in {len(cells)} cells" + (f", sweep {sweep}" if sweep else "")
    picks, pngs = [], {}
    if fmt == "html" or figures:
        from accumbench import pick
        from accumbench.plots import figure_pngs

        # A pick is made among finished runs only, as pick-best makes it.
        if status == "FINISHED":
            run_ids = data.runs["run_id"].tolist()
            predictions = {split: store.predictions(run_ids, split) for split in ("validation", "test")}
            picks = pick.pick_best(data, predictions)
        b_crit = {str(p.chosen.runs["model"].iloc[0]): c.fit.b_crit for p in picks for c in p.critical
                  if c.fit is not None and c.fit.b_crit is not None}
        pngs = {path.name: png for path, png in figure_pngs(*plot_frames(store, data), lr_grids=grids,
                                                              b_crit=b_crit).items()}
    if fmt == "html":
        from accumbench.study_page import study_page

        text = study_page(title=title.replace("accumbench report", "accumbench study"), db_label=db_label,
                          cells=cells, comparison=comparison, data=data, picks=picks, grids=grids, figures=pngs,
                          refresh=refresh)
    elif fmt == "table":
        text = text_report(cells, comparison, title, shown, grids, width)
    else:
        text = render(cells, comparison, fmt, title, shown, noise_per_run(data), grids)
    return text, pngs


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional tabulate package)."""
    rows = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(str(c).replace("\n", " ") for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def varying(runs: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The columns among `columns` whose value differs between the runs. A base lr counts only where
    the rate trained with differs too: one rate reached from several base rates by a rule is one lr."""
    def varies(column: str) -> bool:
        if column == "base_lr" and runs["lr"].map(rate_key).nunique() < 2:
            return False
        return runs[column].nunique() > 1

    return [c for c in columns if varies(c)]


def cell_label(run: dict[str, Any], vary: list[str]) -> str:
    """A cell named for people: 'EBS 256', plus the values of the columns that vary, e.g. 'EBS 256 sqrt'.
    A varying base lr shows as the rate the cell trained with: 'EBS 256 lr 3e-4'."""
    parts = [f"lr {format_lr(run['lr'])}" if c == "base_lr" else str(run[c]) for c in vary if run[c]]
    return " ".join([f"EBS {run['effective_batch_size']}", *parts])


# --- figures -------------------------------------------------------------------------------------


def plot_frames(store: Any, data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The epochs and steps of the runs, each row labelled with its series (one per cell of a model)."""
    runs = data.runs
    labels = {}
    for model, group in runs.groupby("model"):
        cells = group.drop_duplicates("cell").sort_values(["effective_batch_size", "lr_scaling", "lr", "backend", "variant"])
        vary = varying(group, ("lr_scaling", "base_lr", "backend", "variant"))
        for order, row in enumerate(cells.to_dict("records")):
            labels[row["cell"]] = (cell_label(row, vary), order)
    keys = runs[["run_id", "model", "cell", "seed", "effective_batch_size"]].copy()
    keys["label"] = keys["cell"].map(lambda c: labels[c][0])
    keys["order"] = keys["cell"].map(lambda c: labels[c][1])
    keys = keys.drop(columns="cell")
    epochs = data.epochs.merge(keys, on="run_id")
    steps = pd.DataFrame(store.steps_of(runs["run_id"].tolist()))
    steps = steps.merge(keys, on="run_id") if not steps.empty else pd.DataFrame(
        columns=["run_id", "model", "label", "order", "seed", "samples_seen", "loss"])
    return epochs, steps
