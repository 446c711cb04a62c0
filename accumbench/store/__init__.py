"""The run database: the only package in accumbench that speaks SQL.

Every training run is one row in ``runs``, one row per finished epoch in
``epochs`` and one row per optimizer step in ``steps``. A sweep is a row in
``sweeps``; its runs point to it, and a worker claims a cell of the sweep by
inserting its RUNNING run inside one write transaction (see ``claim``).
Callers get plain dicts back, never ORM objects, so they need no session.
Column names are a public contract (people query the file with the
``sqlite3`` CLI), so rename nothing without bumping SCHEMA_VERSION.

Callers import from here only (``from accumbench.store import Store, ...``); inside, the package is

    schema.py       the tables (SQLAlchemy models), NaN-keeping floats, rows as dicts
    migrations.py   SCHEMA_VERSION: reading it, refusing a newer one, upgrading an older database in place
    connection.py   URLs and SQLite paths, engines and pragmas, write locks, reconnecting, the disk reserve
    runs.py         RunRecords: runs, epochs, steps, evaluations and predictions, written and read
    claims.py       SweepClaims: sweeps, and claiming their cells
    branches.py     BranchRecords: saved states and the branches trained from them (accumbench branch)
    __init__.py     Store (opening, the read-only check, closing) and NullStore
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from accumbench.errors import UserError
from accumbench.store.branches import BranchRecords
from accumbench.store.claims import SweepClaims
from accumbench.store.connection import (
    DEFAULT_DB,
    RESERVE_BYTES,
    _check_parent_dir,
    _lock_for_schema,
    database_name,
    display_url,
    portable_url,
    readonly_engine,
    readonly_sqlite_engine,
    reserve_space,
    resolve_db_url,
    sqlite_path,
    writable_engine,
)
from accumbench.store.migrations import SCHEMA_VERSION, _newer_schema_error, read_schema_version, upgrade
from accumbench.store.runs import RunRecords
from accumbench.store.schema import Base, SchemaVersion

# The run statuses and the words of their errors live in vocabulary; re-exported, as callers have long
# imported them from here.
from accumbench.vocabulary import (
    DIVERGED_PREFIX,
    FAILED,
    FINISHED,
    INTERRUPTED,
    KILLED,
    LIVE_STATUSES,
    RUNNING,
    STALE_ERROR,
    STATUSES,
    TERMINAL_STATUSES,
    TERMINATED,
)

__all__ = [
    "Store", "NullStore", "open_for_reading", "resolve_db_url", "sqlite_path", "display_url", "portable_url", "database_name", "DEFAULT_DB", "SCHEMA_VERSION", "RESERVE_BYTES",
    "RUNNING", "FINISHED", "FAILED", "KILLED", "STATUSES", "TERMINAL_STATUSES",
    "LIVE_STATUSES", "INTERRUPTED", "TERMINATED", "DIVERGED_PREFIX", "STALE_ERROR",
]


class Store(RunRecords, SweepClaims, BranchRecords):
    """A handle on one run database. Each write is its own short transaction."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> Store:
        """Create the database and tables if needed, check the schema version and
        upgrade an older database in place (see migrations.upgrade)."""
        path = sqlite_path(url)
        if path is not None:
            # Check read-only first: our connect hook switches the file to WAL,
            # which rewrites its header, and a newer database must stay untouched.
            cls.check_compatible(url)
        engine = writable_engine(url)
        try:
            with engine.connect() as conn:
                # Take the write lock up front: parallel workers opening a fresh
                # database would otherwise race to create the same tables.
                _lock_for_schema(conn)
                upgrade(conn, url)
                conn.commit()
        except BaseException:
            engine.dispose()
            raise
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
            engine = readonly_sqlite_engine(path)  # OSError for a directory
            try:
                with engine.connect() as conn:
                    tables = {name for (name,) in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'table'")}
                    found = read_schema_version(conn)
            finally:
                engine.dispose()
        except DBAPIError as exc:  # e.g. garbage: the driver's words, without SQLAlchemy's [SQL: ...]
            raise UserError(f"{path} is not an accumbench database: {exc.orig}") from None
        except (sqlite3.DatabaseError, OSError) as exc:  # e.g. a directory
            raise UserError(f"{path} is not an accumbench database: {exc}") from None
        ours = set(Base.metadata.tables)
        if SchemaVersion.__tablename__ not in tables and tables - ours:
            raise UserError(
                f"{path} is not an accumbench database: it is an SQLite database with other "
                f"tables ({', '.join(sorted(tables - ours))}); pass --db with another path"
            )
        if found is not None and found > SCHEMA_VERSION:
            raise _newer_schema_error(path, found)

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
        engine = readonly_engine(url)
        try:
            with engine.connect() as conn:
                found = read_schema_version(conn)
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


def open_for_reading(db: str | None) -> Store:
    """The store that --db names (or $ACCUMBENCH_DB, or ./runs.db), opened read-only: report and pick-best."""
    return Store.open_readonly(resolve_db_url(db))


class NullStore:
    """The store of the processes other than the main one of a multi-GPU run: only the main process
    records, so these writes do nothing. It has exactly the writes a training run makes, with Store's
    signatures (tests/test_store_runs.py holds them to it) and no catch-all __getattr__, so a misspelled or
    new call fails here as it would on a Store instead of passing unnoticed."""

    def update_run(self, run_id: int, **fields: Any) -> None:
        pass

    def save_predictions(self, run_id: int, split: str, epoch: int, split_hash: str,
                         labels: list[int], predicted: list[int], best: bool = True) -> None:
        pass

    def add_steps(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        pass

    def add_evals(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        pass

    def add_epoch(self, run_id: int, **metrics: Any) -> None:
        pass
