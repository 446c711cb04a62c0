"""`accumbench report --format html`: one self-contained page with the answer first and the evidence under it.

    the pick per model and its justification in words        analysis.pick (validation only)
    the study table (the seed study's columns), every column a click away (<details>)
    validation accuracy and loss per epoch, training loss     plots.py (the figures of --plot, as inline PNG)
    accuracy against training time, the noise scale per epoch beside the EBS tried and B_crit
    the lr x EBS heatmap and table (with an lr grid), accelerate against torch (when both ran)
    each run's configuration, versions and device             (<details>)

No script, no network: figures are PNG data URIs and the style is inline, so the file can be mailed,
archived or opened offline. With --watch the page carries a refresh header and is rewritten in place
(atomically: a reloading browser never reads half a page).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from typing import Any

from accumbench.analysis import answer
from accumbench.formatting import format_lr, portable, short_group, short_model, unique_slugs
from accumbench.present import tables
from accumbench.present.critical import FIGURE, curve_text
from accumbench.vocabulary import METRICS, curve_metric

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;text-align:right;white-space:nowrap}
th{border-bottom:1px solid #999;vertical-align:bottom}tr:nth-child(even) td{background:#f6f6f6}
td.key,th.key{text-align:left}tr.best td{font-weight:bold}
.pick{border-left:4px solid #2a7;padding:.3em 1em;margin:1em 0;background:#f3fbf6}
.pick .answer{font-size:1.25em;font-weight:bold}
.warning{color:#a60}.note{color:#555;font-size:.9em}
figure{margin:1em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
details{margin:.5em 0}summary{cursor:pointer;color:#246}
pre{font-size:.8em;background:#f6f6f6;padding:.5em;overflow-x:auto}
"""


HEADLINE_CAPTION = ("each EBS at its best lr, in its colour in every figure of this page: its deficit to the best in "
                    "{metric}, with the deficit's {confidence} confidence bounds (the seeds' spread and the validation "
                    "examples together); dashed, the margin of {margin}; filled, the EBS shown within it (hollow, the "
                    "others); starred, the pick, the cheapest of the filled; below, what it minimised, so that the "
                    "lowest filled bar is the pick's: {cost}; over each bar, its training time as measured (mean over "
                    "seeds)")
# What the cost panel draws, by the headline's cost_basis (analysis/headline.py, after cost.py).
COST_IN_WORDS = {"samples": "samples trained, a count the same on every machine (within 2% a tie, broken by the fewest "
                            "optimizer steps)",
                 "steps": "optimizer steps, a count the same on every machine (their samples tied, within 2%)",
                 "clock": "training seconds per sample, as measured: the clock decided, far beyond its spread over seeds"}


def headline_caption(headlines: list[Any]) -> str:
    """A model's headline caption: what its panels draw, with the margin, the bound's confidence and the cost
    each pick minimised (one phrase per kind of cost its panels draw)."""
    first = headlines[0]
    cost = "; or ".join(COST_IN_WORDS[basis] for basis in dict.fromkeys(h.cost_basis for h in headlines))
    return HEADLINE_CAPTION.format(metric=METRICS[first.metric], confidence=f"{first.confidence:.0%}",
                                   margin=first.margin_words, cost=cost)


# The gradient noise scale in two plain sentences, under the pick's "why".
NOISE_SCALE_IN_WORDS = ("B_simple, the gradient noise scale, is the batch size at which the noise in a batch's gradient "
                        "is about as large as the gradient itself. Batches much smaller than it spend optimizer steps "
                        "on noise; batches much larger spend samples averaging away noise that is already small.")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(frame: Any, keys: int = 0, bold: list[bool] | None = None) -> str:
    """A DataFrame of display strings as an HTML table; the first `keys` columns left-aligned; the rows where
    `bold` is true in bold (each EBS's best lr)."""
    head = "".join(f"<th class='key'>{_e(c).replace(chr(10), '<br>')}</th>" if i < keys
                   else f"<th>{_e(c).replace(chr(10), '<br>')}</th>" for i, c in enumerate(frame.columns))
    marks = bold or [False] * len(frame)
    rows = "".join(("<tr class='best'>" if mark else "<tr>")
                   + "".join(f"<td class='key'>{_e(v)}</td>" if i < keys else f"<td>{_e(v)}</td>"
                             for i, v in enumerate(row)) + "</tr>"
                   for row, mark in zip(frame.itertuples(index=False), marks))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(alt)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _page(title: str, body: list[str], refresh: int | None) -> str:
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else ""
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"{meta}<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _stamp(db_label: str, refresh: int | None) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    again = f"; rewritten every {refresh} s while `report --watch` runs, and this page reloads itself" if refresh else ""
    return f"<p class='note'>from {_e(db_label)}, written {now}{_e(again)}</p>"


