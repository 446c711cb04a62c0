"""Figures of recorded runs, for `report --plot` (PNG files) and the study page (the same PNGs inline), per
model: <slug>-headline.png (each EBS at its best lr, and what it cost), -validation.png (accuracy, or F1/MCC,
and loss per epoch), -time.png (the same against training time), -train-loss.png (per optimizer step),
-noise-scale.png (B_simple, the EBS tried, B_crit) and -lr-grid.png (the validation metric by lr and EBS).

Each series is one label (an EBS, with its LR rule), drawn as the mean over its runs (one run per
seed) with a shaded min-max band where it has two or more. Non-finite values (a diverged run's NaN
or inf) are dropped point by point: a diverged run is a result to show, not a reason to crash.

matplotlib (the extra `accumbench[plot]`) and pandas are imported inside the functions, so that
`accumbench --help` stays fast. Figures use `Figure` and the Agg canvas directly, not pyplot: no global
backend switch, no figure registry to leak into, and safe from threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from accumbench.errors import UserError
from accumbench.formatting import format_lr, short_group, short_model, spread, unique_slugs
from accumbench.metrics import named
from accumbench.vocabulary import METRICS, curve_metric

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
MISSING = "--plot needs matplotlib; pip install 'accumbench[plot]'"


def _require_matplotlib() -> None:
    # The top-level package first: a missing (or blocked) matplotlib fails here, with the fix.
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UserError(MISSING) from exc


def _finite(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    import numpy as np

    values = frame[column].astype(float)
    return frame[np.isfinite(values)].assign(**{column: values})


def _label_order(*frames: pd.DataFrame) -> list[str]:
    """Every label, sorted by its `order` (then name): the legend order, and the colour index, so a
    label has the same colour in every figure of one call."""
    import pandas as pd

    rows = pd.concat([f[["label", "order"]] for f in frames if not f.empty])
    if rows.empty:
        return []
    first = rows.groupby("label")["order"].min()
    return sorted(first.index, key=lambda label: (first[label], label))


def _band(ax: Axes, x, stats: pd.DataFrame, style, label: str, marker: str | None = None) -> None:
    """The mean as a line, and the min-max band around it where more than one run contributes. `style` is
    (colour, line style), or None for a faded series: thin, grey, no band and no legend entry."""
    if style is None:
        ax.plot(x, stats["mean"], color="#bbb", linewidth=0.8, alpha=0.8, zorder=1)
        return
    color, linestyle = style
    ax.plot(x, stats["mean"], color=color, linestyle=linestyle, label=label, marker=marker, markersize=4, zorder=2)
    if (stats["count"] > 1).any():
        ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)


def _styles(frames: list[pd.DataFrame], labels: list[str], curves: str, palette) -> dict[str, tuple | None]:
    """Each label's style. curves 'best': one colour per EBS in every figure, a line style per series of one
    EBS (backends, rules), and None (faded) for a lr that is not its EBS's best; 'all': a colour per label."""
    known = [f[["label", "effective_batch_size", "faded"]] for f in frames
             if not f.empty and {"effective_batch_size", "faded"} <= set(f)]
    if curves == "all" or not known:  # (frames without EBS and fading: a colour per label too)
        return {label: (palette(i % palette.N), "-") for i, label in enumerate(labels)}
    import pandas as pd

    rows = pd.concat(known).drop_duplicates("label").set_index("label")
    sizes = sorted({int(v) for v in rows["effective_batch_size"]})
    styles: dict[str, tuple | None] = {}
    per_ebs: dict[int, int] = {}
    for label in labels:
        if bool(rows.at[label, "faded"]):
            styles[label] = None
            continue
        ebs = int(rows.at[label, "effective_batch_size"])
        dash = ("-", "--", ":", "-.")[per_ebs.get(ebs, 0) % 4]
        per_ebs[ebs] = per_ebs.get(ebs, 0) + 1
        styles[label] = (palette(sizes.index(ebs) % palette.N), dash)
    return styles


