"""The tables of the run database, as SQLAlchemy models, and the plain-dict shape callers get rows in.

Column names are a public contract (people query the file with the ``sqlite3`` CLI), so rename nothing
without bumping SCHEMA_VERSION (migrations.py), and add a column only with a migration that adds it to
existing databases.
"""

from __future__ import annotations

import math
import sys
from array import array
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    Text,
    TypeDecorator,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from accumbench.metrics import scored_columns
from accumbench.vocabulary import LIVE_STATUSES

METRIC_COLUMNS = scored_columns()  # each epoch's generated metric columns, in table order


class NonFiniteFloat(TypeDecorator):
    """A float column that keeps NaN (a diverged run is a result, not a crash).

    Python's sqlite3 driver binds float('nan') as NULL, which would make a
    diverged loss indistinguishable from "not measured". SQLite columns are
    dynamically typed, so we store NaN as the TEXT 'NaN' and turn it back into
    a float on the way out. +/-inf need no help: SQLite's REAL holds IEEE
    infinities natively, so they stay real numbers (MAX/ORDER BY still work).
    Other databases (e.g. PostgreSQL) store NaN natively and are left alone.
    """

    impl = Float
    cache_ok = True

    def bind_processor(self, dialect):
        # Overrides bind_processor rather than process_bind_param: Float's own
        # SQLite bind processor runs float() on the value and would undo 'NaN'.
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value):
            if value is None:
                return None
            return "NaN" if math.isnan(value) else float(value)

        return process

    def process_result_value(self, value, dialect):
        # Float's result processor already float()s 'NaN'; this keeps it explicit.
        return float(value) if isinstance(value, str) else value


class Base(DeclarativeBase):
    type_annotation_map = {float: NonFiniteFloat}


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(primary_key=True)


