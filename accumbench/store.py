"""The run database: the only module in accumbench that speaks SQL.

Every training run is one row in ``runs``, one row per finished epoch in
``epochs`` and one row per optimizer step in ``steps``. A sweep is a row in
``sweeps``; its runs point to it, and a worker claims a cell of the sweep by
inserting its RUNNING run inside one write transaction (see ``claim``). Callers get plain dicts back, never ORM objects, so they need no
session. Column names are a public contract (people query the file with the
``sqlite3`` CLI), so rename nothing without bumping SCHEMA_VERSION.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import sqlite3
import sys
import time
from array import array
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from sqlalchemy import (
    DateTime, Float, ForeignKey, Index, LargeBinary, Text, TypeDecorator, UniqueConstraint,
    create_engine, delete, event, func, insert, inspect, make_url, select, text, update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from accumbench.config import PRECISIONS  # runs.precision (accelerate's mixed_precision names)
from accumbench.errors import StoreUnavailable, UserError, first_line

SCHEMA_VERSION = 6

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
STATUSES = (RUNNING, FINISHED, FAILED, KILLED)
TERMINAL_STATUSES = (FINISHED, FAILED, KILLED)
LIVE_STATUSES = (RUNNING, FINISHED)  # at most one such run per sweep cell
# The error of a run that ended KILLED says why. A user's stop (Ctrl-C, SIGTERM) is not the run's
# fault, so a sweep resumes such cells without counting a failed attempt; a stale heartbeat is
# (a crash, the OOM killer), so it counts.
INTERRUPTED = "interrupted (Ctrl-C)"
TERMINATED = "terminated (SIGTERM)"
# The error of a run whose loss became NaN or infinite: a result (the same config diverges again), not a fault.
DIVERGED_PREFIX = "diverged at step"
STALE_ERROR = "stale heartbeat"  # how a run's error begins when another worker gave it up for dead


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


SWEEP_COLUMNS = tuple(c.key for c in inspect(Sweep).column_attrs)
RUN_COLUMNS = tuple(c.key for c in inspect(Run).column_attrs)
EPOCH_COLUMNS = tuple(c.key for c in inspect(Epoch).column_attrs)
STEP_COLUMNS = tuple(c.key for c in inspect(Step).column_attrs)
EVAL_COLUMNS = tuple(c.key for c in inspect(StepEvaluation).column_attrs)


def _now() -> datetime:
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


def resolve_db_url(db: str | None) -> str:
    """None -> env ACCUMBENCH_DB, else './runs.db'. A string containing '://'
    is a SQLAlchemy URL used as is; otherwise a file path -> 'sqlite:///<abs>'."""
    if db is None:
        db = os.environ.get("ACCUMBENCH_DB") or "./runs.db"
    if "://" in db:
        return db
    return "sqlite:///" + str(pathlib.Path(db).expanduser().resolve())


def sqlite_path(url: str) -> pathlib.Path | None:
    """The file behind a sqlite URL; None for other databases and in-memory ones."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # sqlite URI filenames: not a plain path
        return None
    return pathlib.Path(database)


def display_url(url: str) -> str:
    """A database as it may be printed (a log, a SLURM output file, a shared terminal): the SQLite file's
    path, or the URL with its password masked."""
    path = sqlite_path(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def _newer_schema_error(where: Any, found: int) -> UserError:
    return UserError(
        f"{where} has schema version {found}, but this accumbench only knows "
        f"version {SCHEMA_VERSION}; upgrade accumbench (pip install -U accumbench) to use it"
    )


def _check_parent_dir(path: pathlib.Path) -> None:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UserError(
            f"database directory {parent} does not exist; create it or pass --db with another path"
        )


def _readonly_uri(path: pathlib.Path) -> str:
    """A sqlite URI that reads `path` without creating or writing any file."""
    uri = path.absolute().as_uri()
    with path.open("rb") as f:
        header = f.read(100)
    wal_mode = header.startswith(b"SQLite format 3\0") and header[18:20] == b"\2\2"
    if wal_mode and not pathlib.Path(f"{path}-wal").exists():
        # A read-only connection to a WAL database would leave empty -wal/-shm
        # files behind. With no -wal file everything is in the main file, and
        # writers touch only the WAL until a checkpoint, so immutable is safe.
        return uri + "?immutable=1"
    return uri + "?mode=ro"  # never creates the file or writes to it


def _add_missing_columns(conn: Connection, table: Any, names: tuple[str, ...]) -> None:
    """ALTER TABLE ADD COLUMN each of `names` that `table` lacks (idempotent).

    The columns must be nullable and without server defaults: that is all
    ADD COLUMN can do on every database (SQLite in particular).
    """
    existing = {col["name"] for col in inspect(conn).get_columns(table.name)}
    preparer = conn.dialect.identifier_preparer
    for name in names:
        if name in existing:
            continue
        column = table.c[name]
        assert column.nullable and column.server_default is None, column
        references = ""
        for fk in column.foreign_keys:  # SQLite allows REFERENCES on ADD COLUMN when the default is NULL
            references = (f" REFERENCES {preparer.format_table(fk.column.table)} "
                          f"({preparer.format_column(fk.column)})")
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.format_table(table)} "
            f"ADD COLUMN {preparer.format_column(column)} {column.type.compile(dialect=conn.dialect)}{references}"
        )


