"""The headline figure, the answer at a glance (analysis/headline.py's data), one column per pick of a model:

    above   what pick-best's verdict rests on: each EBS's deficit to the best, with the deficit's confidence
            bounds, the margin as a dashed line, filled the EBS shown within it (hollow those not), the pick starred
    below   what the pick minimised among the filled: each EBS's cost by the count the pick was decided on
            (cost.py: samples trained, or optimizer steps where the samples tie; the clock only where measured
            seconds decided), its measured training time written over its bar

Each EBS is drawn in its colour (colours.py), the one it has in every other figure of the page: the margin's
verdict is the marker's fill, never its hue. plots.build_figures places it first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accumbench.formatting import format_lr, format_seconds, short_group, short_model
from accumbench.metrics import named
from accumbench.present.colours import ebs_colours

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
MARKS = "#d62728"  # the margin and the pick's star: no EBS has this red (colours.PALETTE has none)
NEUTRAL = "#444"  # the legend's markers: what a fill means, whatever the EBS's hue
SCALE = 100.0  # hundredths, as the axis's unit says: points of accuracy, F1 or MCC, or % of the best's loss


def headline_figure(model: str, headlines: list, colours: dict[int, str] | None = None) -> Figure:
    """The figure of a model's picks; `colours`, each EBS's colour in the page's other figures (by default the
    headlines' own EBS, in colours.ebs_colours' order)."""
    from matplotlib.figure import Figure

    colours = colours or ebs_colours(p.effective_batch_size for h in headlines for p in h.points)
    fig = Figure(figsize=(max(6.0, 5.2 * len(headlines)), 5.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(headlines), squeeze=False, sharex="col", height_ratios=(3, 1.3))
    for column, headline in enumerate(headlines):
        _deficits(axes[0][column], headline, colours, short_group(headline.group) if len(headlines) > 1 else None)
        _costs(axes[1][column], headline, colours)
    fig.suptitle(f"{short_model(model)}: each EBS at its best lr, behind the best on validation, and its cost",
                 fontsize="medium")
    return fig


def _deficits(top: Axes, headline: Any, colours: dict[int, str], title: str | None) -> None:
    """Each EBS's deficit to the best (its best lr printed by the point) with its bounds; worse is down, as on a
    score axis."""
    from accumbench.analysis.headline import drawable

    points = headline.points
    top.axhline(0.0, color=NEUTRAL, linewidth=0.8)
    top.axhline(headline.margin * SCALE, color=MARKS, linestyle="--", linewidth=1.2,
                label=f"margin: {headline.margin_words}")
    for p in points:
        colour = colours[p.effective_batch_size]
        y = p.deficit * SCALE if drawable(p.deficit) else 0.0
        high = p.high * SCALE if drawable(p.high) else top.get_ylim()[1]
        low = p.low * SCALE if drawable(p.low) else y
        top.errorbar([p.effective_batch_size], [y], yerr=[[max(0.0, y - low)], [max(0.0, high - y)]], fmt="o",
                     color=colour, markerfacecolor=colour if p.as_good else "white", markeredgewidth=1.5,
                     capsize=4, markersize=7)
        top.annotate(f"lr {format_lr(p.lr)}", (p.effective_batch_size, y), textcoords="offset points",
                     xytext=(8, -3), fontsize="small")
    picked = [p for p in points if p.picked]
    top.plot([p.effective_batch_size for p in picked], [p.deficit * SCALE for p in picked], marker="*",
             markersize=18, color=MARKS, markeredgecolor="black", markeredgewidth=0.8, linestyle="none", zorder=3,
             label=f"the pick: EBS {picked[0].effective_batch_size}" if picked else None)
    top.plot([], [], "o", color=NEUTRAL, label="filled: shown within the margin")
    if not all(p.as_good for p in points):
        top.plot([], [], "o", color=NEUTRAL, markerfacecolor="white", markeredgewidth=1.5,
                 label="hollow: not shown within it")
    top.errorbar([], [], yerr=[], fmt="o", color=NEUTRAL, capsize=4,
                 label=f"deficit, bars to its one-sided {headline.confidence:.0%} bounds")
    top.set(title=title, ylabel=f"deficit to the best ({named(headline.metric).unit})")
    top.invert_yaxis()
    top.margins(y=0.12)
    top.legend(fontsize="small", loc="best")
    top.grid(alpha=0.3)


def _costs(bottom: Axes, headline: Any, colours: dict[int, str]) -> None:
    """Each EBS's cost by what the pick minimised (headline.cost_basis), filled for the candidates it was
    chosen among, so that the lowest filled bar is the pick's; each bar's measured training time over it."""
    from matplotlib.ticker import EngFormatter

    from accumbench.analysis.headline import drawable

    points = headline.points
    xs = [p.effective_batch_size for p in points]
    heights = [p.cost(headline.cost_basis) if drawable(p.cost(headline.cost_basis)) else 0.0 for p in points]
    hues = [colours[x] for x in xs]
    bottom.bar(xs, heights, width=[x * 0.35 for x in xs], color=[c if p.as_good else "white" for c, p in
                                                              zip(hues, points)], edgecolor=hues, linewidth=1.5)
    for p, height in zip(points, heights):
        bottom.annotate(format_seconds(p.train_seconds), (p.effective_batch_size, height),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize="x-small")
    bottom.set(xscale="log", xlabel="effective batch size", ylabel=f"cost: {headline.cost_words}",
               ylim=(0, 1.35 * max(heights, default=1.0) or 1.0))
    if headline.cost_basis != "clock":
        bottom.yaxis.set_major_formatter(EngFormatter())  # 12k samples, not 12000 or an offset
    bottom.set_xticks(xs, [str(x) for x in xs])
    bottom.set_xlim(min(xs) / 1.8, max(xs) * 1.8)  # room for the lr labels right of the last point
    bottom.minorticks_off()
    bottom.grid(alpha=0.3, axis="y")