def _caption(kind: str, runs: Any, b_crit: float | None, metric: str = "val_accuracy") -> str:
    """What one figure draws, said from what it holds: a band only where some series has two seeds or more,
    B_crit only where it was fitted; the validation metric the page was chosen on."""
    drawn = curve_metric(metric)[1]  # the curves draw it beside the loss
    seeds = int(runs.groupby("cell")["seed"].nunique().max()) if len(runs) else 0
    over_seeds = "; the band spans the seeds" if seeds > 1 else " (one seed per series: no band)"
    if kind == "validation":
        return f"{drawn} and validation loss per epoch, one line per series{over_seeds}"
    if kind == "train-loss":
        return ("training loss per optimizer step against samples seen (smoothed)"
                + (", mean over seeds" if seeds > 1 else ""))
    if kind == "time":
        return f"{drawn} at each epoch's end against the training time so far: which EBS gets there first"
    if kind == "noise-scale":
        crit = f" and B_crit ≈ {b_crit:.3g} (red)" if b_crit is not None else " (no critical batch size was fitted)"
        return f"B_simple per epoch (log scale) beside the EBS tried (grey){crit}"
    return f"mean {METRICS[metric]} per lr and EBS; the box marks each EBS's best lr"


def empty_page(db_label: str, why: str, running: int, refresh: int | None = None) -> str:
    """A database with no finished run yet: the page says so (and, watching, keeps looking)."""
    live = f" {running} run{'s are' if running != 1 else ' is'} RUNNING." if running else ""
    body = ["<h1>accumbench study</h1>", _stamp(db_label, refresh),
            f"<p id='empty'>No finished run to show yet: {_e(why)}.{_e(live)}</p>"]
    return _page("accumbench study: no finished run yet", body, refresh)


def _pick_block(index: int, pick: Any) -> str:
    """One pick on the page: the answer in one sentence, what stands behind it, and the evidence under "why"."""
    low, high = pick.test_ci
    lines = [f"<p class='answer'>{_e(short_group(pick.group))}: pick {_e(answer.sentence(pick))}</p>",
             f"<p>Chosen on validation ({_e(pick.protocol)} protocol; as good as the best means shown within "
             f"{_e(pick.evidence.words(pick.metric))} of it, at {pick.evidence.confidence:.0%} confidence). Test accuracy "
             f"{pick.test_accuracy:.4f}, 95% CI [{low:.4f}, {high:.4f}] on {pick.test_examples} examples x "
             f"{len(pick.chosen.runs)} seed(s)"
             + ("" if pick.test_score is None else f"; test {METRICS[pick.metric].removeprefix('validation ')} "
                                                   f"{pick.test_score:.4f}")
             + ": reported, never used to choose.</p>"]
    lines.append("<ul class='bounds'>" + "".join(f"<li>{_e(line)}</li>" for line in answer.bound_lines(pick)) + "</ul>")
    lines += [f"<p class='note'>another signal: {_e(line)}</p>" for line in pick.reconciled]
    lines += [f"<p class='warning'>warning: {_e(w)}</p>" for w in pick.warnings]
    why = [f"{pick.justification}."] + [fit.text for fit in pick.scaling]
    why += ([pick.noise.text, NOISE_SCALE_IN_WORDS] if pick.noise else []) + [c.text for c in pick.critical]
    lines.append("<details class='why'><summary>why</summary>"
                 + "".join(f"<p class='note'>{_e(text)}</p>" for text in why) + "</details>")
    return f"<div class='pick' id='pick-{index}'>" + "".join(lines) + "</div>"


def _table_section(cells: Any) -> list[str]:
    """The study table with the default columns, and every column one click away."""
    default = tables.choose_columns(cells)
    every = tables.choose_columns(cells, wide=True)
    section = ["<section id='table'><h2>The study table</h2>",
               _table(tables.display_table(cells, default), tables.key_count(default), cells["best_lr"].tolist()),
               f"<p class='note'>{_e(tables.table_note(cells, default))}</p>",
               "<details><summary>all columns</summary>",
               _table(tables.display_table(cells, every), tables.key_count(every), cells["best_lr"].tolist())]
    footnote = tables.noise_footnote(cells)
    if footnote:
        section.append(f"<p class='note'>{_e(footnote)}</p>")
    return section + ["</details></section>"]


