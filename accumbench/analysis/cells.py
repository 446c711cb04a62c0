"""Cells: the runs of one configuration (up to the seed) aggregated, the two backends set side by
side, and the series the figures draw.

    RunData -> one row per cell: mean and std over seeds of every metric, n      cell_table
            -> accelerate minus torch (config.BACKENDS), same cell and seed      backend_comparison
            -> epochs and steps labelled with their series, for the figures     plot_frames
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from accumbench.analysis.runs import AT_BEST_EPOCH, CELL_COLUMNS, NOISE_METRICS, RunData, cell_key, cell_label, varying
from accumbench.analysis.tuning import best_lr_cells, has_lr_grid
from accumbench.config import BACKENDS
from accumbench.formatting import format_lr
from accumbench.metrics import ACCURACY

# The per-run metrics aggregated over seeds (mean and std per cell): accuracy's with the best epoch and the
# best test accuracy beside it, then every other metric's at the best epoch (runs.AT_BEST_EPOCH), then cost.
METRICS = ("best_train_accuracy", "val_accuracy", "best_epoch", "test_accuracy", "best_test_accuracy",
           *(column for column in AT_BEST_EPOCH if column not in ACCURACY.columns), "train_seconds",
           "samples_per_second", "optimizer_steps", "peak_memory_mb", "noise_scale_first", "noise_scale_last")


def cell_table(data: RunData) -> pd.DataFrame:
    """One row per cell: mean and std over seeds of every metric, n and the seeds."""
    runs = data.runs
    group = runs.groupby("cell", sort=False)
    table = group[list(CELL_COLUMNS) + ["ebs_label", "variant", "shown_variant", "budget_text", "optim_rules", "optim_settings"]].first()
    table["n"] = group["run_id"].count()
    table["seeds"] = group["seed"].apply(lambda s: ",".join(map(str, sorted(s))))
    table["run_ids"] = group["run_id"].apply(lambda s: ",".join(map(str, sorted(s))))
    for metric in METRICS:
        table[f"{metric}_mean"] = group[metric].mean()
        table[f"{metric}_std"] = group[metric].std()  # NaN for one seed: no spread to report
    # Why a cell has no B_simple: the reason most of its seeds give (they share their config).
    for note in NOISE_METRICS.values():
        table[note] = group[note].agg(lambda notes: max(sorted(set(notes)), key=list(notes).count))
    # Each EBS's best lr, where it was trained at two or more (the row a reader of a grid looks for).
    best = best_lr_cells(data)
    table["best_lr"] = [cell in best for cell in table.index]
    # As the seed study's table reads: by model, then EBS, then lr.
    table = table.sort_values(["model", "effective_batch_size", "backend", "lr_scaling", "optim_rules", "variant", "lr"])
    table = table.reset_index(drop=True)
    table.attrs["metric"] = data.metric  # what the best epochs (and best lrs) were chosen on: the table leads with it
    return table


def backend_comparison(data: RunData) -> pd.DataFrame:
    """Cells that ran under both the reference backend (the first of config.BACKENDS, torch) and the next one
    (accelerate) with the same seed: the other minus the reference per metric, and the training-time ratio
    other/reference, averaged over the paired seeds."""
    reference, other = list(BACKENDS)[:2]
    runs = data.runs.copy()
    runs["pair"] = runs["config"].map(lambda c: cell_key(dataclasses.replace(c, backend=reference)))
    pivot = runs.pivot_table(index=["pair", "seed"], columns="backend",
                             values=["val_accuracy", "test_accuracy", "val_loss", "train_seconds"], aggfunc="first")
    columns = ["model", "effective_batch_size", "lr_scaling", "lr", "variant", "pairs", "val_accuracy_diff",
               "test_accuracy_diff", "val_loss_diff", "time_ratio"]
    if reference not in pivot.columns.get_level_values(1) or other not in pivot.columns.get_level_values(1):
        return pd.DataFrame(columns=columns)
    pivot = pivot.dropna(subset=[("val_accuracy", reference), ("val_accuracy", other)])
    diffs = pd.DataFrame({
        "val_accuracy_diff": pivot[("val_accuracy", other)] - pivot[("val_accuracy", reference)],
        "test_accuracy_diff": pivot[("test_accuracy", other)] - pivot[("test_accuracy", reference)],
        "val_loss_diff": pivot[("val_loss", other)] - pivot[("val_loss", reference)],
        "time_ratio": pivot[("train_seconds", other)] / pivot[("train_seconds", reference)],
    }).reset_index()
    if diffs.empty:
        return pd.DataFrame(columns=columns)
    out = diffs.groupby("pair").agg(pairs=("seed", "count"), val_accuracy_diff=("val_accuracy_diff", "mean"),
                                    test_accuracy_diff=("test_accuracy_diff", "mean"),
                                    val_loss_diff=("val_loss_diff", "mean"), time_ratio=("time_ratio", "mean"))
    names = runs.groupby("pair")[["model", "effective_batch_size", "lr_scaling", "lr", "variant"]].first()
    out = names.join(out, how="inner").sort_values(["model", "lr_scaling", "variant", "lr", "effective_batch_size"])
    return out.reset_index(drop=True)[columns]



def noise_per_run(data: RunData) -> pd.DataFrame:
    """Each run's B_simple in its first and last epoch, or why it has none."""
    columns = ["run_id", "model", "effective_batch_size", "backend", "seed", "noise_scale_first", "noise_scale_last",
               "noise_note_first", "noise_note_last"]
    return data.runs[columns].sort_values("run_id").reset_index(drop=True)



