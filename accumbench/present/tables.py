"""The study's tables as people read them: the cell table, the lr x EBS grids and the backend
comparison, as text for a terminal or a pipe, markdown, CSV or JSON.

Every value is a string here, formatted once: the terminal, the markdown and the study page show the
same text. The default columns are the seed study's; --columns picks by name, --wide shows them all.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

import pandas as pd

from accumbench.analysis.runs import NOISE_METRICS, NOISE_NOTES
from accumbench.analysis.tuning import LrGrid
from accumbench.errors import UserError
from accumbench.formatting import did_you_mean, format_lr, format_seconds, short_model, spread
from accumbench.metrics import ACCURACY, SPLITS, TABLE, Metric
from accumbench.present import text_table
from accumbench.vocabulary import METRICS


def _mean_std(mean: float, std: float, digits: int, sep: str = " ± ") -> str:
    """'0.912 ± 0.003'; the mean alone with one seed. digits 0: an integer ('2', not '2.0')."""
    if pd.isna(mean):
        return "-"
    if digits == 0 and float(mean).is_integer() and (pd.isna(std) or std == 0):
        return f"{int(mean):,}"
    digits = max(digits, 1) if digits == 0 and not float(mean).is_integer() else digits
    return f"{mean:,.{digits}f}" if pd.isna(std) else f"{mean:,.{digits}f}{sep}{std:,.{digits}f}"


@dataclass(frozen=True)
class Column:
    """One column of the report for people: its --columns name, its heading, and how a cell reads."""

    name: str
    heading: str  # a line break makes a two-line heading in the terminal
    key: bool  # names the row: kept left, and repeated when a wide table is split
    text: Any  # cells DataFrame -> list of strings


def _metric(metric: str, digits: int, sep: str = "±") -> Any:
    return lambda cells: [_mean_std(m, s, digits, sep) for m, s in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]


def _metric_columns(metric: Metric) -> tuple[Column, Column]:
    """A metric's validation and test columns: 'val_f1' headed 'val F1\nmean±std' (the loss's: 'val\nloss')."""
    column = metric.label.lower().replace(" ", "_")
    return tuple(Column(f"{split}_{column}", f"{split} {metric.label}\nmean±std" if metric.spread_in_heading
                        else f"{split}\n{metric.label}", False, _metric(f"{split}_{metric.key}", metric.digits))
                 for split in SPLITS)


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
    Column("ebs", "EBS", True, lambda cells: [str(label) for label in cells["ebs_label"]]),
    Column("backend", "backend", True, lambda cells: cells["backend"].tolist()),
    Column("lr", "lr", True, lambda cells: [f"{format_lr(lr)}{' *' if best else ''}"
                                            for lr, best in zip(cells["lr"], cells["best_lr"])]),
    Column("lr_rule", "lr\nrule", True, lambda cells: cells["lr_scaling"].tolist()),
    # The other batch-size rules (β, ε, weight decay) and the values they gave, where they vary.
    Column("rules", "other\nrules", True, lambda cells: [rules or "none" for rules in cells["optim_rules"]]),
    Column("optim", "β1/β2/ε/wd", False, lambda cells: cells["optim_settings"].tolist()),
    Column("budget", "budget", True, lambda cells: cells["budget_text"].tolist()),
    Column("variant", "variant", True, lambda cells: cells["shown_variant"].tolist()),
    Column("n", "n", False, lambda cells: [str(int(v)) for v in cells["n"]]),
    Column("seeds", "seeds", False, lambda cells: cells["seeds"].tolist()),
    # Training accuracy is a running average over each epoch: context, so the mean alone (and 80 columns fit).
    Column("train_acc", "train\nacc", False,
           lambda cells: [_mean_std(m, float("nan"), 3) for m in cells["best_train_accuracy_mean"]]),
    # Every metric's validation and test columns (metrics.TABLE), accuracy's with the best epoch beside them;
    # '-' where runs were recorded before their metric was (F1 and MCC: before schema 7).
    *_metric_columns(ACCURACY),
    Column("best_epoch", "best\nepoch", False, _metric("best_epoch", 0)),
    Column("best_test_acc", "best test acc\n(picked on test)", False, _metric("best_test_accuracy", 3)),
    *(column for metric in TABLE if metric is not ACCURACY for column in _metric_columns(metric)),
    Column("time", "train\ntime", False, lambda cells: [format_seconds(v) for v in cells["train_seconds_mean"]]),
    Column("samples_per_s", "samples\nper s", False, _metric("samples_per_second", 1)),
    Column("steps", "optim\nsteps", False, _metric("optimizer_steps", 0)),
    Column("memory", "peak\nMB", False, _metric("peak_memory_mb", 0)),
    Column("b_simple_first", "B_simple\nepoch 1", False, _noise("noise_scale_first")),
    Column("b_simple_last", "B_simple\nlast epoch", False, _noise("noise_scale_last")),
)}
DEFAULT_COLUMNS = ("model", "ebs", "backend", "lr", "lr_rule", "rules", "optim", "budget", "variant", "n", "train_acc",
                   "val_acc", "test_acc", "time", "steps")
_WHERE_THEY_VARY = ("lr", "lr_rule", "rules", "optim", "budget", "variant")  # in the default only where cells differ in them
TABLE_NOTE = ("val and test acc at each run's best-validation epoch (test is read where validation chose), mean±std "
              "over the n seeds; train acc the best epoch's running average, mean over seeds; train time summed "
              "over epochs; optimizer steps in total")
# With --metric other than accuracy, its validation and test columns lead the table.
LEADING_COLUMNS = {metric.name: tuple(column.name for column in _metric_columns(metric))
                   for metric in TABLE if metric is not ACCURACY}
BEST_LR_NOTE = "; * marks each EBS's best lr on validation"


def table_note(cells: pd.DataFrame, columns: list[str]) -> str:
    """What the table means, with the best-lr mark explained where the lr column shows one."""
    metric = cells.attrs.get("metric", "val_accuracy")
    note = TABLE_NOTE if metric == "val_accuracy" else TABLE_NOTE.replace(
        "val and test acc at each run's best-validation epoch",
        f"every val and test number at each run's best epoch on {METRICS[metric]}")
    return note + (BEST_LR_NOTE if "lr" in columns and cells["best_lr"].any() else "")


def choose_columns(cells: pd.DataFrame, columns: str | None = None, wide: bool = False) -> list[str]:
    """The columns to show: --columns a,b (by name), --wide (all), or the seed study's default, where
    lr, lr rule, budget and variant appear only if the cells differ in them. UserError on an unknown name."""
    if wide:
        return list(COLUMNS)
    if columns is not None:
        names = [name.strip().replace("-", "_") for name in columns.split(",") if name.strip()]
        unknown = [name for name in names if name not in COLUMNS]
        if unknown or not names:
            raise UserError(f"unknown --columns {', '.join(map(repr, unknown)) or '(none given)'}; "
                            f"choose from: {', '.join(COLUMNS)}{did_you_mean(unknown[0], COLUMNS) if unknown else ''}")
        return names
    constant = {name for name in _WHERE_THEY_VARY if len(set(COLUMNS[name].text(cells))) < 2}
    leading = LEADING_COLUMNS.get(cells.attrs.get("metric", "val_accuracy"), ())
    order = [*DEFAULT_COLUMNS[: DEFAULT_COLUMNS.index("n") + 1], *leading,
             *(name for name in DEFAULT_COLUMNS[DEFAULT_COLUMNS.index("n") + 1 :] if name not in leading)]
    return [name for name in order if name not in constant]


def display_table(cells: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
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
    for _column, heading, text in (("lr_scaling", "lr\nrule", comparison["lr_scaling"]),
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
RACING_TITLE = "racing (sweep --race): the runs stopped early, and the training time that saved"


def lr_grid_title(grid: LrGrid) -> str:
    parts = [short_model(grid.model), grid.backend] + ([grid.variant] if grid.variant else [])
    return f"{', '.join(parts)}: {METRICS[grid.metric]}, lr x EBS (* best lr per EBS)"


def lr_grid_table(grid: LrGrid) -> pd.DataFrame:
    """Rows 'lr', one column per EBS: 'mean ± std (n)', '*' on each EBS's best, 'diverged', 'pruned' (racing
    stopped it), 'skipped' (racing never trained it), or '-'."""
    table = {"lr": [grid.row_label(*row) for row in grid.rows]}
    for ebs in grid.effective_batch_sizes:
        column = []
        for i in range(len(grid.rows)):
            if (i, ebs) not in grid.cells:
                column.append("-")
                continue
            mean, std, seeds, _ = grid.cells[(i, ebs)]
            pruned, skipped = grid.pruned.get((i, ebs), 0), grid.skipped.get((i, ebs), 0)
            if seeds == 0:
                column.append(("skipped" if skipped == pruned else "pruned") if pruned else "diverged")
                continue
            column.append(f"{mean:.3f}{spread(std, 3)} ({seeds}){' *' if grid.best.get(ebs) == i else ''}"
                          + (f" +{pruned} pruned" if pruned else ""))
        table[f"EBS {ebs}"] = column
    return pd.DataFrame(table)


def text_report(cells: pd.DataFrame, comparison: pd.DataFrame, title: str, columns: list[str],
                lr_grids: tuple[Any, ...] = (), width: int | None = None, raced: tuple[Any, ...] = ()) -> str:
    """`report` for a terminal (width: its columns; a wider table is split into blocks) or a pipe (None:
    one block, lines as long as they need): the cell table, what it means, the lr x EBS grids, the
    backend comparison. Every value is printed whole."""
    shown = display_table(cells, columns)
    prose = width or 80  # sentences are wrapped for reading; table lines never are
    parts = [title, _text(shown, [COLUMNS[c].key for c in columns], key_count(columns), width),
             textwrap.fill(table_note(cells, columns), prose)]
    if noise_footnote(cells) and any(c.startswith("b_simple") for c in columns):
        parts.append(textwrap.fill(noise_footnote(cells), prose))
    for grid in lr_grids:
        frame = lr_grid_table(grid)
        parts += ["", lr_grid_title(grid), _text(frame, [True] + [False] * (frame.shape[1] - 1), 1, width)]
    if raced:  # analysis.racing.race_summary: what sweep --race stopped, and what that saved
        parts += ["", RACING_TITLE, *(textwrap.fill(group.text, prose, subsequent_indent="  ") for group in raced)]
    compared = display_comparison(comparison)
    if not compared.empty:
        keys = sum(1 for c in compared.columns if c in ("model", "EBS", "lr\nrule", "lr", "variant"))
        parts += ["", COMPARISON_TITLE, _text(compared, [i < keys for i in range(compared.shape[1])], keys, width)]
    return "\n".join(part.rstrip("\n") for part in parts) + "\n"


def _text(frame: pd.DataFrame, left: list[bool], keys: int, width: int | None) -> str:
    return text_table.render(list(frame.columns), [list(map(str, row)) for row in frame.itertuples(index=False)],
                             left, keys, width)


def render(cells: pd.DataFrame, comparison: pd.DataFrame, fmt: str, title: str, columns: list[str],
           runs: pd.DataFrame | None = None, lr_grids: tuple[Any, ...] = (), raced: tuple[Any, ...] = ()) -> str:
    """The report as csv, json or markdown (`columns`: those of the table for people). `runs`
    (noise_per_run) adds each run's B_simple to the JSON; `lr_grids` (analysis.tuning.lr_grids) the lr x EBS
    tables of validation accuracy. CSV and JSON carry every column, unrounded."""
    if fmt == "csv":
        return cells.to_csv(index=False)
    if fmt == "json":
        payload = {"title": title, "cells": json.loads(cells.to_json(orient="records")),
                   "noise_scale_notes": {note: NOISE_NOTES[note] for note in _noise_notes(cells)},
                   "noise_scale_runs": [] if runs is None else json.loads(runs.to_json(orient="records")),
                   "backend_comparison": json.loads(comparison.to_json(orient="records")),
                   "lr_grids": [grid.to_json() for grid in lr_grids], "racing": [group.to_json() for group in raced]}
        return json.dumps(payload, indent=2) + "\n"
    if fmt == "markdown":
        shown, compared = display_table(cells, columns), display_comparison(comparison)
        footnote = noise_footnote(cells)
        text = f"# {title}\n\n{_markdown(shown)}\n\n{table_note(cells, columns)}\n" + (f"\n{footnote}\n" if footnote else "")
        for grid in lr_grids:
            text += f"\n## {lr_grid_title(grid)}\n\n{_markdown(lr_grid_table(grid))}\n"
        if raced:
            text += f"\n## {RACING_TITLE[0].upper()}{RACING_TITLE[1:]}\n\n" + "".join(f"- {g.text}\n" for g in raced)
        if not compared.empty:
            text += f"\n## {COMPARISON_TITLE[0].upper()}{COMPARISON_TITLE[1:]}\n\n{_markdown(compared)}\n"
        return text
    raise ValueError(f"render: unknown format {fmt!r}")


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional tabulate package)."""
    rows = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(str(c).replace("\n", " ") for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