def _critical_section(critical: tuple[Any, ...], figures: dict[str, bytes]) -> list[str]:
    """accumbench branch's curves: the critical batch size along training, beside B_simple (none: nothing)."""
    if not critical:
        return []
    section = ["<section id='critical-batch'><h2>The critical batch size along training</h2>"]
    if FIGURE in figures:
        section.append(_figure(figures[FIGURE], FIGURE, "B_crit from short branches at several EBS from each saved "
                               "state (the largest EBS within the tolerance of the smallest's loss), beside B_simple "
                               "measured from the micro-batches at the same points."))
    return section + [f"<pre>{html.escape(curve_text(critical), quote=False)}</pre>", "</section>"]


def study_page(*, title: str, db_label: str, cells: Any, comparison: Any, data: Any, picks: list[Any],
               grids: list[Any], figures: dict[str, bytes], refresh: int | None = None,
               b_crit: dict[str, float] | None = None, headlines: tuple[Any, ...] = (), raced: tuple[Any, ...] = (),
               critical: tuple[Any, ...] = ()) -> str:
    """The study page. `figures` maps plots.py's file names ('<slug>-validation.png', ...) to PNG bytes."""
    body = [f"<h1>{_e(title)}</h1>", _stamp(db_label, refresh), "<section id='picks'>"]
    body += [_pick_block(index, pick) for index, pick in enumerate(picks)]
    models = {slug: model for model, slug in unique_slugs(sorted(map(str, data.runs["model"].unique()))).items()}
    for name, png in figures.items():  # the answer at a glance, under the answers in words
        if name.endswith("-headline.png"):
            model = models.get(name.removesuffix("-headline.png"), "")  # drawn from these headlines (plots.py)
            body.append(_figure(png, name, headline_caption([h for h in headlines if h.model == model])))
    body.append("</section>")

    body += _table_section(cells)

    sections = (("curves", "Learning curves", ("validation", "train-loss")),
                ("efficiency", "Accuracy against training time", ("time",)),
                ("noise", "The gradient noise scale", ("noise-scale",)),
                ("lr-grid", "Learning rate x EBS", ("lr-grid",)))
    for section, heading, kinds in sections:
        found = [(name, png, kind) for kind in kinds for name, png in figures.items() if name.endswith(f"-{kind}.png")]
        if not found and not (section == "lr-grid" and grids):
            continue
        body.append(f"<section id='{section}'><h2>{heading}</h2>")
        for name, png, kind in found:
            model = models.get(name.removesuffix(f"-{kind}.png"), "")
            body.append(_figure(png, name, _caption(kind, data.runs[data.runs["model"].astype(str) == model],
                                                    (b_crit or {}).get(model), data.metric)))
        if section == "lr-grid":
            for grid in grids:
                body += [f"<p>{_e(tables.lr_grid_title(grid))}</p>", _table(tables.lr_grid_table(grid), 1)]
        body.append("</section>")
    body += _critical_section(critical, figures)
    if raced:  # the curves mark where each pruned run stopped (x); here, why and what it saved
        body += [f"<section id='racing'><h2>{_e(tables.RACING_TITLE.capitalize())}</h2>",
                 *(f"<p class='note'>{_e(group.text)}</p>" for group in raced), "</section>"]

    compared = tables.display_comparison(comparison)
    if not compared.empty:
        keys = sum(1 for c in compared.columns if c in ("model", "EBS", "lr\nrule", "lr", "variant"))
        body += ["<section id='backends'><h2>Accelerate against torch</h2>",
                 "<p>The same cell and seed under both backends: metric differences accelerate - torch, and the "
                 "training-time ratio.</p>", _table(compared, keys), "</section>"]

    runs = data.runs.sort_values("run_id")
    rows = []
    for run in runs.itertuples():
        # Local paths (the model's directory, the data file) by their last component: the page travels.
        config = json.dumps({k: portable(v) for k, v in json.loads(run.config_json).items()}, indent=1,
                            sort_keys=True)
        rows.append(f"<details><summary>run {run.run_id}: {_e(short_model(run.model))}, EBS "
                    f"{run.effective_batch_size}, {_e(run.backend)}, lr {format_lr(run.lr)}, seed {run.seed}</summary>"
                    f"<p class='note'>device {_e(run.device)}; torch {_e(run.torch_version)}, transformers "
                    f"{_e(run.transformers_version)}, accelerate {_e(run.accelerate_version)}; precision "
                    f"{_e(run.precision)}; {_e(run.num_train_samples)}/{_e(run.num_val_samples)}/"
                    f"{_e(run.num_test_samples)} train/val/test; started {_e(run.started_at)}, finished "
                    f"{_e(run.finished_at)}</p><pre>{html.escape(config, quote=False)}</pre></details>")
    body += ["<section id='runs'><h2>Runs</h2><details><summary>each run's configuration, versions and device "
             f"({len(rows)} runs)</summary>", *rows, "</details></section>"]
    return _page(title, body, refresh)