def _seed_phrase(frame: pd.DataFrame) -> str:
    per_label = frame.groupby("label")["run_id"].nunique()
    low, high = int(per_label.min()), int(per_label.max())
    count = f"{low}" if low == high else f"{low}-{high}"
    band = ", band: min-max" if high > 1 else ""
    return f"mean over {count} seed{'s' if high > 1 else ''}{band}"


def _validation_figure(model: str, frame: pd.DataFrame, labels: list[str], colors, metric: str = "val_accuracy"
                       ) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4.2), dpi=DPI, layout="tight")
    axes = fig.subplots(1, 2)
    for ax, (column, name) in zip(axes, (curve_metric(metric), ("val_loss", "validation loss"))):
        points = _finite(frame, column)
        for label in (lab for lab in labels if lab in set(points["label"])):
            # Mean over the runs that have a finite value at that epoch: a run that diverged in
            # epoch 3 still counts in epochs 1 and 2.
            stats = points[points["label"] == label].groupby("epoch")[column].agg(["mean", "min", "max", "count"])
            _band(ax, stats.index, stats, colors[label], label, marker="o")
        stops = points[points["epoch"] == points["pruned_at"]] if "pruned_at" in points else points.iloc[:0]
        if not stops.empty:  # racing stopped these runs here (sweep --race)
            ax.scatter(stops["epoch"], stops[column], marker="x", color="#c0392b", zorder=3, label="pruned (racing)")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(title="series", fontsize="small")
    fig.suptitle(f"{short_model(model)}: validation per epoch ({_seed_phrase(frame)})")
    return fig


def _smoothed_mean(frame: pd.DataFrame) -> pd.DataFrame:
    """One label's training loss: each run smoothed by a centred rolling mean (window ~1/20 of its
    steps: per-step losses are noisy), then the runs averaged on the union of their samples_seen
    grid. A run is interpolated only inside its own span, never extrapolated, so a run that
    diverged early stops counting where its finite losses stop."""
    import numpy as np
    import pandas as pd

    curves = {}
    for run_id, run in frame.groupby("run_id"):
        run = run.sort_values("samples_seen")
        window = max(1, len(run) // 20)
        loss = run["loss"].rolling(window, center=True, min_periods=1).mean()
        curves[run_id] = (run["samples_seen"].to_numpy(float), loss.to_numpy(float))
    grid = np.unique(np.concatenate([x for x, _ in curves.values()]))
    on_grid = pd.DataFrame({run_id: np.interp(grid, x, y, left=np.nan, right=np.nan)
                            for run_id, (x, y) in curves.items()}, index=grid)
    return pd.DataFrame({"mean": on_grid.mean(axis=1), "min": on_grid.min(axis=1),
                         "max": on_grid.max(axis=1), "count": on_grid.count(axis=1)})


def _train_loss_figure(model: str, frame: pd.DataFrame, labels: list[str], colors) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="tight")
    ax = fig.subplots()
    for label in (lab for lab in labels if lab in set(frame["label"])):
        stats = _smoothed_mean(frame[frame["label"] == label])
        _band(ax, stats.index, stats, colors[label], label)
    ax.set(xlabel="samples seen", ylabel="training loss (per optimizer step)",
           title=f"{short_model(model)}: training loss (smoothed; {_seed_phrase(frame)})")
    ax.xaxis.set_major_formatter(EngFormatter())  # 12k, not 12000 or an offset
    ax.grid(alpha=0.3)
    ax.legend(title="series", fontsize="small")
    return fig


