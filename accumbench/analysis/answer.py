"""The pick in words: one sentence a reader can act on, the evidence under it, and, where the noise scale or
the critical batch size points to another EBS, what validation found there and what to do.

    sentence       'EBS 256 at lr 2e-4: within 1 point of the best, EBS 64 (deficit 0.1, 95% bound 0.6;
                   3 seeds), with 4.0x fewer optimizer steps'
    justification  the pick's evidence against every other candidate, in one paragraph
    bound_line     one candidate's bound, so a reader sees what margin would take it: 'EBS 256: within 1.8
                   points of the best (95%), 16x fewer optimizer steps'
    reconcile      where the noise scale or the critical batch size points to another tried EBS than the pick:
                   what that suggests, and what validation found at that EBS

All read a Pick and its Candidates (analysis/pick.py) by their fields, and import nothing of it.
"""

from __future__ import annotations

import math
from typing import Any

from accumbench import deficit
from accumbench.analysis.cost import cheaper, saving
from accumbench.formatting import format_lr, spread
from accumbench.vocabulary import METRICS


def sentence(pick: Any) -> str:
    """The answer in one sentence: the pick and its lr, how it stands on validation, and what it saves."""
    chosen, best = pick.chosen, pick.best
    lr = "" if " lr " in chosen.label else f" at lr {format_lr(float(chosen.runs['lr'].iloc[0]))}"
    margin = pick.evidence.words(pick.metric)
    if chosen is not best:
        saved = saving(chosen, best)
        saved = f"with {saved}" if saved else "and no more costly to train"
        if pick.cost is not None and pick.cost.measured_speedup is not None:
            saved = f"and {pick.cost.measured_speedup:.1f}x faster per sample to train, as measured"
        return (f"{chosen.label}{lr}: within {margin} of the best, {best.label} ({evidence(chosen.deficit, pick.metric)}), "
                f"{saved}")
    standing = f"the best on validation ({METRICS[pick.metric]} {chosen.metric_mean:.4f})"
    equals = [c for c in pick.candidates if c.as_good]
    if len(equals) > 1:
        return f"{chosen.label}{lr}: {standing}, and the cheapest of the {len(equals)} shown within {margin} of it"
    passed = _nearest_cheaper(pick.candidates, chosen)
    if passed is None:
        return f"{chosen.label}{lr}: {standing}"
    saved = saving(passed, chosen)
    return (f"{chosen.label}{lr}: {standing}; {passed.label} {'has ' + saved if saved else 'costs no more'} but is not "
            f"shown within {margin} of it ({evidence(passed.deficit, pick.metric)})")


def _nearest_cheaper(candidates: list[Any], chosen: Any) -> Any | None:
    """Of the candidates cheaper than the chosen one, the one whose bound came nearest the margin (on a tie, the
    cheapest)."""
    cheaper_ones = [c for c in candidates if c is not chosen and c.deficit is not None and cheaper(c, chosen)
                    and not math.isnan(c.metric_mean)]
    return min(cheaper_ones, key=lambda c: (c.deficit.upper, c.samples, c.steps, -c.effective_batch_size), default=None)


def evidence(bound: Any, metric: str) -> str:
    """'deficit 0.3, 95% bound 2.1; 2 seeds', with where the evidence came from where it is not both levels."""
    if bound.source == deficit.NO_EVIDENCE:
        return "no bound: one seed, and no stored predictions to resample" if math.isfinite(bound.deficit) else "diverged"
    a, b = bound.seeds
    seeds = f"{a} seed{'s' if a != 1 else ''}" if a == b else f"{a} and {b} seeds"
    source = {deficit.EXAMPLES_ONLY: "one seed each: seed-to-seed variation not measured",
              deficit.SEED_MEANS: f"{seeds}, t interval on seed means: no stored predictions"}.get(bound.source, seeds)
    return (f"deficit {deficit.amount(bound.deficit, metric)}, {bound.confidence:.0%} bound "
            f"{deficit.amount(bound.upper, metric)}; {source}")


def bound_line(candidate: Any, best: Any, metric: str) -> str:
    """'within 1.8 points of the best (95%), 16x fewer optimizer steps': what margin would take this candidate."""
    bound = candidate.deficit
    if bound is None:
        return "the best"
    if not math.isfinite(bound.upper):
        within = "diverged" if math.isnan(candidate.metric_mean) else "not bounded (one seed, nothing to resample)"
    elif bound.upper <= 0:
        within = f"no worse than the best ({bound.confidence:.0%})"
    else:
        unit = "" if deficit.relative(metric) else " points"
        within = f"within {deficit.amount(bound.upper, metric)}{unit} of the best ({bound.confidence:.0%})"
    saved = saving(candidate, best)
    return f"{within}, {saved}" if saved else within


