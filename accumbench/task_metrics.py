"""Classification metrics beyond accuracy, and a paired bootstrap to compare two runs on them.

Accuracy misleads on imbalanced tasks: on MRPC (68% positives) predicting "positive" everywhere scores 0.68
accuracy and 0.81 F1 yet has learnt nothing, which MCC (0.0) shows. GLUE reports F1 for MRPC/QQP and MCC for
CoLA, so a batch-size study on those tasks has to rank runs by the same numbers.

F1 and MCC are not means over examples, so the binomial standard error and McNemar's test in stats.py do not
apply to them; a bootstrap does. It is *paired* (A and B are scored on the same resampled examples, so the
example-difficulty noise they share cancels) and *stratified* by seed (each seed's evaluation keeps its own size,
so one seed cannot crowd out another in a resample).

Numpy only, and no accumbench module but metrics.py (where each metric's batched score lives): sklearn is not a
dependency, and the analysis layer must be able to use this without torch. The conventions follow sklearn
(zero_division=0, MCC 0.0 when undefined) so numbers can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from accumbench.metrics import TABLE, Score


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows the true class, columns the predicted one."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-D of equal length, got {y.shape} and {p.shape}")
    if num_classes < 2:
        raise ValueError(f"need num_classes >= 2, got {num_classes}")
    for name, values in (("label", y), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {name} lies outside 0..{num_classes - 1}")
    return np.bincount(y * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


# The batched forms ([..., C, C] -> [...]) are the metrics' own (metrics.TABLE): every metric computed from
# predictions, by its key ('accuracy', 'f1', 'mcc', ...).
_BATCHED: dict[str, Score] = {metric.key: metric.score for metric in TABLE if metric.score is not None}


def batched_metric(metric: str) -> Score:
    """The metric (a key of metrics.TABLE: 'accuracy', 'f1', 'mcc') over [..., C, C] confusion matrices at once:
    [...] scores."""
    if metric not in _BATCHED:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_BATCHED)}")
    return _BATCHED[metric]


def _single(score: Score) -> Callable[[np.ndarray, int], float]:
    def from_confusion(cm: np.ndarray, positive: int = 1) -> float:
        return float(score(np.asarray(cm), positive))
    return from_confusion


# One confusion matrix at a time: {'accuracy': ..., 'f1': ..., 'mcc': ...}(cm, positive=1) -> float.
METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, int], float]] = {key: _single(score) for key, score in _BATCHED.items()}
accuracy_from_confusion = METRIC_FUNCTIONS["accuracy"]
f1_from_confusion = METRIC_FUNCTIONS["f1"]  # F1 of class `positive` with two classes, macro-F1 with more
mcc_from_confusion = METRIC_FUNCTIONS["mcc"]  # Gorodkin's R_K (phi with two classes); 0.0 when a margin is constant


def f1_score(labels: Sequence[int], predicted: Sequence[int], num_classes: int, positive: int = 1) -> float:
    return f1_from_confusion(confusion_matrix(labels, predicted, num_classes), positive)


def matthews_corrcoef(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    return mcc_from_confusion(confusion_matrix(labels, predicted, num_classes))


def scores(labels: Sequence[int], predicted: Sequence[int], num_classes: int, positive: int = 1) -> dict[str, float]:
    """{"f1": ..., "mcc": ...} of one evaluation, as each epoch records them: every metric of metrics.TABLE
    scored from predictions that the evaluation does not record itself (accuracy is recorded already)."""
    cm = confusion_matrix(labels, predicted, num_classes)
    return {metric.key: float(metric.score(cm, positive)) for metric in TABLE
            if metric.score is not None and not metric.built_in}


@dataclass(frozen=True)
class BootstrapResult:
    difference: float  # metric(A) - metric(B) on all the examples
    low: float  # 95% percentile interval of the resampled differences
    high: float
    p_value: float  # two-sided, for "no difference"
    resamples: int


def paired_bootstrap(strata: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], metric: str,
                     num_classes: int, positive: int = 1, resamples: int = 2000, seed: int = 0) -> BootstrapResult:
    """Compare runs A and B on `metric`; `strata` holds one (labels, pred_a, pred_b) per shared seed."""
    if metric not in _BATCHED:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_FUNCTIONS)}")
    if not strata or resamples < 1:
        raise ValueError("need at least one stratum and one resample")
    cells = num_classes**2
    codes = []  # per stratum, each example's confusion cell under A and under B
    for labels, pred_a, pred_b in strata:
        for predicted in (pred_a, pred_b):
            confusion_matrix(labels, predicted, num_classes)  # the same checks as for a single score
        if len(labels) == 0:
            raise ValueError("every stratum needs examples: an empty one cannot be resampled")
        y = np.asarray(labels, dtype=np.int64) * num_classes
        codes.append((y + np.asarray(pred_a, dtype=np.int64), y + np.asarray(pred_b, dtype=np.int64)))
    if all(np.array_equal(a, b) for a, b in codes):
        # Every resample would give exactly 0; the formula's p would then be 1 too, but say so without noise.
        return BootstrapResult(0.0, 0.0, 0.0, 1.0, resamples)

    score = _BATCHED[metric]
    full_a = sum(np.bincount(a, minlength=cells) for a, _ in codes).reshape(num_classes, num_classes)
    full_b = sum(np.bincount(b, minlength=cells) for _, b in codes).reshape(num_classes, num_classes)
    difference = float(score(full_a, positive) - score(full_b, positive))

    rng = np.random.default_rng(seed)
    offsets = (np.arange(resamples, dtype=np.int64) * cells)[:, None]  # resample r owns cells r*C*C ..
    cms_a = np.zeros(resamples * cells, dtype=np.int64)
    cms_b = np.zeros(resamples * cells, dtype=np.int64)
    for a, b in codes:
        index = rng.integers(0, len(a), size=(resamples, len(a)))  # the same draws for A and B: the pairing
        cms_a += np.bincount((a[index] + offsets).ravel(), minlength=resamples * cells)
        cms_b += np.bincount((b[index] + offsets).ravel(), minlength=resamples * cells)
    shape = (resamples, num_classes, num_classes)
    deltas = score(cms_a.reshape(shape), positive) - score(cms_b.reshape(shape), positive)

    low, high = np.percentile(deltas, [2.5, 97.5])
    below = (1 + int((deltas <= 0).sum())) / (1 + resamples)
    above = (1 + int((deltas >= 0).sum())) / (1 + resamples)
    return BootstrapResult(difference, float(low), float(high), min(1.0, 2 * min(below, above)), resamples)