def _migrate_to_2(conn: Connection) -> None:
    """1 -> 2: per-step rows (table steps, made by create_all), runs.precision,
    runs.world_size and epochs.skipped_steps."""
    _add_missing_columns(conn, Run.__table__, ("precision", "world_size"))
    _add_missing_columns(conn, Epoch.__table__, ("skipped_steps",))


def _migrate_to_3(conn: Connection) -> None:
    """2 -> 3: sweeps (table sweeps, made by create_all), the runs' sweep columns and lr/budget
    columns, and the one-live-run-per-cell index (create_all skips indexes of existing tables)."""
    _add_missing_columns(conn, Run.__table__, ("sweep_id", "attempt", "base_lr", "lr_scaling", "base_batch_size",
                                               "budget", "train_steps"))
    for index in Run.__table__.indexes:
        index.create(conn, checkfirst=True)


def _migrate_to_4(conn: Connection) -> None:
    """3 -> 4: the predictions table only, which create_all makes."""


def _migrate_to_5(conn: Connection) -> None:
    """4 -> 5: tokenization time and cache use per run; tokens/s and padding per epoch."""
    _add_missing_columns(conn, Run.__table__, ("tokenize_seconds", "tokens_cached"))
    _add_missing_columns(conn, Epoch.__table__, ("tokens_per_second", "padding_fraction"))


def _migrate_to_6(conn: Connection) -> None:
    """5 -> 6: the gradient noise scale per epoch and per step; evals (made by create_all)."""
    _add_missing_columns(conn, Epoch.__table__, ("noise_scale", "noise_trace", "noise_grad_sq", "noise_steps"))
    _add_missing_columns(conn, Step.__table__, ("micro_grad_sq", "noise_grad_sq", "noise_trace", "noise_scale"))


# Why migrations rather than "delete the old file": a run database holds results
# that took GPU-hours to produce, so a new accumbench upgrades it in place.
# Store.open runs these in order (found+1 .. SCHEMA_VERSION) inside its single
# BEGIN IMMEDIATE transaction, after create_all has made any missing tables, so an
# upgrade is all-or-nothing and parallel workers can't both run it. Each function
# takes the database from version N-1 to N and must be idempotent (inspect before
# altering). A new schema version = bump SCHEMA_VERSION + add one entry here.
_MIGRATIONS = {2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4, 5: _migrate_to_5, 6: _migrate_to_6}
assert set(_MIGRATIONS) == set(range(2, SCHEMA_VERSION + 1)), "one migration per version"


_BUSY_TIMEOUT_S = 30.0


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first, so switching to WAL waits for a busy writer instead of failing.
    cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
    # WAL: readers (e.g. `accumbench list` or the sqlite3 CLI) don't block a training run.
    # Switching a rollback-journal file (a fresh or hand-made one) to WAL needs an
    # exclusive lock, and SQLite may return "database is locked" at once without
    # calling the busy handler (to avoid a deadlock) while another connection holds
    # the write lock, e.g. parallel workers opening the same file. So retry it here.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    # Off by default in SQLite, per connection; needed for ON DELETE CASCADE.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Any constant: the key of the PostgreSQL advisory lock that serialises schema creation and upgrades.
_SCHEMA_LOCK_KEY = 0x616363756D  # "accum"