class Sweep(Base):
    """A named grid of cells. Added in schema version 3."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    grid_hash: Mapped[str]  # sha256 of the cells' sorted config hashes: the same name must mean the same grid
    spec_json: Mapped[str] = mapped_column(Text)  # the grid as the user gave it (axes and shared options)
    num_cells: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime)


_LIVE = "status IN (" + ", ".join(f"'{status}'" for status in LIVE_STATUSES) + ")"


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # The guard behind claiming: one live (RUNNING or FINISHED) run per sweep cell, enforced by
        # the database itself, so no interleaving of workers can run a cell twice. Runs of
        # `accumbench train` (sweep_id NULL) are free to repeat a configuration.
        Index("uq_runs_live_sweep_cell", "sweep_id", "config_hash", unique=True,
              sqlite_where=text(f"sweep_id IS NOT NULL AND {_LIVE}"),
              postgresql_where=text(f"sweep_id IS NOT NULL AND {_LIVE}")),
        # AUTOINCREMENT: ids of deleted runs are never handed out again, so a
        # checkpoint directory or a note that names "run 7" can't be mistaken.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    status: Mapped[str]
    backend: Mapped[str]
    model: Mapped[str]
    dataset: Mapped[str]
    seed: Mapped[int]
    lr: Mapped[float]
    effective_batch_size: Mapped[int]
    micro_batch_size: Mapped[int]
    accumulation_steps: Mapped[int]
    epochs: Mapped[int]
    max_length: Mapped[int]
    optimizer: Mapped[str]
    scheduler: Mapped[str]
    config_hash: Mapped[str] = mapped_column(index=True)
    config_json: Mapped[str] = mapped_column(Text)
    # Naive datetimes, always UTC (see _now).
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    torch_version: Mapped[str | None]
    transformers_version: Mapped[str | None]
    accelerate_version: Mapped[str | None]
    device: Mapped[str | None]
    num_train_samples: Mapped[int | None]
    num_val_samples: Mapped[int | None]
    num_test_samples: Mapped[int | None]
    num_labels: Mapped[int | None]
    best_epoch: Mapped[int | None]
    checkpoint_path: Mapped[str | None]
    # Added in schema version 2 (kept last: ALTER TABLE ADD COLUMN appends, so
    # fresh and migrated databases have the same column order).
    precision: Mapped[str | None]  # one of PRECISIONS
    world_size: Mapped[int | None]  # number of processes (GPUs) training together
    # Added in schema version 3. lr (above) is the rate actually used; base_lr is --lr before scaling.
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    attempt: Mapped[int | None]  # 1-based try of this sweep cell
    base_lr: Mapped[float | None]
    lr_scaling: Mapped[str | None]  # none, linear or sqrt
    base_batch_size: Mapped[int | None]
    budget: Mapped[str | None]  # epochs or steps
    train_steps: Mapped[int | None]  # optimizer steps planned for the whole run
    # Added in schema version 5.
    tokenize_seconds: Mapped[float | None]  # tokenizing the splits, or reading them from the cache
    tokens_cached: Mapped[bool | None]  # whether the tokenized splits came from the cache
    # Added in schema version 7: the text column(s) used ("premise,hypothesis" for a pair), how the
    # splits were made (e.g. "test split unlabelled: validation used as test; ..."), what loading
    # left out ("dropped 3 rows with no label"; '' for nothing), and the label whose F1 is reported
    # (NULL with more than two labels: their F1 is the macro average).
    text_columns: Mapped[str | None]
    split_source: Mapped[str | None] = mapped_column(Text)
    dropped_rows: Mapped[str | None]
    positive_label: Mapped[str | None]
    positive_class: Mapped[int | None]  # its label id (1 unless --positive-label names the other)
    # Added in schema version 8: a PRUNED run's racing decision (sweep --race): the epoch it stopped after,
    # the run of its group's best lr it lost to, the p-value, and the test ('mcnemar' on accuracy and loss,
    # 'bootstrap' on F1 and MCC). NULL for every other run.
    pruned_epoch: Mapped[int | None]
    pruned_by: Mapped[int | None]
    pruned_p: Mapped[float | None]
    pruned_test: Mapped[str | None]
    # Added in schema version 9: the optimizer settings the run used, each scaled with the EBS under its rule
    # (lr is above; weight_decay is the scaled one), the rules (lr_scaling is above) and their bundle's name
    # ('sde', 'sqrt lr, β2 half-life', 'none'). NULL for runs recorded before: those used Adam's defaults.
    beta1: Mapped[float | None]
    beta2: Mapped[float | None]
    eps: Mapped[float | None]
    weight_decay: Mapped[float | None]
    beta1_scaling: Mapped[str | None]  # none or half-life
    beta2_scaling: Mapped[str | None]  # none or half-life
    eps_scaling: Mapped[str | None]  # none or sqrt
    weight_decay_scaling: Mapped[str | None]  # none or timescale
    scaling_rule: Mapped[str | None]
    pruned_deficit: Mapped[float | None]  # racing's margin rule (schema 10): the deficit to the best, and its
    pruned_bound: Mapped[float | None]  # lower bound, which was above the margin
    cuda_graphs: Mapped[str | None]  # schema 12: --cuda-graphs as resolved, on or off (NULL: trained before it, eagerly)


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]  # 1-based
    train_loss: Mapped[float | None]
    train_accuracy: Mapped[float | None]
    val_loss: Mapped[float | None]
    val_accuracy: Mapped[float | None]
    test_loss: Mapped[float | None]
    test_accuracy: Mapped[float | None]
    optimizer_steps: Mapped[int]  # cumulative over the run
    samples_seen: Mapped[int]  # cumulative over the run
    epoch_seconds: Mapped[float]
    train_seconds: Mapped[float]
    eval_seconds: Mapped[float]
    samples_per_second: Mapped[float]
    peak_memory_mb: Mapped[float | None]  # CUDA max allocated, or peak RSS on CPU
    # Added in schema version 2: optimizer steps the fp16 GradScaler skipped
    # (inf/NaN gradients) in this epoch; NULL when not measured (no fp16).
    skipped_steps: Mapped[int | None]
    # Added in schema version 5: real (non-pad) tokens trained per second, and the share of padding
    # in the epoch's micro-batches (pad tokens / all tokens fed).
    tokens_per_second: Mapped[float | None]
    padding_fraction: Mapped[float | None]
    # Added in schema version 6: the gradient noise scale B_simple = tr(Σ)/|G|² at the epoch's end
    # (noise_scale.py), and its bias-corrected EMA components tr(Σ) and |G|² over noise_steps steps.
    # NULL when not measured (k = 1, --no-noise-scale); NaN when EMA(|G|²) <= 0 (noise swamps signal).
    noise_scale: Mapped[float | None]
    noise_trace: Mapped[float | None]
    noise_grad_sq: Mapped[float | None]
    noise_steps: Mapped[int | None]
    # The metrics scored from each evaluation's predictions, validation and test at the epoch's end: one column
    # per split and metric of metrics.TABLE that the evaluation does not record itself, generated from the
    # table (metrics.scored_columns): val_f1, val_mcc, test_f1, test_mcc (added in schema version 7), then any
    # metric's added since. F1 is the positive class's with two labels (runs.positive_label), else macro-F1; MCC
    # is Matthews' (Gorodkin's for more labels). NULL for runs recorded before their metric was.
    # They are no schema version: migrations.add_metric_columns adds a missing one at every writable open, and a
    # reader reads a column its database lacks as NULL (runs.RunRecords.epochs_of).
    locals().update({column: mapped_column(NonFiniteFloat, nullable=True, sort_order=1)  # after the columns above
                     for column in METRIC_COLUMNS})


class Step(Base):
    """One optimizer step (one accumulation group). Added in schema version 2."""

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]  # 1-based, cumulative over the run
    epoch: Mapped[int]  # 1-based
    samples_seen: Mapped[int]  # cumulative over the run, including this step
    loss: Mapped[float]  # mean training loss of the step's group (NaN kept)
    grad_norm: Mapped[float | None]  # total gradient norm before clipping
    lr: Mapped[float]  # learning rate used for this step
    # Added in schema version 6, every --noise-scale-every steps when the noise scale is measured:
    # mean |g_j|² over the micro-batches, this step's unbiased |G|² and tr(Σ) estimates, and B_simple
    # from the epoch's EMAs so far (the step's grad_norm² is the group's |G_big|²).
    micro_grad_sq: Mapped[float | None]
    noise_grad_sq: Mapped[float | None]
    noise_trace: Mapped[float | None]
    noise_scale: Mapped[float | None]
    effective_batch_size: Mapped[int | None]  # the EBS in force (--ebs-schedule); added in schema version 11


class StepEvaluation(Base):
    """A validation evaluation between epochs' ends (--eval-every N steps), for steps-to-target.
    Added in schema version 6; the evaluation at each epoch's end is in epochs."""

    __tablename__ = "evals"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]  # optimizer steps taken, cumulative over the run
    epoch: Mapped[int]  # 1-based: the epoch the step belongs to
    samples_seen: Mapped[int]
    val_loss: Mapped[float]
    val_accuracy: Mapped[float]


