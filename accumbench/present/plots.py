"""Figures of recorded runs, for `report --plot` (PNG files) and the study page (the same PNGs inline), per
model: <slug>-headline.png (each EBS at its best lr, and the cost the pick minimised: headline_figure.py),
-validation.png (accuracy, or F1/MCC, and loss per epoch), -time.png (the same against training time),
-train-loss.png (per optimizer step), -noise-scale.png (B_simple, the EBS tried, B_crit) and -lr-grid.png
(the validation metric by lr and EBS).

Each series is one label (an EBS, with its LR rule), drawn as the mean over its runs (one run per
seed) with a shaded min-max band where it has two or more. Each EBS has one colour in every figure
(colours.py): its series of other lrs, rules or backends keep that hue, faded, shaded or dashed.
Non-finite values (a diverged run's NaN or inf) are dropped point by point: a diverged run is a
result to show, not a reason to crash.

matplotlib (the extra `accumbench[plot]`) and pandas are imported inside the functions, so that
`accumbench --help` stays fast. Figures use `Figure` and the Agg canvas directly, not pyplot: no global
backend switch, no figure registry to leak into, and safe from threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from accumbench.errors import UserError
from accumbench.formatting import short_model, spread, unique_slugs
from accumbench.present.colours import PALETTE, ebs_colours, shade
from accumbench.present.headline_figure import DPI
from accumbench.present.headline_figure import headline_figure as _headline_figure
from accumbench.vocabulary import METRICS, curve_metric

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
    """Every label, sorted by its `order` (then name): the legend order (and, without EBS, the colour
    index, so a label has the same colour in every figure of one call)."""
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


def _styles(frames: list[pd.DataFrame], labels: list[str], curves: str, colours: dict[int, str]
            ) -> dict[str, tuple | None]:
    """Each label's style, (colour, line style), in its EBS's colour (`colours`, the same in every figure).
    curves 'best': a line style per series of one EBS (backends, rules), and None (faded) for a lr that is not
    its EBS's best; 'all': every series solid, its EBS's best lr in the EBS's colour and its other lrs lighter
    shades of it. Frames without EBS: a colour per label."""
    known = [f[["label", "effective_batch_size", "faded"]] for f in frames
             if not f.empty and {"effective_batch_size", "faded"} <= set(f)]
    if not known:
        return {label: (PALETTE[i % len(PALETTE)], "-") for i, label in enumerate(labels)}
    import pandas as pd

    rows = pd.concat(known).drop_duplicates("label").set_index("label")
    per_ebs: dict[int, list[str]] = {}
    for label in sorted(labels, key=lambda lab: bool(rows.at[lab, "faded"])):  # stable: the best lr first
        per_ebs.setdefault(int(rows.at[label, "effective_batch_size"]), []).append(label)
    styles: dict[str, tuple | None] = {}
    for ebs, series in per_ebs.items():
        if curves == "all":
            styles.update({label: (shade(colours[ebs], i, len(series)), "-") for i, label in enumerate(series)})
            continue
        shown = [label for label in series if not bool(rows.at[label, "faded"])]
        styles.update({label: None for label in series if label not in shown})
        styles.update({label: (colours[ebs], ("-", "--", ":", "-.")[i % 4]) for i, label in enumerate(shown)})
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


def build_figures(epochs: pd.DataFrame, steps: pd.DataFrame, out_dir: Path, lr_grids: tuple = (),
                  b_crit: dict[str, float] | None = None, headlines: tuple = (), curves: str = "best",
                  metric: str = "val_accuracy") -> dict[Path, Figure]:
    """The figures of figure_pngs, keyed by their path, in a stable order: models sorted, and
    for each its validation figure, its training-loss figure (left out without finite steps), its
    accuracy against training time, its noise-scale figure (left out where nothing measured it; with
    B_crit from `b_crit`, model -> value, where fitted), then its lr x EBS heatmap (with an lr grid:
    analysis.tuning.lr_grids). Each EBS has one colour in all of them (colours.ebs_colours over every EBS
    drawn: the curves' and the headlines')."""
    _require_matplotlib()
    import pandas as pd

    out_dir = Path(out_dir)
    epochs = epochs if not epochs.empty else pd.DataFrame(columns=["model", "label", "order"])
    steps = _finite(steps, "loss") if not steps.empty else pd.DataFrame(columns=["model", "label", "order"])
    labels = _label_order(epochs, steps)
    sizes = [int(v) for f in (epochs, steps) if "effective_batch_size" in f for v in f["effective_batch_size"].unique()]
    hues = ebs_colours(sizes + [p.effective_batch_size for h in headlines for p in h.points])
    colors = _styles([epochs, steps], labels, curves, hues)
    models = sorted(set(epochs["model"]) | set(steps["model"]), key=str)
    figures: dict[Path, Figure] = {}
    for model, slug in unique_slugs([str(m) for m in models]).items():
        picked = [h for h in headlines if h.model == model]
        if picked:  # the answer first (analysis.headline)
            figures[out_dir / f"{slug}-headline.png"] = _headline_figure(model, picked, hues)
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
    figures = build_figures(epochs, steps, out_dir, lr_grids, b_crit, headlines, curves, metric)
    return {path: png_bytes(fig) for path, fig in figures.items()}


def png_bytes(fig: Figure) -> bytes:
    """One figure as PNG bytes, then cleared."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure: PNG output without pyplot's backend
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()  # no pyplot registry holds it: clearing frees its artists now, not at the next GC
    return buffer.getvalue()


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