def _lock_for_schema(conn: Connection) -> None:
    """Begin the transaction that creates or upgrades the schema, holding a database-wide lock."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


def _begin_write(conn: Connection) -> None:
    """Begin a transaction that takes the write lock at once rather than at its first write.

    SQLite's default deferred BEGIN lets two workers both read "cell 3 is free" and then race to
    write; BEGIN IMMEDIATE makes the second wait (busy_timeout) until the first commits, and then
    read the first one's claim. On PostgreSQL the claim locks the sweep's row instead (FOR UPDATE).
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# How long a store call keeps trying to reach a database server that went away (a PostgreSQL restart,
# a failover, a network blip) before it gives up: long enough for a restart, short against a run.
RECONNECT_SECONDS = float(os.environ.get("ACCUMBENCH_RECONNECT_SECONDS", "60"))
_LOST_CONNECTION = ("connection refused", "could not connect", "server closed the connection", "terminating connection",
                    "the database system is starting up", "the database system is shutting down",
                    "the connection is closed", "connection is lost", "no connection to the server",
                    "consuming input failed", "connection already closed")


def _lost_connection(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or any(sign in str(exc).lower() for sign in _LOST_CONNECTION))


def _disk_full(exc: BaseException) -> bool:
    """The database cannot be written where it lives: a full disk (SQLite's SQLITE_FULL, PostgreSQL's
    'could not extend file'), or a write refused by the disk (SQLite reports a file-size limit so)."""
    return isinstance(exc, DBAPIError) and any(
        sign in str(exc).lower() for sign in ("database or disk is full", "no space left on device", "file too large",
                                              "could not extend file", "disk i/o error"))


def _resilient(idempotent: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A store call that survives its server going away: on a lost connection it is retried (SQLAlchemy
    has dropped the dead connection; the next attempt connects anew) with a growing pause, for up to
    RECONNECT_SECONDS. A disk that is full, or a server still gone after that, raises StoreUnavailable.

    Each call is one transaction, so a retry redoes it whole. An insert whose commit reached the server
    just before the connection broke then finds its own row: for an `idempotent` insert, one whose rows
    carry a unique key (epochs, steps, evaluations, predictions), that IntegrityError on a retry means
    it is done."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: "Store", *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            pause, retried = 0.25, False
            while True:
                try:
                    result = method(self, *args, **kwargs)
                except IntegrityError:
                    if retried and idempotent:
                        return None
                    raise
                except DBAPIError as exc:
                    why = first_line(getattr(exc, "orig", None) or exc)  # the driver's words, without [SQL: ...]
                    if _disk_full(exc):
                        raise StoreUnavailable(
                            f"the run database {display_url(self.url)} cannot be written ({why}): is its disk "
                            "full? Free space, then run the same command again") from exc
                    if not _lost_connection(exc):
                        raise
                    if time.monotonic() + pause > started + RECONNECT_SECONDS:
                        raise StoreUnavailable(
                            f"lost the run database {display_url(self.url)} for {RECONNECT_SECONDS:.0f} s ({why}); "
                            "when it is back, run the same command again") from exc
                    if not retried:
                        print(f"accumbench: lost the run database ({why}); reconnecting for up to "
                              f"{RECONNECT_SECONDS:.0f} s", file=sys.stderr)
                    time.sleep(pause)
                    pause, retried = min(pause * 2, 5.0), True
                    continue
                if retried:
                    print(f"accumbench: reconnected to the run database after {time.monotonic() - started:.1f} s",
                          file=sys.stderr)
                return result

        return call

    return decorate


RESERVE_BYTES = 1 << 20  # beside an SQLite file: enough to record, on a full disk, how the runs ended


def _reserve_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + "-reserve")


def reserve_space(path: pathlib.Path) -> None:
    """Keep RESERVE_BYTES on the database's disk as a file (runs.db-reserve), made again whenever the
    store is opened with room for it. When the disk fills mid-run, make_room deletes it, and the run can
    still be recorded FAILED rather than left RUNNING. Best effort: no room, no reserve."""
    reserve = _reserve_path(path)
    if reserve.exists():
        return
    try:
        with open(reserve, "wb") as out:
            out.write(b"\0" * RESERVE_BYTES)
    except OSError:
        reserve.unlink(missing_ok=True)