class Prediction(Base):
    """A run's predicted labels on one split (validation or test) at its best-validation epoch, for
    paired tests between runs (McNemar). Added in schema version 4.

    Compact: labels and predictions are little-endian uint16 arrays, one entry per example in split
    order (2 bytes each: 10 kB for a 5,000-example test set). split_hash fingerprints the split's
    texts and labels, so runs are only ever paired on the very same examples."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("run_id", "split"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str]  # validation or test
    epoch: Mapped[int]  # the best-validation epoch they come from
    num_examples: Mapped[int]
    split_hash: Mapped[str]
    labels: Mapped[bytes] = mapped_column(LargeBinary)
    predicted: Mapped[bytes] = mapped_column(LargeBinary)


class EpochPrediction(Base):
    """A run's predicted labels on one split at every epoch's end (Prediction keeps the checkpoint's
    epoch): the paired tests can then compare runs at the epoch each metric chooses, and any later
    replay at any epoch. The same compact encoding as Prediction. Added in schema version 7."""

    __tablename__ = "epoch_predictions"
    __table_args__ = (UniqueConstraint("run_id", "split", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    split: Mapped[str]  # validation or test
    epoch: Mapped[int]
    num_examples: Mapped[int]
    split_hash: Mapped[str]
    labels: Mapped[bytes] = mapped_column(LargeBinary)
    predicted: Mapped[bytes] = mapped_column(LargeBinary)


class SavedState(Base):
    """A run's model and optimizer state saved at a point of training (--save-states), to branch from
    (accumbench branch). Added in schema version 11; the state itself is a file beside the checkpoints."""

    __tablename__ = "states"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[float]  # epochs trained when saved (a fraction for a state saved mid-epoch)
    step: Mapped[int]  # optimizer steps taken
    samples_seen: Mapped[int]
    effective_batch_size: Mapped[int]  # the EBS in force when it was saved
    path: Mapped[str]


class Branch(Base):
    """A short branch of training from a saved state at one EBS and seed (accumbench branch): the loss it
    reaches after `samples` samples, for the critical batch size at that point. Added in schema version 11."""

    __tablename__ = "branches"
    __table_args__ = (UniqueConstraint("state_id", "effective_batch_size", "seed", "samples", "lr"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    state_id: Mapped[int] = mapped_column(ForeignKey("states.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    effective_batch_size: Mapped[int]
    seed: Mapped[int]
    lr: Mapped[float]
    samples: Mapped[int]  # trained in the branch, the same at every EBS
    steps: Mapped[int]  # optimizer steps the branch took
    train_loss: Mapped[float]
    val_loss: Mapped[float]
    val_accuracy: Mapped[float]
    seconds: Mapped[float]
    tolerance: Mapped[float]  # the branch command's: report reads the curve at the tolerance it was measured for
    created_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: _now())


SWEEP_COLUMNS = tuple(c.key for c in inspect(Sweep).column_attrs)
STATE_COLUMNS = tuple(c.key for c in inspect(SavedState).column_attrs)
BRANCH_COLUMNS = tuple(c.key for c in inspect(Branch).column_attrs)
RUN_COLUMNS = tuple(c.key for c in inspect(Run).column_attrs)
EPOCH_COLUMNS = tuple(c.key for c in inspect(Epoch).column_attrs)
STEP_COLUMNS = tuple(c.key for c in inspect(Step).column_attrs)
EVAL_COLUMNS = tuple(c.key for c in inspect(StepEvaluation).column_attrs)


def _now() -> datetime:
    """Now in UTC, without tzinfo: the DateTime columns hold naive UTC times (SQLite keeps no zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _pack(values: list[int]) -> bytes:
    """Class ids as little-endian uint16, whatever this machine's byte order."""
    packed = array("H", values)  # OverflowError beyond 65,535 classes
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _unpack(blob: bytes) -> list[int]:
    values = array("H")
    values.frombytes(blob)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _as_dict(obj: Base, columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in columns}
