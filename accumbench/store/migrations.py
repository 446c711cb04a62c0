"""The schema's version: reading it, refusing a newer one, and upgrading an older database in place.

This is the one place that reads the stored version (read_schema_version): Store.open before it
upgrades, Store.check_compatible before anything touches an SQLite file, and Store.open_readonly
before a report reads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, inspect, select
from sqlalchemy.engine import Connection

from accumbench.errors import UserError
from accumbench.store.schema import METRIC_COLUMNS, Base, Epoch, Run, SchemaVersion, Step

SCHEMA_VERSION = 12


def read_schema_version(conn: Connection) -> int | None:
    """The database's schema version; None when it has no schema_version table (a new database, or
    someone else's) or an empty one."""
    if not inspect(conn).has_table(SchemaVersion.__tablename__):
        return None
    return conn.scalar(select(func.max(SchemaVersion.version)))


def _newer_schema_error(where: Any, found: int) -> UserError:
    return UserError(
        f"{where} has schema version {found}, but this accumbench only knows "
        f"version {SCHEMA_VERSION}; upgrade accumbench (pip install -U accumbench) to use it"
    )


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


def _migrate_to_7(conn: Connection) -> None:
    """6 -> 7: sentence pairs and task metrics: the runs' text columns, split source, dropped rows and
    positive label; epoch_predictions (made by create_all). F1 and MCC per epoch (val_f1, val_mcc, test_f1,
    test_mcc) came with it too: add_metric_columns adds them, as every metric's."""
    _add_missing_columns(conn, Run.__table__, ("text_columns", "split_source", "dropped_rows", "positive_label",
                                               "positive_class"))


def _migrate_to_8(conn: Connection) -> None:
    """7 -> 8: racing (sweep --race): a PRUNED run's decision."""
    _add_missing_columns(conn, Run.__table__, ("pruned_epoch", "pruned_by", "pruned_p", "pruned_test"))


def _migrate_to_9(conn: Connection) -> None:
    """8 -> 9: every batch-size-dependent optimizer setting as used, and the rules that scaled them."""
    _add_missing_columns(conn, Run.__table__, ("beta1", "beta2", "eps", "weight_decay", "beta1_scaling",
                                               "beta2_scaling", "eps_scaling", "weight_decay_scaling", "scaling_rule"))


def _migrate_to_10(conn: Connection) -> None:
    """9 -> 10: racing by the margin: a PRUNED run's deficit to the best and its lower bound."""
    _add_missing_columns(conn, Run.__table__, ("pruned_deficit", "pruned_bound"))


def add_metric_columns(conn: Connection) -> None:
    """Each epoch's columns of every metric of metrics.TABLE scored from predictions (schema.METRIC_COLUMNS)
    that the database lacks: so adding a metric needs no migration of its own, and no schema version. That is
    honest because they change nothing else: nullable, no default, read by name; an accumbench that knows fewer
    metrics ignores the columns it doesn't know, and a reader of a database that lacks some reads them as NULL
    (runs.RunRecords.epochs_of), as for runs recorded before the metric was."""
    _add_missing_columns(conn, Epoch.__table__, METRIC_COLUMNS)


def _migrate_to_11(conn: Connection) -> None:
    """10 -> 11: steps.effective_batch_size (--ebs-schedule; earlier steps had the run's EBS), and the tables
    states and branches (accumbench branch), made by create_all."""
    _add_missing_columns(conn, Step.__table__, ("effective_batch_size",))


def _migrate_to_12(conn: Connection) -> None:
    """11 -> 12: runs.cuda_graphs, --cuda-graphs as resolved (earlier runs trained eagerly: NULL)."""
    _add_missing_columns(conn, Run.__table__, ("cuda_graphs",))


# Why migrations rather than "delete the old file": a run database holds results
# that took GPU-hours to produce, so a new accumbench upgrades it in place.
# upgrade() runs these in order (found+1 .. SCHEMA_VERSION) inside Store.open's single
# schema transaction (BEGIN IMMEDIATE on SQLite), after create_all has made any missing
# tables, so an upgrade is all-or-nothing and parallel workers can't both run it. Each function
# takes the database from version N-1 to N and must be idempotent (inspect before
# altering). A new schema version = bump SCHEMA_VERSION + add one entry here.
_MIGRATIONS = {2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4, 5: _migrate_to_5, 6: _migrate_to_6,
               7: _migrate_to_7, 8: _migrate_to_8, 9: _migrate_to_9,
               10: _migrate_to_10, 11: _migrate_to_11, 12: _migrate_to_12}
assert set(_MIGRATIONS) == set(range(2, SCHEMA_VERSION + 1)), "one migration per version"


def upgrade(conn: Connection, where: Any) -> None:
    """Bring the database behind `conn` to SCHEMA_VERSION: create what is missing, run the migrations
    from its version on, and record the version. UserError (via _newer_schema_error, naming `where`)
    for a newer schema, before anything is touched.

    Runs inside the caller's transaction, which holds the schema lock (connection._lock_for_schema)
    and which the caller commits: parallel workers then can't race to create or upgrade the same tables,
    and a failed migration leaves the database as it was. The metrics' columns are checked at every open,
    whatever the version (add_metric_columns)."""
    # Checked here too (check_compatible covers SQLite files only), before create_all touches anything.
    found = read_schema_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise _newer_schema_error(where, found)
    Base.metadata.create_all(conn)  # also the tables a migration adds
    if found is not None and found < SCHEMA_VERSION:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[version](conn)
        conn.execute(delete(SchemaVersion))
    if found is not None:  # (create_all made a new database's)
        add_metric_columns(conn)
    if found is None or found < SCHEMA_VERSION:
        conn.execute(insert(SchemaVersion).values(version=SCHEMA_VERSION))
