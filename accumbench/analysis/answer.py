"""The pick in words: one sentence a reader can act on, and one answer where the evidence points elsewhere.

    sentence   'EBS 256 at lr 2e-4: as good as the best, EBS 64 (p = 0.5), with 4.0x fewer optimizer steps'
    reconcile  where the noise scale or the critical batch size points to another tried EBS than the pick:
               what that suggests, and what validation found at that EBS

Both read a Pick (analysis/pick.py) by its fields, and import nothing of it.
"""

from __future__ import annotations

from typing import Any

from accumbench.formatting import format_lr
from accumbench.vocabulary import METRICS


def sentence(pick: Any) -> str:
    """The answer in one sentence: the pick and its lr, how it stands on validation, and what it saves."""
    chosen, best = pick.chosen, pick.best
    lr = "" if " lr " in chosen.label else f" at lr {format_lr(float(chosen.runs['lr'].iloc[0]))}"
    equals = [c for c in pick.candidates if c is best or c.not_worse]
    if chosen is best:
        standing = f"the best on validation ({METRICS[pick.metric]} {chosen.metric_mean:.4f})"
        if len(equals) > 1:
            standing += f", and the cheapest of the {len(equals)} that validation cannot tell apart"
        return f"{chosen.label}{lr}: {standing}"
    return (f"{chosen.label}{lr}: as good as the best, {best.label} (p = {chosen.screen_p:.2g}), "
            f"{_saving(pick)}")


def _saving(pick: Any) -> str:
    """What the pick saves against the best: samples, optimizer steps, or (as measured) time per sample."""
    chosen, best = pick.chosen, pick.best
    if pick.cost is not None and pick.cost.measured_speedup is not None:
        return f"and {pick.cost.measured_speedup:.1f}x faster per sample to train, as measured"
    if best.samples > chosen.samples * 1.02:
        return f"with {best.samples / chosen.samples:.1f}x fewer samples to train"
    if best.steps > chosen.steps:
        return f"with {best.steps / chosen.steps:.1f}x fewer optimizer steps"
    return "and no more costly to train"


def reconcile(pick: Any) -> list[str]:
    """One answer: where the noise scale or the critical batch size points to another tried EBS than the
    pick, say what that means and what validation found at that EBS, so the reader knows which to act on."""
    chosen = pick.chosen.effective_batch_size
    signals = [] if pick.noise is None or pick.noise.first is None else [
        (f"the noise scale (B_simple ≈ {pick.noise.first:.3g})", pick.noise.nearest)]
    signals += [(f"the critical batch size (B_crit ≈ {c.fit.b_crit:.3g})", c.nearest) for c in pick.critical
                if c.fit is not None and c.fit.b_crit is not None]
    lines = []
    for signal, nearest in signals:
        if nearest is None or nearest == chosen:
            continue
        direction = ("larger batches would still train efficiently" if nearest > chosen
                     else "smaller batches would make better use of each sample")
        lines.append(f"{signal} points to EBS {nearest}, the pick is EBS {chosen}: it suggests {direction}; "
                     f"{_validation_verdict(pick, nearest)}")
    return lines


def _validation_verdict(pick: Any, ebs: int) -> str:
    """What choosing on validation found at `ebs` (the candidate of that EBS nearest the best)."""
    at = [c for c in pick.candidates if c.effective_batch_size == ebs]
    if not at:
        return f"EBS {ebs} has no candidate here"
    candidate = at[0]
    if candidate is pick.best:
        return (f"EBS {ebs} was the best on validation, but not significantly better than the pick, which won "
                "among equals on training cost; act on the pick")
    if candidate.not_worse:
        return f"on validation EBS {ebs} was as good; among equals the pick won on training cost; act on the pick"
    if candidate.screen_p is None:
        return f"on validation EBS {ebs} could not be tested against the best; act on the pick"
    return f"on validation EBS {ebs} was significantly worse (p={candidate.screen_p:.2g}); act on the pick"
