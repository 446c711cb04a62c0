"""`accumbench report`: the study from the run store (read-only), aggregated over seeds.

    ReportRequest (every option checked before anything is read)
      -> store, opened read-only -> analysis: runs -> cells, the backend comparison, the lr grids
      -> table | markdown | csv | json (tables.py) | html: the study page (study_page.py), with the
         pick per model as pick-best makes it and the figures (plots.py)
      -> the terminal, or -o FILE (written atomically; --watch rewrites it every N seconds)
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accumbench.analysis import answer, pick
from accumbench.analysis.cells import backend_comparison, cell_table, noise_per_run, plot_frames
from accumbench.analysis.critical_batch import curves_of
from accumbench.analysis.headline import headline
from accumbench.analysis.racing import race_summary
from accumbench.analysis.runs import NoRuns, count_running, load_predictions, load_runs
from accumbench.analysis.tuning import lr_grids
from accumbench.deficit import Margin
from accumbench.errors import UserError
from accumbench.files import check_output_file, write_text_aside
from accumbench.formatting import plain_number, unknown_choice
from accumbench.present import plots, study_page, tables
from accumbench.present.critical import FIGURE, critical_figure_png, curve_text
from accumbench.store import open_for_reading, portable_url, resolve_db_url
from accumbench.vocabulary import CURVES, FINISHED, FORMATS, STATUSES


@dataclass(frozen=True)
class ReportRequest:
    """What `accumbench report` was asked for; checked whole on creation (UserError), before any reading."""

    db: str | None = None
    sweep: str | None = None
    model: str | None = None
    backend: str | None = None
    status: str = FINISHED  # or 'any'
    fmt: str = "table"
    columns: str | None = None
    wide: bool = False
    output: Path | None = None
    plot: Path | None = None
    watch: float | None = None  # seconds between rewrites of the study page
    curves: str = "best"  # the learning curves: each EBS at its best lr (others faded), or all alike
    metric: str = "val_accuracy"  # each run's best epoch, each EBS's best lr and the page's pick are chosen on it
    margin: float | None = None  # the picks' margin (pick-best --margin); None: the metric's default

    def __post_init__(self) -> None:
        pick.check_metric(self.metric)
        pick.check_margin(self.margin, self.metric)
        if self.curves not in CURVES:
            raise UserError(unknown_choice("--curves", self.curves, CURVES))
        if self.fmt not in FORMATS:
            raise UserError(unknown_choice("--format", self.fmt, FORMATS))
        if self.status != "any" and self.status not in STATUSES:
            raise UserError(unknown_choice("--status", self.status, (*STATUSES, "any")))
        if self.columns is not None and self.wide:
            raise UserError("--columns picks columns and --wide shows them all; give one of them")
        if self.columns is not None:
            tables.choose_columns(None, self.columns)  # unknown names fail here, before any reading
        if self.output is not None:
            check_output_file(self.output, "--output", "study.html")
        if self.watch is not None:
            if not (self.watch > 0) or self.watch != self.watch:
                raise UserError(f"--watch takes a positive number of seconds, got {plain_number(self.watch)}; e.g. --watch 30")
            if self.fmt != "html" or self.output is None:
                raise UserError("--watch rewrites a study page: add --format html -o study.html")

    @property
    def filters(self) -> dict[str, str | None]:
        return dict(sweep=self.sweep, model=self.model, backend=self.backend)

    @property
    def page_label(self) -> str:
        """The database as the study page names it: the SQLite file's name, or the URL without its password
        (never this machine's path: the page is handed to others)."""
        return portable_url(resolve_db_url(self.db))


def build(store: Any, request: ReportRequest, width: int | None = None,
          refresh: int | None = None) -> tuple[str, dict[str, bytes]]:
    """The report from an open (read-only) store: the text in the request's format (table: for a terminal
    of `width` columns, None for a pipe; html: the study page, reloading every `refresh` s) and, for the
    page or for --plot, each figure's PNG by file name. The page picks per model as pick-best does."""
    status = None if request.status == "any" else request.status
    try:
        data = load_runs(store, status=status, metric=request.metric, **request.filters)
    except NoRuns as exc:
        if request.fmt != "html":
            raise
        why = str(exc).split(";")[0].replace(store.url, request.page_label)
        return study_page.empty_page(request.page_label, why, count_running(store, **request.filters), refresh), {}
    cells, comparison, grids = cell_table(data), backend_comparison(data), lr_grids(data)
    raced = tuple(race_summary(data))
    shown = tables.choose_columns(cells, request.columns, request.wide)
    title = (f"accumbench report: {len(data.runs)} runs in {len(cells)} cells"
             + (f", sweep {request.sweep}" if request.sweep else ""))
    picks, pngs, b_crit, headlines = [], {}, {}, ()
    if status == FINISHED and request.fmt in ("html", "table", "markdown") or request.plot is not None:
        if status == FINISHED:  # a pick is made among finished runs only, as pick-best makes it
            picks = pick.pick_best(data, load_predictions(store, data), metric=request.metric,
                                   evidence=Margin(request.margin))
    if request.fmt == "html" or request.plot is not None:
        b_crit = {str(p.chosen.runs["model"].iloc[0]): c.fit.b_crit for p in picks for c in p.critical
                  if c.fit is not None and c.fit.b_crit is not None}
        headlines = tuple(headline(p) for p in picks)
        pngs = {path.name: png for path, png in plots.figure_pngs(*plot_frames(store, data), lr_grids=grids,
                                                                    b_crit=b_crit, headlines=headlines,
                                                                    curves=request.curves,
                                                                    metric=request.metric).items()}
    curves = curves_of(store, data.runs["run_id"].astype(int).tolist())  # accumbench branch: the critical batch size
    if curves and (request.fmt == "html" or request.plot is not None) and (png := critical_figure_png(curves)):
        pngs[FIGURE] = png
    if request.fmt == "html":
        text = study_page.study_page(title=title.replace("accumbench report", "accumbench study"),
                                     db_label=request.page_label, cells=cells, comparison=comparison, data=data,
                                     picks=picks, grids=grids, figures=pngs, refresh=refresh, b_crit=b_crit,
                                     headlines=headlines, raced=raced, critical=tuple(curves))
    elif request.fmt == "table":
        text = tables.text_report(cells, comparison, title, shown, grids, width, raced) + _answers(picks, width)
        text += "\n" + curve_text(curves) if curves else ""
    else:
        text = tables.render(cells, comparison, request.fmt, title, shown, noise_per_run(data), grids, raced)
        text += _answers(picks) if request.fmt == "markdown" else ""
        text += f"\n```\n{curve_text(curves)}```\n" if curves and request.fmt == "markdown" else ""
    return text, pngs


def _answers(picks: list[Any], width: int | None = None) -> str:
    """Under the table: each pick in one sentence, and every other candidate's bound (what margin would take it),
    wrapped to the terminal's width (80 columns in a pipe: sentences wrap where a table's values may not)."""
    import textwrap

    def wrap(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, width or 80, initial_indent=indent, subsequent_indent=indent + "  ")

    lines = []
    for found in picks:
        lines += ["", *wrap(f"{found.group}: pick {answer.sentence(found)}")]
        lines += [wrapped for line in answer.bound_lines(found) for wrapped in wrap(line, "  ")]
    return "\n".join(lines) + ("\n" if lines else "")


def produce(request: ReportRequest, to_terminal: bool, refresh: float | None = None) -> tuple[str, list[Path]]:
    """The report as text in its format (also written to request.output, when given), and the figure files
    --plot wrote."""
    # A terminal splits a wider table into blocks of its width; a pipe or file gets whole lines.
    width = shutil.get_terminal_size().columns if to_terminal and sys.stdout.isatty() else None
    with open_for_reading(request.db) as store:
        text, pngs = build(store, request, width, None if refresh is None else max(1, round(refresh)))
    figures = [] if request.plot is None else plots.write_pngs(
        {request.plot / name: png for name, png in pngs.items()}, request.plot)
    if request.output is not None:
        write_text_aside(request.output, text, "--output")
    return text, figures


def watch_page(request: ReportRequest, echo: Callable[[str], Any]) -> None:
    """Rewrite the study page every request.watch seconds until Ctrl-C; the page reloads itself as often."""
    echo(f"watching: writing {request.output} every {request.watch:g} s; open it in a browser, Ctrl-C to stop")
    try:
        while True:
            produce(request, to_terminal=False, refresh=request.watch)
            time.sleep(request.watch)
    except KeyboardInterrupt:
        echo(f"stopped watching; {request.output} holds the last page")