def _time_figure(model: str, frame: pd.DataFrame, labels: list[str], colors, metric: str = "val_accuracy") -> Figure:
    """Validation accuracy (F1, MCC where chosen on them) against training time (summed over epochs), one line
    per series: which EBS gets where first, the efficiency the seed study asked about."""
    from matplotlib.figure import Figure

    metric, name = curve_metric(metric)
    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="tight")
    ax = fig.subplots()
    points = _finite(frame, metric).sort_values(["run_id", "epoch"])
    points = points.assign(elapsed=points.groupby("run_id")["train_seconds"].cumsum())
    for label in (lab for lab in labels if lab in set(points["label"])):
        by_epoch = points[points["label"] == label].groupby("epoch")
        stats = by_epoch[metric].agg(["mean", "min", "max", "count"])
        _band(ax, by_epoch["elapsed"].mean(), stats, colors[label], label, marker="o")
    ax.set(xlabel="training time, s (summed over epochs; mean over seeds)", ylabel=name,
           title=f"{short_model(model)}: {name} against training time ({_seed_phrase(frame)})")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(title="series", fontsize="small")
    return fig


def _noise_figure(model: str, frame: pd.DataFrame, labels: list[str], colors, b_crit: float | None) -> Figure:
    """B_simple per epoch per series on a log scale, beside the EBS tried (grey lines) and B_crit (red,
    where a fit gave one): batch sizes far below B_simple waste steps, far above it waste samples."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="tight")
    ax = fig.subplots()
    points = _finite(frame, "noise_scale")
    points = points[points["noise_scale"] > 0]
    for label in (lab for lab in labels if lab in set(points["label"])):
        stats = points[points["label"] == label].groupby("epoch")["noise_scale"].agg(["mean", "min", "max", "count"])
        _band(ax, stats.index, stats, colors[label], label, marker="o")
    for ebs in sorted(set(frame["effective_batch_size"].astype(int))):
        ax.axhline(ebs, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"EBS {ebs}", (1, ebs), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize="x-small", color="grey")
    if b_crit is not None:
        ax.axhline(b_crit, color="red", linestyle="--", linewidth=1.5, label=f"B_crit ≈ {b_crit:.3g}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="B_simple (gradient noise scale)",
           title=f"{short_model(model)}: the gradient noise scale per epoch beside the EBS tried")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="series", fontsize="small")
    return fig


def _lr_grid_figure(model: str, grids: list) -> Figure:
    """One heatmap per grid (backend, variant) of a model: rows the lrs tried, columns the EBS, colour the
    mean validation accuracy, each cell annotated; a box marks each EBS's best lr."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    width = sum(1.2 + 1.1 * len(g.effective_batch_sizes) for g in grids) + 1.5
    height = 1.6 + 0.55 * max(len(g.rows) for g in grids)
    fig = Figure(figsize=(max(width, 5.0), max(height, 3.0)), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    values = [v[0] for g in grids for v in g.cells.values() if v[2]]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    image = None
    for ax, grid in zip(axes, grids):
        matrix = np.full((len(grid.rows), len(grid.effective_batch_sizes)), np.nan)
        for col, ebs in enumerate(grid.effective_batch_sizes):
            for row in range(len(grid.rows)):
                mean, std, seeds, _ = grid.cells.get((row, ebs), (np.nan, np.nan, -1, np.nan))
                if seeds > 0:
                    matrix[row, col] = mean
                text = "" if seeds < 0 else "diverged" if seeds == 0 else (
                    f"{mean:.3f}" + spread(std, 3, "\n±") + f"\nn={seeds}")
                ax.text(col, row, text, ha="center", va="center", fontsize="small")
        image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9,
                          aspect="auto", origin="lower", alpha=0.85)
        for ebs, row in grid.best.items():
            col = grid.effective_batch_sizes.index(ebs)
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        ax.set_xticks(range(len(grid.effective_batch_sizes)), [str(e) for e in grid.effective_batch_sizes])
        ax.set_yticks(range(len(grid.rows)), [grid.row_label(*r) for r in grid.rows])
        ax.set(xlabel="effective batch size", ylabel="learning rate",
               title=", ".join([grid.backend] + ([grid.variant] if grid.variant else [])))
    name = METRICS[grids[0].metric]
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=f"{name} (mean over seeds)")
    fig.suptitle(f"{short_model(model)}: {name} by lr and EBS (red box: the best lr of each EBS)")
    return fig


