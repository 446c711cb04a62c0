"""Classification metrics beyond accuracy, and a paired bootstrap to compare two runs on them.

Accuracy misleads on imbalanced tasks: on MRPC (68% positives) predicting "positive" everywhere scores 0.68
accuracy and 0.81 F1 yet has learnt nothing, which MCC (0.0) shows. GLUE reports F1 for MRPC/QQP and MCC for
CoLA, so a batch-size study on those tasks has to rank runs by the same numbers.

F1 and MCC are not means over examples, so the binomial standard error and McNemar's test in stats.py do not
apply to them; a bootstrap does. It is *paired* (A and B are scored on the same resampled examples, so the
example-difficulty noise they share cancels) and *stratified* by seed (each seed's evaluation keeps its own size,
so one seed cannot crowd out another in a resample).

Numpy only, and no other accumbench module: sklearn is not a dependency, and the analysis layer must be able
to use this without torch. The conventions follow sklearn (zero_division=0, MCC 0.0 when undefined) so
numbers can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


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


# The batched forms take [..., C, C] and return [...]: the bootstrap scores thousands of resamples at once.
def _accuracy(cms: np.ndarray, positive: int) -> np.ndarray:
    total = cms.sum(axis=(-2, -1))
    correct = np.trace(cms, axis1=-2, axis2=-1)
    return np.where(total > 0, correct / np.maximum(total, 1), 0.0)


def _f1(cms: np.ndarray, positive: int) -> np.ndarray:
    num_classes = cms.shape[-1]
    tp = np.diagonal(cms, axis1=-2, axis2=-1).astype(np.float64)
    denominator = cms.sum(axis=-1) + cms.sum(axis=-2)  # 2TP + FP + FN per class
    per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    if num_classes == 2:
        if positive not in (0, 1):
            raise ValueError(f"positive must be 0 or 1, got {positive}")
        return per_class[..., positive]
    # Macro over the classes seen in labels or predictions: a class absent from both would add a 0 that says
    # nothing about the model (sklearn's labels=None does the same).
    present = (denominator > 0).sum(axis=-1)
    return np.where(present > 0, per_class.sum(axis=-1) / np.maximum(present, 1), 0.0)


def _mcc(cms: np.ndarray, positive: int) -> np.ndarray:
    cms = cms.astype(np.float64)
    s = cms.sum(axis=(-2, -1))
    c = np.trace(cms, axis1=-2, axis2=-1)
    t, p = cms.sum(axis=-1), cms.sum(axis=-2)  # true and predicted counts per class
    numerator = c * s - (p * t).sum(axis=-1)
    squared = (s**2 - (p**2).sum(axis=-1)) * (s**2 - (t**2).sum(axis=-1))
    return np.where(squared > 0, numerator / np.sqrt(np.where(squared > 0, squared, 1.0)), 0.0)


_BATCHED: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"accuracy": _accuracy, "f1": _f1, "mcc": _mcc}


def batched_metric(metric: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """The metric ('accuracy', 'f1' or 'mcc') over [..., C, C] confusion matrices at once: [...] scores."""
    if metric not in _BATCHED:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_BATCHED)}")
    return _BATCHED[metric]


def accuracy_from_confusion(cm: np.ndarray, positive: int = 1) -> float:
    return float(_accuracy(np.asarray(cm), positive))


def f1_from_confusion(cm: np.ndarray, positive: int = 1) -> float:
    """F1 of class `positive` with two classes, macro-F1 over the classes present with more."""
    return float(_f1(np.asarray(cm), positive))


def mcc_from_confusion(cm: np.ndarray, positive: int = 1) -> float:
    """Gorodkin's R_K (the phi coefficient with two classes); 0.0 when a margin is constant."""
    return float(_mcc(np.asarray(cm), positive))


METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, int], float]] = {
    "accuracy": accuracy_from_confusion,
    "f1": f1_from_confusion,
    "mcc": mcc_from_confusion,
}


def f1_score(labels: Sequence[int], predicted: Sequence[int], num_classes: int, positive: int = 1) -> float:
    return f1_from_confusion(confusion_matrix(labels, predicted, num_classes), positive)


def matthews_corrcoef(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    return mcc_from_confusion(confusion_matrix(labels, predicted, num_classes))


def scores(labels: Sequence[int], predicted: Sequence[int], num_classes: int, positive: int = 1) -> dict[str, float]:
    """{"f1": ..., "mcc": ...} of one evaluation, as each epoch records them (accuracy is recorded already)."""
    cm = confusion_matrix(labels, predicted, num_classes)
    return {"f1": f1_from_confusion(cm, positive), "mcc": mcc_from_confusion(cm)}


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
