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
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from accumbench.config import RunConfig, format_lr, rate_key
from accumbench.errors import UserError
from accumbench.noise_scale import measurable
from accumbench.progress import short_model
from accumbench.store import DIVERGED_PREFIX, FAILED

# The columns that name a cell in the study's table ("lr": the rate it trained with, runs.lr); any
# other setting that differs between cells is listed in a "variant" column rather than averaged over.
CELL_COLUMNS = ("model", "effective_batch_size", "backend", "lr_scaling", "lr")
_NOT_A_VARIANT = {*CELL_COLUMNS, "seed", "data_seed", "checkpoint"}  # "lr" here is the config's base rate

# (column, heading): the per-run metrics aggregated over seeds.
METRICS = {
    "best_train_accuracy": "best train acc",
    "val_accuracy": "best val acc",
    "best_epoch": "best val epoch",
    "test_accuracy": "test acc at best val",
    "best_test_accuracy": "best test acc (picked on test)",
    "val_loss": "val loss",
    "test_loss": "test loss",
    "train_seconds": "train time s",
    "samples_per_second": "samples/s",
    "optimizer_steps": "optim steps",
    "peak_memory_mb": "peak memory MB",
    "noise_scale_first": "B_simple epoch 1",
    "noise_scale_last": "B_simple last epoch",
}
# Each B_simple column, and the column that says why a run has none there.
NOISE_METRICS = {"noise_scale_first": "noise_note_first", "noise_scale_last": "noise_note_last"}


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
        raise UserError(f"no runs match ({filters}) in {store.url}; sweeps there: {known}")
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
        raise UserError(f"the matching runs in {store.url} have no recorded epochs; nothing to report")
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
        raise UserError(f"none of the matching runs in {store.url} finished an epoch; nothing to report")
    frame["variant"] = _variants(frame)
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


def _variants(frame: pd.DataFrame) -> pd.Series:
    """For each run, the settings (other than the cell columns and the seed) that differ between the
    cells being reported, e.g. 'lr=0.0001, epochs=3'; empty when the cells differ in nothing else."""
    settings = {run_id: {k: v for k, v in dataclasses.asdict(c).items() if k not in _NOT_A_VARIANT}
                for run_id, c in zip(frame["run_id"], frame["config"])}
    keys = sorted({k for s in settings.values() for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]
    return frame["run_id"].map(lambda run_id: ", ".join(f"{k}={settings[run_id][k]}" for k in varying))


def cell_table(data: RunData) -> pd.DataFrame:
    """One row per cell: mean and std over seeds of every metric, n and the seeds."""
    runs = data.runs
    group = runs.groupby("cell", sort=False)
    table = group[list(CELL_COLUMNS) + ["variant"]].first()
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


def _mean_std(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


_DIGITS = {"best_epoch": 1, "train_seconds": 0, "samples_per_second": 1, "optimizer_steps": 0, "peak_memory_mb": 0,
           "noise_scale_first": 1, "noise_scale_last": 1}


def display_table(cells: pd.DataFrame) -> pd.DataFrame:
    """The cell table as text for people: 'mean ± std' (std left out for one seed)."""
    shown = pd.DataFrame({"model": cells["model"].map(short_model), "EBS": cells["effective_batch_size"], "backend": cells["backend"],
                          "lr rule": cells["lr_scaling"], "lr": cells["lr"].map(format_lr)})
    if cells["variant"].astype(bool).any():
        shown["variant"] = cells["variant"]
    shown["seeds (n)"] = [f"{s} ({n})" for s, n in zip(cells["seeds"], cells["n"])]
    for metric, heading in METRICS.items():
        shown[heading] = [_mean_std(m, s, _DIGITS.get(metric, 4))
                          for m, s in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]
    for metric, note_column in NOISE_METRICS.items():  # a missing B_simple says why
        heading = METRICS[metric]
        shown[heading] = [f"- ({note})" if pd.isna(m) and note else text
                          for m, note, text in zip(cells[f"{metric}_mean"], cells[note_column], shown[heading])]
    return shown


def _noise_notes(cells: pd.DataFrame) -> list[str]:
    return [note for note in dict.fromkeys(n for column in NOISE_METRICS.values() for n in cells[column]) if note]


def noise_footnote(cells: pd.DataFrame) -> str:
    """One sentence per reason a B_simple is missing from the table, e.g. 'k = 1: one micro-batch ...'."""
    return "; ".join(f"B_simple {note}: {NOISE_NOTES[note]}" for note in _noise_notes(cells))


def display_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": comparison["model"].map(short_model), "EBS": comparison["effective_batch_size"], "lr rule": comparison["lr_scaling"],
        "lr": comparison["lr"].map(format_lr),
        **({"variant": comparison["variant"]} if comparison["variant"].astype(bool).any() else {}),
        "seed pairs": comparison["pairs"],
        "val acc accelerate-torch": comparison["val_accuracy_diff"].map(lambda v: f"{v:+.4f}"),
        "test acc accelerate-torch": comparison["test_accuracy_diff"].map(lambda v: f"{v:+.4f}"),
        "val loss accelerate-torch": comparison["val_loss_diff"].map(lambda v: f"{v:+.2e}"),
        "train time accelerate/torch": comparison["time_ratio"].map(lambda v: f"{v:.3f}"),
    })