def _headline_figure(model: str, headlines: list) -> Figure:
    """The answer at a glance, one column per pick of the model (one per backend where both ran): above, what
    pick-best's verdict rests on: each EBS's deficit to the best (its best lr printed by the point) with the
    deficit's confidence bounds, the margin as a line, the EBS shown within it in green and the pick starred;
    below, what each EBS cost to train (mean seconds, with its optimizer steps)."""
    from matplotlib.figure import Figure

    from accumbench.analysis.headline import drawable

    fig = Figure(figsize=(max(6.0, 5.2 * len(headlines)), 5.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(headlines), squeeze=False, sharex="col", height_ratios=(3, 1.3))
    for column, headline in enumerate(headlines):
        top, bottom = axes[0][column], axes[1][column]
        points = headline.points
        xs = [p.effective_batch_size for p in points]
        metric = named(headline.metric)
        scale = 100.0  # hundredths, as the axis's unit says: points of accuracy, F1 or MCC, or % of the best's loss
        top.axhline(0.0, color="#444", linewidth=0.8)
        top.axhline(headline.margin * scale, color="#d62", linestyle="--", linewidth=1.2,
                    label=f"margin: {headline.margin_words}")
        for p in points:
            color = "#2a7" if p.as_good else "#888"
            y = p.deficit * scale if drawable(p.deficit) else 0.0
            high = p.high * scale if drawable(p.high) else top.get_ylim()[1]
            low = p.low * scale if drawable(p.low) else y
            top.errorbar([p.effective_batch_size], [y], yerr=[[max(0.0, y - low)], [max(0.0, high - y)]], fmt="o",
                         color=color, capsize=4, markersize=6)
            top.annotate(f"lr {format_lr(p.lr)}", (p.effective_batch_size, y), textcoords="offset points",
                         xytext=(8, -3), fontsize="small")
        picked = [p for p in points if p.picked]
        top.plot([p.effective_batch_size for p in picked], [p.deficit * scale for p in picked], marker="*",
                 markersize=18, color="#d62", linestyle="none",
                 label=f"the pick: EBS {picked[0].effective_batch_size}" if picked else None)
        top.plot([], [], "o", color="#2a7", label="shown within the margin")
        top.errorbar([], [], yerr=[], fmt="o", color="#888", capsize=4,
                     label=f"deficit, bars to its one-sided {headline.confidence:.0%} bounds")
        # One panel: the figure's title names the model already. Worse is down, as on a score axis.
        unit = metric.unit
        top.set(title=short_group(headline.group) if len(headlines) > 1 else None,
                ylabel=f"deficit to the best ({unit})")
        top.invert_yaxis()
        top.margins(y=0.12)
        top.legend(fontsize="small", loc="best")
        top.grid(alpha=0.3)
        bottom.bar(xs, [p.train_seconds for p in points], width=[x * 0.35 for x in xs], color="#8ab")
        for p in points:
            bottom.annotate(f"{p.optimizer_steps:,.0f} steps", (p.effective_batch_size, p.train_seconds),
                            textcoords="offset points", xytext=(0, 2), ha="center", fontsize="x-small")
        bottom.set(xscale="log", xlabel="effective batch size", ylabel="train seconds",
                   ylim=(0, 1.3 * max((p.train_seconds for p in points), default=1.0) or 1.0))
        bottom.set_xticks(xs, [str(x) for x in xs])
        bottom.set_xlim(min(xs) / 1.8, max(xs) * 1.8)  # room for the lr labels right of the last point
        bottom.minorticks_off()
        bottom.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{short_model(model)}: each EBS at its best lr, behind the best on validation, and its cost",
                 fontsize="medium")
    return fig


