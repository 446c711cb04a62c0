"""Known answers for accumbench.task_metrics: confusion matrices worked out by hand, then the bootstrap."""

import math

import numpy as np
import pytest

from accumbench.task_metrics import (
    METRIC_FUNCTIONS,
    BootstrapResult,
    accuracy_from_confusion,
    confusion_matrix,
    f1_from_confusion,
    f1_score,
    matthews_corrcoef,
    paired_bootstrap,
)

BINARY = [[4, 1], [2, 3]]  # rows true, columns predicted: TN=4, FP=1, FN=2, TP=3
THREE = [[4, 1, 0], [1, 3, 2], [0, 1, 2]]


def pairs(cm):
    """(labels, predictions) whose confusion matrix is cm."""
    labels, predicted = [], []
    for true, row in enumerate(cm):
        for guess, count in enumerate(row):
            labels += [true] * count
            predicted += [guess] * count
    return labels, predicted


def test_confusion_matrix_rows_are_true_columns_predicted():
    labels, predicted = pairs(BINARY)
    cm = confusion_matrix(labels, predicted, 2)
    assert cm.dtype == np.int64 and cm.tolist() == BINARY
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)


def test_binary_f1_and_mcc_by_hand():
    labels, predicted = pairs(BINARY)
    # precision 3/4, recall 3/5: F1 = 2*(3/4)*(3/5) / (3/4 + 3/5) = 2TP/(2TP+FP+FN) = 6/9
    assert f1_score(labels, predicted, 2) == pytest.approx(2 / 3)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(4*5*5*6)
    assert matthews_corrcoef(labels, predicted, 2) == pytest.approx(10 / math.sqrt(600))
    # class 0 as positive: TP=4, FP=2 (true 1 called 0), FN=1: 8 / (8 + 2 + 1)
    assert f1_score(labels, predicted, 2, positive=0) == pytest.approx(8 / 11)
    assert accuracy_from_confusion(np.array(BINARY)) == pytest.approx(0.7)


def test_three_classes_by_hand():
    labels, predicted = pairs(THREE)
    # class 0: TP 4, FP 1, FN 1 -> 8/10; class 1: TP 3, FP 2, FN 3 -> 6/11; class 2: TP 2, FP 2, FN 1 -> 4/7
    assert f1_score(labels, predicted, 3) == pytest.approx((8 / 10 + 6 / 11 + 4 / 7) / 3)
    # Gorodkin: s=14, c=9, true counts t=(5,6,3), predicted p=(5,5,4); sum p*t = 25+30+12 = 67
    # (9*14 - 67) / sqrt((196 - (25+25+16)) * (196 - (25+36+9))) = 59 / sqrt(130*126)
    assert matthews_corrcoef(labels, predicted, 3) == pytest.approx(59 / math.sqrt(130 * 126))


def test_three_classes_agree_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    labels, predicted = pairs(THREE)
    assert f1_score(labels, predicted, 3) == pytest.approx(metrics.f1_score(labels, predicted, average="macro"))
    assert matthews_corrcoef(labels, predicted, 3) == pytest.approx(metrics.matthews_corrcoef(labels, predicted))
    # class 2 never seen: macro over the two classes present, as sklearn's labels=None
    assert f1_score([0, 1, 1], [0, 1, 0], 3) == pytest.approx(metrics.f1_score([0, 1, 1], [0, 1, 0], average="macro"))


def test_degenerate_cases():
    assert matthews_corrcoef([0, 1, 2, 1], [1, 1, 1, 1], 3) == 0.0  # one predicted class: a constant margin
    assert f1_score([0, 0, 1, 1], [1, 1, 0, 0], 2) == 0.0  # no true positives
    assert f1_score([0, 0, 0], [0, 0, 0], 2) == 0.0  # 2TP+FP+FN = 0: zero_division=0


def test_mrpc_like_majority_predictor():
    labels, predicted = [1] * 68 + [0] * 32, [1] * 100
    cm = confusion_matrix(labels, predicted, 2)
    assert accuracy_from_confusion(cm) == pytest.approx(0.68)
    assert f1_score(labels, predicted, 2) == pytest.approx(2 * 0.68 / (1 + 0.68))  # precision .68, recall 1
    assert f1_score(labels, predicted, 2) == pytest.approx(0.8095, abs=1e-4)
    assert matthews_corrcoef(labels, predicted, 2) == 0.0
    assert set(METRIC_FUNCTIONS) == {"accuracy", "f1", "mcc"}


def test_bootstrap_identical_predictions():
    labels, predicted = pairs(BINARY)
    result = paired_bootstrap([(labels, predicted, predicted)], "f1", 2)
    assert result == BootstrapResult(0.0, 0.0, 0.0, 1.0, 2000)


def test_bootstrap_matches_the_normal_interval():
    labels = [0, 1] * 500
    wrong_b = [1 - y if i < 100 else y for i, y in enumerate(labels)]  # B misses exactly 100 of 1000
    result = paired_bootstrap([(labels, labels, wrong_b)], "accuracy", 2, resamples=4000)
    assert result.difference == pytest.approx(0.1, abs=1e-12)
    half = 1.96 * math.sqrt(0.1 * 0.9 / 1000)
    assert abs(result.low - (0.1 - half)) < 0.006 and abs(result.high - (0.1 + half)) < 0.006
    assert result.p_value < 0.001 and result.resamples == 4000


def test_bootstrap_balanced_disagreement_is_not_significant():
    labels = [0, 1] * 50
    pred_a = [1 - y if i < 3 else y for i, y in enumerate(labels)]  # A misses 0..2
    pred_b = [1 - y if 3 <= i < 6 else y for i, y in enumerate(labels)]  # B misses 3..5
    result = paired_bootstrap([(labels, pred_a, pred_b)], "accuracy", 2)
    assert result.difference == 0.0 and result.low <= 0.0 <= result.high and result.p_value > 0.5


def test_bootstrap_pools_strata_and_is_deterministic():
    strata = [(*pairs(BINARY), [1] * 10), (*pairs([[5, 3], [1, 6]]), [1, 0] * 7 + [0])]
    result = paired_bootstrap(strata, "f1", 2, resamples=500, seed=7)
    assert isinstance(result, BootstrapResult) and result.low <= result.high
    pooled_a = confusion_matrix(*pairs(BINARY), 2) + confusion_matrix(*pairs([[5, 3], [1, 6]]), 2)
    pooled_b = sum(confusion_matrix(labels, b, 2) for labels, _, b in strata)
    assert result.difference == pytest.approx(f1_from_confusion(pooled_a) - f1_from_confusion(pooled_b))
    assert result == paired_bootstrap(strata, "f1", 2, resamples=500, seed=7)
    assert result != paired_bootstrap(strata, "f1", 2, resamples=500, seed=8)
    with pytest.raises(ValueError):
        paired_bootstrap(strata, "auc", 2)
