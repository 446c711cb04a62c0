"""The JSON shapes of pick-best (`--json`, `--compare-protocols --json`): the same as the printed answer,
for machines. JSON has no NaN, so an undefined statistic is null."""

from __future__ import annotations

import math
from typing import Any

from accumbench.analysis import answer
from accumbench.analysis.choice import ProtocolComparison, ProtocolPick
from accumbench.analysis.pick import Candidate, Pick
from accumbench.analysis.race_replay import RaceReplay
from accumbench.analysis.tuning import LINEAR_ALPHA, SQRT_ALPHA, BestLr
from accumbench.vocabulary import test_metric


def answer_json(answer: list[Any]) -> dict[str, Any]:
    """pick-best --json, whichever answer analysis.choice.choose gave."""
    if answer and isinstance(answer[0], RaceReplay):
        return {"replays": [replay.to_json() for replay in answer]}
    if answer and isinstance(answer[0], ProtocolComparison):
        return comparison_json(answer)
    return as_json(answer)


def as_json(picks: list[Pick]) -> dict[str, Any]:
    """The same as the printed pick, for machines."""

    def candidate(c: Candidate) -> dict[str, Any]:
        return {
            "label": c.label, "effective_batch_size": c.effective_batch_size, "seeds": c.seeds,
            "run_ids": sorted(c.runs["run_id"].tolist()), "metric_mean": _num(c.metric_mean),
            "metric_std": _num(c.metric_std), "train_seconds": _num(c.train_seconds), "deficit": _deficit(c),
            "as_good_as_best": c.as_good, "mcnemar_test_p": _num(c.mcnemar_test_p),
            "mcnemar_test_discordant": list(c.mcnemar_test_discordant) if c.mcnemar_test_discordant else None,
        }

    return {"picks": [{
        "group": p.group, "answer": answer.sentence(p), "metric": p.metric, "margin": p.margin,
        "confidence": p.evidence.confidence, "protocol": p.protocol, "bounds": answer.bound_lines(p),
        "pick": p.chosen.label,
        "effective_batch_size": p.chosen.effective_batch_size, "lr": _lr_of(p.chosen),
        "best_on_validation": p.best.label,
        "test_accuracy": p.test_accuracy, "test_accuracy_ci95": list(p.test_ci), "test_examples": p.test_examples,
        "test_metric": None if p.test_score is None else {"name": test_metric(p.metric),
                                                          "mean": _num(p.test_score)},
        "justification": p.justification, "warnings": p.warnings, "reconciled": p.reconciled, "pruned": p.pruned,
        "candidates": [candidate(c) for c in p.candidates],
        "noise_scale": None if p.noise is None else {
            "runs": p.noise.runs, "epoch_1": _num(p.noise.first), "epoch_1_range": p.noise.first_range,
            "last_epoch": _num(p.noise.last), "nearest_tried": p.noise.nearest, "text": p.noise.text},
        "critical_batch_size": [{
            "label": c.label, "target": _num(c.target), "target_rule": c.target_rule,
            "steps_to_target": [{"effective_batch_size": b, "steps": s, "seeds": n} for b, s, n in c.points],
            "unreached": c.unreached,
            "s_min": _num(c.fit.s_min) if c.fit else None, "e_min": _num(c.fit.e_min) if c.fit else None,
            "b_crit": _num(c.fit.b_crit) if c.fit else None,
            "relative_rms_residual": _num(c.fit.relative_rms_residual) if c.fit else None,
            "nearest_tried": c.nearest, "text": c.text} for c in p.critical],
        "best_lr_per_ebs": [best_lr_json(b) for b in p.best_lrs],
        "lr_scaling_fit": [{
            "label": f.label, "alpha": _num(f.alpha), "alpha_ci95": None if f.alpha_ci95 is None else list(f.alpha_ci95),
            "intercept": _num(f.intercept), "points": [{"effective_batch_size": b, "lr": lr} for b, lr in f.points],
            "at_edge": f.at_edge, "sqrt_predicts": SQRT_ALPHA, "linear_predicts": LINEAR_ALPHA, "text": f.text} for f in p.scaling],
    } for p in picks]}


def best_lr_json(b: BestLr) -> dict[str, Any]:
    return {
        "label": b.label, "effective_batch_size": b.effective_batch_size, "lr": b.best.lr,
        "metric_mean": _num(b.best.mean), "metric_std": _num(b.best.std), "seeds": b.best.seeds,
        "lrs_tried": [{"lr": t.lr, "metric_mean": _num(t.mean), "metric_std": _num(t.std), "seeds": t.seeds,
                       "diverged": t.diverged, "pruned": t.pruned, "skipped": t.skipped} for t in b.tried],
        "edge": b.edge, "suggested_lr": b.suggestion, "refined_lr": b.refined_lr, "refined": b.refined,
        "warning": b.warning,
    }


def _deficit(c: Candidate) -> dict[str, Any] | None:
    """A candidate's deficit to the best and its bounds (None for the best itself)."""
    if c.deficit is None:
        return None
    return {"value": _num(c.deficit.deficit), "upper": _num(c.deficit.upper), "lower": _num(c.deficit.lower),
            "confidence": c.deficit.confidence, "evidence": c.deficit.source, "seeds": list(c.deficit.seeds),
            "examples": c.deficit.examples, "se_seeds": _num(c.deficit.se_seeds),
            "se_examples": _num(c.deficit.se_examples)}


def _lr_of(candidate: Candidate) -> float:
    return float(candidate.runs["lr"].iloc[0])


def _num(value: float | None) -> float | None:
    """JSON has no NaN nor infinity: an undefined statistic (or a bound nothing set) is null."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)




def comparison_json(comparisons: list[ProtocolComparison]) -> dict[str, Any]:
    def row(p: ProtocolPick) -> dict[str, Any]:
        chosen = p.pick.chosen
        return {"protocol": p.kind, "name": p.name, "pick": chosen.label, "answer": answer.sentence(p.pick),
                "best_on_validation": p.pick.best.label, "deficit": _deficit(chosen),
                "effective_batch_size": chosen.effective_batch_size, "lr": _lr_of(chosen),
                "metric": p.pick.metric, "metric_mean": _num(chosen.metric_mean), "metric_std": _num(chosen.metric_std),
                "seeds": len(chosen.runs), "test_accuracy": p.pick.test_accuracy,
                "test_accuracy_ci95": list(p.pick.test_ci), "justification": p.pick.justification,
                # The tuned protocols' evidence: each EBS's best lr, and the exponent of lr* ∝ EBS^alpha.
                "best_lr_per_ebs": [best_lr_json(b) for b in p.pick.best_lrs],
                "lr_scaling_fit": [{"label": f.label, "alpha": _num(f.alpha), "at_edge": f.at_edge}
                                   for f in p.pick.scaling]}

    return {"comparisons": [{"group": c.group, "protocols": [row(p) for p in c.protocols],
                             "effective_batch_sizes_picked": c.picked, "answer_changes": c.answer_changes,
                             "text": c.text} for c in comparisons]}