def build_figures(epochs: pd.DataFrame, steps: pd.DataFrame, out_dir: Path, lr_grids: tuple = (),
                  b_crit: dict[str, float] | None = None, headlines: tuple = (), curves: str = "best",
                  metric: str = "val_accuracy") -> dict[Path, Figure]:
    """The figures of figure_pngs, keyed by their path, in a stable order: models sorted, and
    for each its validation figure, its training-loss figure (left out without finite steps), its
    accuracy against training time, its noise-scale figure (left out where nothing measured it; with
    B_crit from `b_crit`, model -> value, where fitted), then its lr x EBS heatmap (with an lr grid:
    analysis.tuning.lr_grids)."""
    _require_matplotlib()
    import pandas as pd
    from matplotlib import colormaps

    out_dir = Path(out_dir)
    epochs = epochs if not epochs.empty else pd.DataFrame(columns=["model", "label", "order"])
    steps = _finite(steps, "loss") if not steps.empty else pd.DataFrame(columns=["model", "label", "order"])
    labels = _label_order(epochs, steps)
    colors = _styles([epochs, steps], labels, curves, colormaps["tab10"])
    models = sorted(set(epochs["model"]) | set(steps["model"]), key=str)
    figures: dict[Path, Figure] = {}
    for model, slug in unique_slugs([str(m) for m in models]).items():
        picked = [h for h in headlines if h.model == model]
        if picked:  # the answer first (analysis.headline)
            figures[out_dir / f"{slug}-headline.png"] = _headline_figure(model, picked)
        model_epochs = epochs[epochs["model"].astype(str) == model]
        model_steps = steps[steps["model"].astype(str) == model]
        if not model_epochs.empty:
            figures[out_dir / f"{slug}-validation.png"] = _validation_figure(model, model_epochs, labels, colors, metric)
        if not model_steps.empty:
            figures[out_dir / f"{slug}-train-loss.png"] = _train_loss_figure(model, model_steps, labels, colors)
        # Drawn from what the runs recorded: training time per epoch, and the noise scale where measured.
        if not model_epochs.empty and "train_seconds" in model_epochs:
            figures[out_dir / f"{slug}-time.png"] = _time_figure(model, model_epochs, labels, colors, metric)
        if not model_epochs.empty and {"noise_scale", "effective_batch_size"} <= set(model_epochs):
            noise = _finite(model_epochs, "noise_scale")
            if not noise[noise["noise_scale"] > 0].empty:
                figures[out_dir / f"{slug}-noise-scale.png"] = _noise_figure(
                    model, model_epochs, labels, colors, (b_crit or {}).get(model))
        grids = [grid for grid in lr_grids if str(grid.model) == model]
        if grids:
            figures[out_dir / f"{slug}-lr-grid.png"] = _lr_grid_figure(model, grids)
    return figures


def figure_pngs(epochs: pd.DataFrame, steps: pd.DataFrame, out_dir: Path = Path("."), lr_grids: tuple = (),
                b_crit: dict[str, float] | None = None, headlines: tuple = (), curves: str = "best",
                metric: str = "val_accuracy") -> dict[Path, bytes]:
    """build_figures rendered: each figure's PNG bytes, for files (--plot) and for the study page."""
    import io

    figures = build_figures(epochs, steps, out_dir, lr_grids, b_crit, headlines, curves, metric)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = {}
    for path, fig in figures.items():
        FigureCanvasAgg(fig)  # attaches itself to the figure: PNG output without pyplot's backend
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        fig.clear()  # no pyplot registry holds it: clearing frees its artists now, not at the next GC
        out[path] = buffer.getvalue()
    return out


def write_pngs(pngs: dict[Path, bytes], out_dir: Path) -> list[Path]:
    """Write figure_pngs' figures as PNG files into out_dir (created if needed); return their paths.
    A directory that cannot be written is bad input (UserError), said in one line."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for path, png in pngs.items():
            path.write_bytes(png)
    except OSError as exc:
        raise UserError(f"cannot write figures into {out_dir} ({exc.strerror or exc}); choose another --plot") from None
    return list(pngs)