FORMATS = ("table", "markdown", "csv", "json", "html")


def noise_per_run(data: RunData) -> pd.DataFrame:
    """Each run's B_simple in its first and last epoch, or why it has none."""
    columns = ["run_id", "model", "effective_batch_size", "backend", "seed", "noise_scale_first", "noise_scale_last",
               "noise_note_first", "noise_note_last"]
    return data.runs[columns].sort_values("run_id").reset_index(drop=True)


def render(cells: pd.DataFrame, comparison: pd.DataFrame, fmt: str, title: str,
           runs: Optional[pd.DataFrame] = None, lr_grids: tuple[Any, ...] = ()) -> str:
    """The report as text in one of FORMATS (table is rendered by the CLI with rich). `runs`
    (noise_per_run) adds each run's B_simple to the JSON; `lr_grids` (tuning.lr_grids) the lr x EBS
    tables of validation accuracy."""
    if fmt == "csv":
        return cells.to_csv(index=False)
    if fmt == "json":
        payload = {"title": title, "cells": json.loads(cells.to_json(orient="records")),
                   "noise_scale_notes": {note: NOISE_NOTES[note] for note in _noise_notes(cells)},
                   "noise_scale_runs": [] if runs is None else json.loads(runs.to_json(orient="records")),
                   "backend_comparison": json.loads(comparison.to_json(orient="records")),
                   "lr_grids": [grid.to_json() for grid in lr_grids]}
        return json.dumps(payload, indent=2) + "\n"
    shown, compared = display_table(cells), display_comparison(comparison)
    footnote = noise_footnote(cells)
    if fmt == "markdown":
        text = f"# {title}\n\n{_markdown(shown)}\n" + (f"\n{footnote}\n" if footnote else "")
        for grid in lr_grids:
            text += f"\n## {grid.title}\n\n{_markdown(grid.display())}\n"
        if not compared.empty:
            text += f"\n## Backends: accelerate against torch, same cell and seed\n\n{_markdown(compared)}\n"
        return text
    if fmt == "html":
        parts = [f"<h1>{_escape(title)}</h1>", shown.to_html(index=False, border=0)]
        if footnote:
            parts.append(f"<p>{_escape(footnote)}</p>")
        for grid in lr_grids:
            parts += [f"<h2>{_escape(grid.title)}</h2>", grid.display().to_html(index=False, border=0)]
        if not compared.empty:
            parts += ["<h2>Backends: accelerate against torch, same cell and seed</h2>",
                      compared.to_html(index=False, border=0)]
        style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}"
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + _escape(title) +
                f"</title><style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    raise ValueError(f"render: unknown format {fmt!r}")


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional tabulate package)."""
    rows = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
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
    keys = runs[["run_id", "model", "cell", "seed"]].copy()
    keys["label"] = keys["cell"].map(lambda c: labels[c][0])
    keys["order"] = keys["cell"].map(lambda c: labels[c][1])
    keys = keys.drop(columns="cell")
    epochs = data.epochs.merge(keys, on="run_id")
    steps = pd.DataFrame(store.steps_of(runs["run_id"].tolist()))
    steps = steps.merge(keys, on="run_id") if not steps.empty else pd.DataFrame(
        columns=["run_id", "model", "label", "order", "seed", "samples_seen", "loss"])
    return epochs, steps
