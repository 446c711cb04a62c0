"""Reaching the run database: where it is (URLs and SQLite paths), how connections are made (SQLite's
pragmas, read-only engines), the locks that writers take, surviving a server that goes away, and the
space kept in reserve for a full disk.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from accumbench.errors import StoreUnavailable, UserError, first_line

DEFAULT_DB = "runs.db"  # the store when neither --db nor $ACCUMBENCH_DB names one, in the working directory


def resolve_db_url(db: str | None) -> str:
    """None -> env ACCUMBENCH_DB, else './runs.db'. A string containing '://'
    is a SQLAlchemy URL used as is; otherwise a file path -> 'sqlite:///<abs>'."""
    if db is None:
        db = os.environ.get("ACCUMBENCH_DB") or f"./{DEFAULT_DB}"
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


def portable_url(url: str) -> str:
    """A database as a page handed to someone else may name it: the SQLite file by its name alone (its
    directory says where it lives on this machine, which may be private), or the URL with its password masked."""
    path = sqlite_path(url)
    return path.name if path is not None else make_url(url).render_as_string(hide_password=True)


def database_name(url: str) -> str:
    """What names a database among others beside it: the SQLite file's name, or a server database's name."""
    path = sqlite_path(url)
    return path.name if path is not None else (make_url(url).database or "default")


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


_BUSY_TIMEOUT_S = 30.0


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first, so switching to WAL waits for a busy writer instead of failing.
    cursor.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
    # WAL: readers (accumbench report and pick-best, the sqlite3 CLI) don't block a training run.
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
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:  # self: a Store
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
    """Hidden beside the database (.runs.db-reserve): it must be on the same disk to make room there."""
    return path.with_name(f".{path.name}-reserve")


def _legacy_reserve_path(path: pathlib.Path) -> pathlib.Path:
    """Where accumbench kept the reserve before it was hidden (runs.db-reserve)."""
    return path.with_name(f"{path.name}-reserve")


def reserve_space(path: pathlib.Path) -> None:
    """Keep RESERVE_BYTES on the database's disk as a hidden file (.runs.db-reserve), made again whenever
    the store is opened with room for it. When the disk fills mid-run, make_room deletes it, and the run can
    still be recorded FAILED rather than left RUNNING. A reserve under its old name (runs.db-reserve) is
    renamed, not made twice. Best effort: no room, no reserve."""
    reserve = _reserve_path(path)
    if not reserve.exists():
        try:
            os.replace(_legacy_reserve_path(path), reserve)
        except OSError:
            pass  # none under the old name (or another process renamed it first)
    if reserve.exists():
        return
    try:
        with open(reserve, "wb") as out:
            out.write(b"\0" * RESERVE_BYTES)
    except OSError:
        reserve.unlink(missing_ok=True)


def free_reserve(path: pathlib.Path) -> None:
    """Give the reserve's space back to the disk (and an old-named one's, should an older accumbench have
    made it again meanwhile)."""
    _reserve_path(path).unlink(missing_ok=True)
    _legacy_reserve_path(path).unlink(missing_ok=True)


def writable_engine(url: str) -> Engine:
    """The engine of a store that writes (Store.open). SQLite connections get the pragmas above."""
    # pool_pre_ping: a pooled connection to a server that restarted is noticed at checkout, not mid-write.
    engine = create_engine(url) if sqlite_path(url) is not None else create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def readonly_sqlite_engine(path: pathlib.Path) -> Engine:
    """An engine on the SQLite file at `path` that creates and writes no file, not even -wal/-shm
    (_readonly_uri), and sets no pragma: WAL mode would rewrite the file's header. OSError when `path`
    cannot be read (e.g. a directory)."""
    uri = _readonly_uri(path)
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))


def readonly_engine(url: str) -> Engine:
    """An engine that can only read (Store.open_readonly): an SQLite file opened read-only, a PostgreSQL
    session whose transactions are read-only; other databases as they come."""
    path = sqlite_path(url)
    if path is not None:
        return readonly_sqlite_engine(path)
    if make_url(url).get_backend_name() == "postgresql":
        return create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
    return create_engine(url)
