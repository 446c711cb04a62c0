"""The critical batch size along training, as text: one line per branch as `accumbench branch` trains it, and
the curve (loss per EBS at each saved state, the critical batch size, B_simple beside it) for branch and report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from accumbench.analysis.critical_batch import CriticalCurve
from accumbench.formatting import format_lr
from accumbench.present.text_table import render


def print_branch_row(row: dict[str, Any]) -> None:
    print(f"branch from state {row['state_id']}: EBS {row['effective_batch_size']} seed {row['seed']} "
          f"lr {format_lr(row['lr'])}, {row['steps']} steps of {row['samples']} samples -> val loss "
          f"{row['val_loss']:.4f}, val acc {row['val_accuracy']:.3f} ({row['seconds']:.1f} s)", flush=True)


def _point(epoch: float, step: int) -> str:
    return f"epoch {epoch:g}" if float(epoch).is_integer() else f"step {step} (epoch {epoch:.2f})"


def curve_text(curves: Sequence[CriticalCurve]) -> str:
    """A table per run: where, the validation loss per branch EBS (seeds averaged), B_crit and B_simple."""
    out = []
    for curve in curves:
        sizes = sorted({size for point in curve.points for size in point.losses})
        headings = ["state", *(f"loss\nEBS {size}" for size in sizes), "B_crit", "B_simple", "seeds"]
        rows = [[_point(p.epoch, p.step), *(f"{p.losses[s]:.4f}" if s in p.losses else "-" for s in sizes),
                 str(p.critical), "-" if p.noise_scale is None else f"{p.noise_scale:.0f}", str(p.seeds)]
                for p in curve.points]
        samples = curve.points[0].samples if curve.points else 0
        out.append(f"Run {curve.run_id}: critical batch size along training (branches of {samples} samples; "
                   f"B_crit = the largest EBS within {curve.tolerance:.0%} of the smallest EBS's loss)\n"
                   + render(headings, rows, [True, *([False] * (len(headings) - 1))], keys=1))
    return "\n".join(out)


def print_curve(curve: CriticalCurve) -> None:
    print(curve_text([curve]), end="")


FIGURE = "critical-batch.png"


def critical_figure_png(curves: Sequence[CriticalCurve]) -> bytes | None:
    """B_crit measured by branching at each saved state (solid), beside B_simple from the micro-batches at the
    same points (dotted), per run, on a log scale against epochs trained; None without matplotlib or points."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from accumbench.present.headline_figure import DPI
    from accumbench.present.plots import png_bytes

    if not any(curve.points for curve in curves):
        return None
    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="tight")
    ax = fig.subplots()
    for index, curve in enumerate(curves):
        colour = f"C{index % 10}"
        xs = [p.epoch for p in curve.points]
        ax.plot(xs, [p.critical for p in curve.points], marker="o", color=colour, label=f"run {curve.run_id}: B_crit")
        noise = [(p.epoch, p.noise_scale) for p in curve.points if p.noise_scale is not None and p.noise_scale > 0]
        if noise:
            ax.plot(*zip(*noise), marker="s", linestyle=":", color=colour, label=f"run {curve.run_id}: B_simple")
    ax.set_yscale("log", base=2)
    ax.set(xlabel="epochs trained (the saved state branched from)", ylabel="batch size",
           title="The critical batch size along training (branching) beside B_simple (noise scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return png_bytes(fig)