def bound_lines(pick: Any) -> list[str]:
    """Every candidate but the best, with its bound: 'EBS 256: within 1.8 points of the best (95%), 16x fewer
    optimizer steps', so that a reader sees which margin would take which."""
    return [f"{c.label}: {bound_line(c, pick.best, pick.metric)}" for c in pick.candidates if c is not pick.best]


def _fmt(candidate: Any) -> str:
    seeds = len(candidate.runs)
    return f"{candidate.metric_mean:.4f}{spread(candidate.metric_std, 4, '±')} ({seeds} seed{'s' if seeds != 1 else ''})"


def _names(candidates: list[Any]) -> str:
    labels = [c.label.removeprefix("EBS ") for c in candidates]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def justification(candidates: list[Any], best: Any, chosen: Any, contenders: list[Any], metric: str, margin: Any,
                  cost: str) -> str:
    """The pick in one paragraph of evidence, e.g. 'EBS 256: validation accuracy 0.9012±0.0021 (3 seeds);
    within 1 point of the best, EBS 64 at 0.9031 (deficit 0.2, 95% bound 0.7; 3 seeds); 1024 is not shown
    within 1 point (deficit 1.4, 95% bound 3.9; 3 seeds); 256 is the cheapest of the two ...'."""
    words, within = METRICS[metric], margin.words(metric)
    others = [c for c in candidates if c is not chosen and c is not best]
    text = f"{chosen.label}: {words} {_fmt(chosen)}"
    if chosen is not best:
        text += f"; within {within} of the best, {best.label} at {_fmt(best)} ({evidence(chosen.deficit, metric)})"
    same = [c for c in others if c.as_good]
    if same:
        text += f"; {_names(same)} {'is' if len(same) == 1 else 'are'} also within {within} (" + "; ".join(
            f"{c.label.removeprefix('EBS ')}: {evidence(c.deficit, metric)}" for c in same) + ")"
    diverged = [c for c in others if not c.as_good and math.isnan(c.metric_mean)]
    for c in (c for c in others if not c.as_good and c not in diverged):
        text += f"; {c.label.removeprefix('EBS ')} is not shown within {within} ({evidence(c.deficit, metric)})"
    if diverged:
        text += f"; {_names(diverged)} diverged"
    if len(contenders) == 1:
        return text + f"; no other candidate is shown within {within} of the best, so it stands"
    return text + f"; {cost}"


def too_small_to_show(candidates: list[Any], best: Any, metric: str, margin: Any) -> str | None:
    """Where no candidate is shown within the margin though some sit inside it by their point estimate: the
    evidence is too weak to show it, and what would (more seeds, a larger validation split, a wider margin)."""
    value = margin.of(metric)
    near = [c for c in candidates if c is not best and c.deficit is not None and not c.as_good
            and math.isfinite(c.deficit.upper) and c.deficit.deficit < value]
    if not near or any(c.as_good for c in candidates if c is not best):
        return None
    closest = min(near, key=lambda c: c.deficit.upper)
    bound = closest.deficit
    unit = "%" if deficit.relative(metric) else " points"
    seeds, examples = bound.se_seeds, bound.se_examples
    levers = (["more seeds (--seeds)"] if seeds >= examples else []) + (
        [f"a larger validation split (it has {bound.examples} examples)"] if bound.examples and examples >= seeds / 2
        else []) + [f"a wider --margin (--margin {bound.upper + 0.0005:.3f} would take {closest.label})"]
    return (f"no candidate is shown within {margin.words(metric)} of the best, though {_names(near)} "
            f"{'lies' if len(near) == 1 else 'lie'} inside it by the point estimate: the nearest bound is "
            f"{deficit.amount(bound.upper, metric)}{unit} ({closest.label}; standard error "
            f"{deficit.amount(seeds, metric)} from seeds, {deficit.amount(examples, metric)} from the validation "
            f"examples). What would show it: {', '.join(levers)}")


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
        direction = ("larger batches would still use each sample well" if nearest > chosen
                     else "smaller batches would make better use of each sample")
        lines.append(f"{signal} suggests EBS {nearest} ({direction}), but the pick is EBS {chosen}: "
                     f"{_validation_verdict(pick, nearest)}")
    return lines


def _validation_verdict(pick: Any, ebs: int) -> str:
    """What choosing on validation found at `ebs` (the candidate of that EBS nearest the best)."""
    at = [c for c in pick.candidates if c.effective_batch_size == ebs]
    if not at:
        return f"EBS {ebs} has no candidate here"
    candidate = at[0]
    within = pick.evidence.words(pick.metric)
    if candidate is pick.best:
        return (f"EBS {ebs} was the best on validation, and the pick is shown within {within} of it at less cost. "
                "Train at the pick")
    if candidate.as_good:
        return (f"on validation EBS {ebs} was shown within {within} of the best too, and the pick costs less. "
                "Train at the pick")
    return (f"on validation EBS {ebs} was not shown within {within} of the best "
            f"({evidence(candidate.deficit, pick.metric)}). Train at the pick; to test EBS {ebs}, run more seeds")