def _pruned_curves(data: RunData) -> pd.DataFrame:
    """The epochs of the runs racing stopped, as faded series of their own ('EBS 16 lr 1e-3 (pruned)'), each
    with the epoch it stopped after (pruned_at), where the validation figure marks it."""
    cut = data.pruned.set_index("run_id")
    if cut.empty or data.pruned_epochs.empty:
        return pd.DataFrame()
    frame = data.pruned_epochs[data.pruned_epochs["run_id"].isin(cut.index)].copy()
    for column in ("model", "seed", "effective_batch_size"):
        frame[column] = frame["run_id"].map(cut[column])
    frame["label"] = frame["run_id"].map(
        lambda run: f"EBS {cut.at[run, 'effective_batch_size']} lr {format_lr(cut.at[run, 'lr'])} (pruned)")
    frame["order"], frame["faded"] = 10**6, True
    frame["pruned_at"] = frame["run_id"].map(cut["pruned_epoch"])
    return frame


def plot_frames(store: Any, data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The epochs and steps of the runs, each row labelled with its series (one per cell of a model), and the
    runs racing pruned, faded, to where they stopped."""
    runs = data.runs
    labels = {}
    for _model, group in runs.groupby("model"):
        cells = group.drop_duplicates("cell").sort_values(["effective_batch_size", "lr_scaling", "lr", "backend", "variant"])
        vary = varying(group, ("lr_scaling", "optim_rules", "base_lr", "backend", "variant"))
        for order, row in enumerate(cells.to_dict("records")):
            labels[row["cell"]] = (cell_label(row, vary), order)
    keys = runs[["run_id", "model", "cell", "seed", "effective_batch_size"]].copy()
    keys["label"] = keys["cell"].map(lambda c: labels[c][0])
    keys["order"] = keys["cell"].map(lambda c: labels[c][1])
    # Where a model was trained at several lrs per EBS, the figures draw each EBS's best lr and fade the rest.
    best, gridded = best_lr_cells(data), {m for m, group in runs.groupby("model") if has_lr_grid(group, data.pruned)}
    keys["faded"] = [model in gridded and cell not in best for model, cell in zip(keys["model"], keys["cell"])]
    keys = keys.drop(columns="cell")
    epochs, cut = data.epochs.merge(keys, on="run_id"), _pruned_curves(data)
    if not cut.empty:  # concatenating an empty frame would loosen every column's dtype
        epochs = pd.concat([epochs, cut], ignore_index=True)
    steps = pd.DataFrame(store.steps_of(runs["run_id"].tolist()))
    steps = steps.merge(keys, on="run_id") if not steps.empty else pd.DataFrame(
        columns=["run_id", "model", "label", "order", "seed", "samples_seen", "loss", "faded"])
    return epochs, steps