class Store:
    """A handle on one run database. Each write is its own short transaction."""

    def __init__(self, url: str, engine) -> None:
        self.url = url
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> Store:
        """Create the database and tables if needed, check the schema version and
        upgrade an older database in place (see _MIGRATIONS)."""
        if sqlite_path(url) is not None:
            # Check read-only first: our connect hook switches the file to WAL,
            # which rewrites its header, and a newer database must stay untouched.
            cls.check_compatible(url)
        # pool_pre_ping: a pooled connection to a server that restarted is noticed at checkout, not mid-write.
        engine = create_engine(url) if sqlite_path(url) is not None else create_engine(url, pool_pre_ping=True)
        is_sqlite = engine.dialect.name == "sqlite"
        if is_sqlite:
            event.listen(engine, "connect", _set_sqlite_pragmas)
        try:
            with engine.connect() as conn:
                # Take the write lock up front: parallel workers opening a fresh
                # database would otherwise race to create the same tables.
                _lock_for_schema(conn)
                # Same check for non-sqlite databases, before create_all touches anything.
                found = None
                if inspect(conn).has_table(SchemaVersion.__tablename__):
                    found = conn.scalar(select(func.max(SchemaVersion.version)))
                    if found is not None and found > SCHEMA_VERSION:
                        raise _newer_schema_error(url, found)
                Base.metadata.create_all(conn)  # also the tables a migration adds
                if found is not None and found < SCHEMA_VERSION:
                    for version in range(found + 1, SCHEMA_VERSION + 1):
                        _MIGRATIONS[version](conn)
                    conn.execute(delete(SchemaVersion))
                if found is None or found < SCHEMA_VERSION:
                    conn.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION))
                conn.commit()
        except BaseException:
            engine.dispose()
            raise
        path = sqlite_path(url)
        if path is not None:  # a file, not an in-memory database
            reserve_space(path)
        return cls(url, engine)

    @classmethod
    def check_compatible(cls, url: str) -> None:
        """Read-only pre-flight for sqlite files: creates and modifies nothing.

        Raises UserError for a missing parent directory, a file that is not an
        SQLite database (or is someone else's), or a newer schema version. An
        older version is fine: open() upgrades it (this check never does).
        """
        path = sqlite_path(url)
        if path is None:
            return
        _check_parent_dir(path)
        if not path.exists():
            return
        try:
            conn = sqlite3.connect(_readonly_uri(path), uri=True)
            try:
                tables = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                found = None
                if SchemaVersion.__tablename__ in tables:
                    found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            finally:
                conn.close()
        except (sqlite3.DatabaseError, OSError) as exc:  # e.g. garbage, or a directory
            raise UserError(f"{path} is not an accumbench database: {exc}") from None
        ours = set(Base.metadata.tables)
        if SchemaVersion.__tablename__ not in tables and tables - ours:
            raise UserError(
                f"{path} is not an accumbench database: it is an SQLite database with other "
                f"tables ({', '.join(sorted(tables - ours))}); pass --db with another path"
            )
        if found is not None and found > SCHEMA_VERSION:
            raise _newer_schema_error(path, found)

    @_resilient()
    def create_run(
        self, *, config_json: str, config_hash: str, backend: str, model: str, dataset: str,
        seed: int, lr: float, effective_batch_size: int, micro_batch_size: int,
        accumulation_steps: int, epochs: int, max_length: int, optimizer: str, scheduler: str,
        torch_version: str | None = None, transformers_version: str | None = None,
        accelerate_version: str | None = None, device: str | None = None,
        num_train_samples: int | None = None, num_val_samples: int | None = None,
        num_test_samples: int | None = None, num_labels: int | None = None,
        precision: str | None = None, world_size: int | None = None,
        base_lr: float | None = None, lr_scaling: str | None = None, base_batch_size: int | None = None,
        budget: str | None = None, train_steps: int | None = None,
        tokenize_seconds: float | None = None, tokens_cached: bool | None = None,
    ) -> int:
        """Insert a run with status RUNNING; created/started/heartbeat = now. Returns its id.
        (Runs of a sweep are inserted by claim() instead.)"""
        fields = dict(locals())  # exactly the keyword arguments above: all run columns
        del fields["self"]
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"create_run: precision must be one of {PRECISIONS} or None, not {precision!r}")
        now = _now()
        run = Run(status=RUNNING, created_at=now, started_at=now, heartbeat_at=now, **fields)
        with self._session.begin() as session:
            session.add(run)
        return run.id

    @_resilient(idempotent=True)
    def add_epoch(self, run_id: int, **metrics: Any) -> None:
        """Record one finished epoch and bump the run's heartbeat, atomically.

        A duplicate (run_id, epoch) raises sqlalchemy.exc.IntegrityError.
        """
        with self._session.begin() as session:
            run = self._get(session, run_id)
            session.add(Epoch(run_id=run_id, **metrics))  # unknown key -> TypeError
            run.heartbeat_at = _now()

    @_resilient(idempotent=True)
    def add_steps(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Record many optimizer steps and bump the run's heartbeat, in one transaction.

        Each row has step, epoch, samples_seen, loss, lr and optionally grad_norm
        (run_id is filled in). One executemany INSERT, so hundreds of rows per
        epoch cost one commit. All or nothing: a duplicate (run_id, step) raises
        sqlalchemy.exc.IntegrityError and inserts none of the rows.
        """
        allowed = set(STEP_COLUMNS) - {"id", "run_id"}
        for row in rows:
            unknown = set(row) - allowed
            if unknown:
                raise TypeError(f"add_steps: not a step column: {', '.join(sorted(unknown))}")
        with self._session.begin() as session:
            run = self._get(session, run_id)
            if rows:
                session.execute(insert(Step), [{**row, "run_id": run_id} for row in rows])
            run.heartbeat_at = _now()

    @_resilient(idempotent=True)
    def add_evals(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Record validation evaluations (step, epoch, samples_seen, val_loss, val_accuracy), in one transaction."""
        allowed = set(EVAL_COLUMNS) - {"id", "run_id"}
        for row in rows:
            if set(row) != allowed:
                raise TypeError(f"add_evals: an evaluation has exactly the columns {', '.join(sorted(allowed))}")
        if not rows:
            return
        with self._session.begin() as session:
            self._get(session, run_id)
            session.execute(insert(StepEvaluation), [{**row, "run_id": run_id} for row in rows])

    @_resilient()
    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set arbitrary run columns, e.g. best_epoch=3, checkpoint_path='...'."""
        unknown = set(fields) - (set(RUN_COLUMNS) - {"id"})
        if unknown:
            raise TypeError(f"update_run: not an updatable run column: {', '.join(sorted(unknown))}")
        with self._session.begin() as session:
            run = self._get(session, run_id)
            for name, value in fields.items():
                setattr(run, name, value)

    @_resilient()
    def finish_run(self, run_id: int, status: str, error: str | None = None) -> bool:
        """Move a RUNNING run to a terminal status (FINISHED, FAILED or KILLED), with finished_at=now
        and error. Returns False, changing nothing, when the run had already ended: e.g. another
        worker marked it KILLED because its heartbeat had gone stale. KeyError if there is no such run."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"finish_run: status must be one of {TERMINAL_STATUSES}, not {status!r}")
        with self._session.begin() as session:
            self._get(session, run_id)
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RUNNING)
                .values(status=status, finished_at=_now(), error=error)
            )
            return result.rowcount == 1

    def make_room(self) -> None:
        """On a full disk, free the space kept in reserve beside an SQLite file (reserve_space), so that
        the write that says why a run ended still fits. A server keeps its own: nothing to do."""
        path = sqlite_path(self.url)
        if path is not None:
            _reserve_path(path).unlink(missing_ok=True)

    @_resilient()
    def heartbeat(self, run_id: int) -> bool:
        """Say the run is alive (heartbeat_at=now). False when it is no longer RUNNING, i.e. another
        worker has given it up for dead: the caller should stop training it."""
        with self._session.begin() as session:
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RUNNING).values(heartbeat_at=_now())
            )
            return result.rowcount == 1

    # --- sweeps ---------------------------------------------------------------------------------

    @_resilient()
    def open_sweep(self, name: str, grid_hash: str, spec_json: str, num_cells: int) -> dict[str, Any]:
        """The sweep called `name`, created if new. Every worker of a sweep calls this with the same
        grid; a different grid under an existing name is refused (UserError), as cells would be mixed."""
        for _ in range(2):  # a second try reads the row that a concurrent worker just inserted
            try:
                with self.engine.connect() as conn:
                    _begin_write(conn)
                    row = conn.execute(select(Sweep).where(Sweep.name == name)).first()
                    if row is None:
                        conn.execute(insert(Sweep).values(name=name, grid_hash=grid_hash, spec_json=spec_json,
                                                          num_cells=num_cells, created_at=_now()))
                        row = conn.execute(select(Sweep).where(Sweep.name == name)).first()
                    conn.commit()
            except IntegrityError:
                continue
            sweep = dict(row._mapping)
            if sweep["grid_hash"] != grid_hash:
                raise UserError(
                    f"sweep '{name}' already exists with a different grid ({sweep['num_cells']} cells); "
                    "rerun it with its own options, or pass a new --name"
                )
            return sweep
        raise RuntimeError(f"open_sweep: could not create or read sweep {name!r}")

    def get_sweep(self, name: str) -> dict[str, Any] | None:
        with self._session() as session:
            sweep = session.scalars(select(Sweep).where(Sweep.name == name)).first()
            return None if sweep is None else _as_dict(sweep, SWEEP_COLUMNS)

    @_resilient()
    def sweep_runs(self, sweep_id: int) -> list[dict[str, Any]]:
        """Every run of the sweep, oldest first."""
        query = select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)
        with self._session() as session:
            return [_as_dict(run, RUN_COLUMNS) for run in session.scalars(query)]

    @_resilient()
    def claim(self, sweep_id: int, choose: Callable[[list[dict[str, Any]]], Optional[dict[str, Any]]],
              stale_after: float) -> tuple[Optional[int], list[int]]:
        """Claim the next cell of a sweep for this worker, atomically.

        In one write transaction: mark the sweep's RUNNING runs whose heartbeat is older than
        `stale_after` seconds as KILLED (their worker died), read all its runs, and let `choose`
        (the sweep's policy: which cell, which attempt) return the run columns of the cell to run
        next, or None when nothing is left. That run is inserted as RUNNING. Returns (run id or
        None, ids of the runs marked KILLED). The one-live-run-per-cell index backs this up: a
        second live run of a cell raises IntegrityError rather than running the cell twice.
        """
        now = _now()
        with self.engine.connect() as conn:
            _begin_write(conn)
            conn.execute(select(Sweep.id).where(Sweep.id == sweep_id).with_for_update())  # PostgreSQL: the lock
            stale = conn.execute(
                select(Run.id, Run.heartbeat_at).where(
                    Run.sweep_id == sweep_id, Run.status == RUNNING,
                    Run.heartbeat_at < now - timedelta(seconds=stale_after))
            ).all()
            for run_id, beat in stale:
                silent = (now - beat).total_seconds()
                conn.execute(update(Run).where(Run.id == run_id).values(
                    status=KILLED, finished_at=now,
                    error=f"{STALE_ERROR}: no heartbeat for {silent:.0f} s (its worker died or lost the database)"))
            runs = [dict(row._mapping) for row in
                    conn.execute(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id))]
            columns = choose(runs)
            run_id = None
            if columns is not None:
                unknown = set(columns) - set(RUN_COLUMNS)
                if unknown:
                    raise TypeError(f"claim: not a run column: {', '.join(sorted(unknown))}")
                result = conn.execute(insert(Run).values(
                    **columns, sweep_id=sweep_id, status=RUNNING, created_at=now, started_at=now, heartbeat_at=now))
                run_id = result.inserted_primary_key[0]
            conn.commit()
        return run_id, [run_id for run_id, _ in stale]

    @_resilient()
    def get_run(self, run_id: int) -> dict[str, Any]:
        """All columns of one run; KeyError if there is no such run."""
        with self._session() as session:
            return _as_dict(self._get(session, run_id), RUN_COLUMNS)

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs (optionally only those with `status`), oldest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"list_runs: status must be one of {STATUSES}, not {status!r}")
        query = select(Run).order_by(Run.id)
        if status is not None:
            query = query.where(Run.status == status)
        with self._session() as session:
            return [_as_dict(run, RUN_COLUMNS) for run in session.scalars(query)]

    @_resilient()
    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """The run's epoch rows ordered by epoch (empty if none, or no such run)."""
        query = select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)
        with self._session() as session:
            return [_as_dict(row, EPOCH_COLUMNS) for row in session.scalars(query)]

    def steps(self, run_id: int) -> list[dict[str, Any]]:
        """The run's step rows ordered by step (empty if none, or no such run)."""
        query = select(Step).where(Step.run_id == run_id).order_by(Step.step)
        with self._session() as session:
            return [_as_dict(row, STEP_COLUMNS) for row in session.scalars(query)]

    @_resilient(idempotent=True)
    def save_predictions(self, run_id: int, split: str, epoch: int, split_hash: str,
                         labels: list[int], predicted: list[int]) -> None:
        """Record (replacing any earlier ones) the run's predictions on `split` at `epoch`."""
        if len(labels) != len(predicted):
            raise ValueError("save_predictions: labels and predicted differ in length")
        with self._session.begin() as session:
            self._get(session, run_id)
            session.execute(delete(Prediction).where(Prediction.run_id == run_id, Prediction.split == split))
            session.add(Prediction(run_id=run_id, split=split, epoch=epoch, num_examples=len(labels),
                                   split_hash=split_hash, labels=_pack(labels), predicted=_pack(predicted)))

    def predictions(self, run_ids: list[int], split: str) -> dict[int, dict[str, Any]]:
        """{run id: {epoch, split_hash, labels, predicted}} for the runs that have predictions on `split`."""
        query = select(Prediction).where(Prediction.run_id.in_(run_ids), Prediction.split == split)
        with self._session() as session:
            return {p.run_id: dict(epoch=p.epoch, split_hash=p.split_hash, labels=_unpack(p.labels),
                                   predicted=_unpack(p.predicted)) for p in session.scalars(query)}

    # --- reading for reports (report and pick-best open the store with open_readonly) -------------

    def find_runs(self, status: str | None = FINISHED, sweep: str | None = None, model: str | None = None,
                  backend: str | None = None) -> list[dict[str, Any]]:
        """Runs matching every filter given, oldest first. `sweep` is a sweep's name."""
        query = select(Run).order_by(Run.id)
        if status is not None:
            query = query.where(Run.status == status)
        if sweep is not None:
            query = query.join(Sweep, Sweep.id == Run.sweep_id).where(Sweep.name == sweep)
        if model is not None:
            query = query.where(Run.model == model)
        if backend is not None:
            query = query.where(Run.backend == backend)
        with self._session() as session:
            return [_as_dict(run, RUN_COLUMNS) for run in session.scalars(query)]

    def epochs_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = select(Epoch).where(Epoch.run_id.in_(run_ids)).order_by(Epoch.run_id, Epoch.epoch)
        with self._session() as session:
            return [_as_dict(row, EPOCH_COLUMNS) for row in session.scalars(query)]

    def steps_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = select(Step).where(Step.run_id.in_(run_ids)).order_by(Step.run_id, Step.step)
        with self._session() as session:
            return [_as_dict(row, STEP_COLUMNS) for row in session.scalars(query)]

    def evals_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = (select(StepEvaluation).where(StepEvaluation.run_id.in_(run_ids))
                 .order_by(StepEvaluation.run_id, StepEvaluation.step))
        with self._session() as session:
            return [_as_dict(row, EVAL_COLUMNS) for row in session.scalars(query)]

    def list_sweeps(self) -> list[dict[str, Any]]:
        with self._session() as session:
            return [_as_dict(sweep, SWEEP_COLUMNS) for sweep in session.scalars(select(Sweep).order_by(Sweep.id))]

    @classmethod
    def open_readonly(cls, url: str) -> Store:
        """A store that can only read: for report and pick-best, which must never change (or create,
        or upgrade) a database that training runs may be writing to. UserError when there is nothing
        to read, or the schema is not this accumbench's."""
        path = sqlite_path(url)
        if path is not None:
            if not path.is_file():
                raise UserError(f"no run database at {path}; train first (accumbench train or sweep) or pass --db")
            cls.check_compatible(url)
            uri = _readonly_uri(path)
            engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
        elif make_url(url).get_backend_name() == "postgresql":
            engine = create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
        else:
            engine = create_engine(url)
        try:
            with engine.connect() as conn:
                found = None
                if inspect(conn).has_table(SchemaVersion.__tablename__):
                    found = conn.scalar(select(func.max(SchemaVersion.version)))
        except BaseException:
            engine.dispose()
            raise
        if found != SCHEMA_VERSION:
            engine.dispose()
            where = path or url
            if found is None:
                raise UserError(f"{where} has no accumbench runs yet; train first (accumbench train or sweep)")
            if found > SCHEMA_VERSION:
                raise _newer_schema_error(where, found)
            raise UserError(f"{where} has schema version {found}, older than this accumbench's {SCHEMA_VERSION}; "
                            "any accumbench train or sweep on it upgrades it in place")
        return cls(url, engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @staticmethod
    def _get(session, run_id: int) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run with id {run_id}")
        return run
