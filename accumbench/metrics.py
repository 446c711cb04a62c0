"""The metrics, one record each: how a run is judged on validation and read on test.

A `Metric` holds everything accumbench says or does about one metric: its name (`val_<key>`, its test column
`test_<key>`), which way is better, how it is computed from a split's predicted labels (a batched function of
confusion matrices) or that it is not (the loss: the model's mean cross-entropy, from its logits), how it
prints, how its deficits are measured and drawn, and its words in headings, sentences and --help. `TABLE`
holds them all, and every list, column, heading, figure scale and help string derives from it: adding a metric
is one entry here (a metric computed from predictions is then recorded every epoch, in columns that
store/schema.py generates and store/migrations.py adds to an existing database by itself).

The lowest floor: numpy only (imported where a score is computed, so `accumbench --help` stays light), and no
other accumbench module.

The batched forms take [..., C, C] confusion matrices (rows the true class, columns the predicted one) and
return [...] scores: the bootstrap scores thousands of resamples at once. The conventions follow sklearn
(zero_division=0, MCC 0.0 when undefined), so numbers can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("val", "test")  # each metric's two stored columns: val_<key> (selection) and test_<key> (read only)


def _accuracy(cms: np.ndarray, positive: int) -> np.ndarray:
    import numpy as np

    total = cms.sum(axis=(-2, -1))
    correct = np.trace(cms, axis1=-2, axis2=-1)
    return np.where(total > 0, correct / np.maximum(total, 1), 0.0)


def _f1(cms: np.ndarray, positive: int) -> np.ndarray:
    """F1 of class `positive` with two classes, macro-F1 over the classes present with more."""
    import numpy as np

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
    """Gorodkin's R_K (the phi coefficient with two classes); 0.0 when a margin is constant."""
    import numpy as np

    cms = cms.astype(np.float64)
    s = cms.sum(axis=(-2, -1))
    c = np.trace(cms, axis1=-2, axis2=-1)
    t, p = cms.sum(axis=-1), cms.sum(axis=-2)  # true and predicted counts per class
    numerator = c * s - (p * t).sum(axis=-1)
    squared = (s**2 - (p**2).sum(axis=-1)) * (s**2 - (t**2).sum(axis=-1))
    return np.where(squared > 0, numerator / np.sqrt(np.where(squared > 0, squared, 1.0)), 0.0)


Score = Callable[["np.ndarray", int], "np.ndarray"]  # ([..., C, C] confusion matrices, positive class) -> [...]


@dataclass(frozen=True)
class Metric:
    key: str  # 'f1': the stored columns val_f1 and test_f1, and the score's name (task_metrics.paired_bootstrap)
    words: str  # 'F1': how sentences name it, after 'validation' or 'test'
    label: str  # 'F1': how headings name it, after 'val' or 'test'; lower-cased, the report's columns (val_f1)
    higher_is_better: bool
    # Computed from a split's predicted labels; None where it is not (the loss comes from the logits).
    score: Score | None
    help: str = ""  # what --metric's help says after its name, e.g. 'positive class; macro with 3+ labels'
    # Recorded by every evaluation itself, in columns of their own since schema 1 (and for training, and
    # between epochs); the others are scored from each evaluation's predictions after it (task_metrics.scores),
    # in columns generated from this table (store/schema.py).
    built_in: bool = False
    # Not a mean over examples: two single runs are compared by a paired bootstrap over the examples
    # (task_metrics.paired_bootstrap) rather than McNemar, which tests who is right, example by example.
    bootstrapped: bool = False
    digits: int = 3  # decimals in the report's table
    spread_in_heading: bool = True  # the report's heading says 'mean±std' ('val F1\nmean±std'; else 'val\nloss')
    # Deficits to the best, and margins: in points of the metric (0.01 is one point), or, for a metric without
    # a fixed scale (a loss: 0.3 on one task, 1.1 on another), as a share of the best's value.
    relative: bool = False
    margin: float = 0.01  # the default --margin

    def __post_init__(self) -> None:
        if not self.built_in and self.score is None:
            raise ValueError(f"metric {self.key!r}: only a built-in metric (recorded by the evaluation) may lack a score")

    @property
    def name(self) -> str:
        """'val_f1': the selection metric, on validation."""
        return f"val_{self.key}"

    @property
    def test(self) -> str:
        """'test_f1': the same on test, read at the epoch validation chose."""
        return f"test_{self.key}"

    @property
    def columns(self) -> tuple[str, ...]:
        """Its stored columns, per epoch: ('val_f1', 'test_f1')."""
        return tuple(f"{split}_{self.key}" for split in SPLITS)

    @property
    def unit(self) -> str:
        """What its deficits are measured in: 'points', or "% of the best's loss"."""
        return f"% of the best's {self.words}" if self.relative else "points"


def named(name: str) -> Metric:
    """The metric of a selection name ('val_f1'); KeyError for a name outside the table."""
    for metric in TABLE:
        if metric.name == name:
            return metric
    raise KeyError(name)


def scored_columns() -> tuple[str, ...]:
    """The per-epoch columns of every metric scored from predictions after each evaluation (not built in): the
    validation ones, then the test ones (val_f1, val_mcc, test_f1, test_mcc), as schema 7 added F1 and MCC. The
    store generates them (store/schema.py), and the runtime fills them (task_metrics.scores)."""
    scored = [metric for metric in TABLE if not metric.built_in]
    return tuple(f"{split}_{metric.key}" for split in SPLITS for metric in scored)


def join_or(words: list[str]) -> str:
    """'a, b or c', as help text lists choices."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def choices_help() -> str:
    """--metric's choices: 'val_accuracy, val_loss, val_f1 (positive class; macro with 3+ labels) or val_mcc'."""
    return join_or([metric.name + (f" ({metric.help})" if metric.help else "") for metric in TABLE])


def race_help() -> str:
    """--race-metric's choices: the metrics scored from each example's prediction, whose deficit racing can bound
    ('val_accuracy, val_f1 or val_mcc (not val_loss: not kept per example)')."""
    unscored = [m.name for m in TABLE if m.score is None]
    return join_or([m.name for m in TABLE if m.score is not None]) + (
        f" (not {join_or(unscored)}: not kept per example)" if unscored else "")


def margin_help() -> str:
    """--margin's units: '0.01 (the default) is one point of accuracy, F1 or MCC; for val_loss a share of its
    loss (0.02)'."""
    points = [metric for metric in TABLE if not metric.relative]
    shares = [f"; for {m.name} a share of its {m.words} ({m.margin:g})" for m in TABLE if m.relative]
    return f"{points[0].margin:g} (the default) is one point of {join_or([m.words for m in points])}{''.join(shares)}"


ACCURACY = Metric("accuracy", "accuracy", "acc", True, _accuracy, built_in=True)
LOSS = Metric("loss", "loss", "loss", False, None, built_in=True, digits=4, spread_in_heading=False, relative=True,
              margin=0.02)  # 2% of the best's loss: about what a point of accuracy moves it by

# Every metric, in the order they are listed, offered and shown: one entry per metric. The first is the default.
TABLE: tuple[Metric, ...] = (
    ACCURACY,
    LOSS,
    Metric("f1", "F1", "F1", True, _f1, help="positive class; macro with 3+ labels", bootstrapped=True),
    Metric("mcc", "MCC", "MCC", True, _mcc, bootstrapped=True),
)
