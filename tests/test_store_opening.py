"""Opening a run database: the first open of many workers at once, the read-only pre-flight that creates
and changes nothing, what is refused (a newer schema, a file that is not ours, a directory, a missing
folder) and the read-only store of report and pick-best."""

import sqlite3

import pytest
import sqlalchemy.exc
from store_helpers import RUN_KWARGS, epoch_metrics, make_newer_db, make_v1_db, run_at_once

from accumbench.errors import UserError
from accumbench.store import FINISHED, SCHEMA_VERSION, Store, resolve_db_url, sqlite_path


def test_parallel_first_open(tmp_path):
    # Parallel workers of a sweep may all open a fresh database at once.
    for trial in range(3):
        url = resolve_db_url(str(tmp_path / f"runs{trial}.db"))

        def worker(url=url):
            with Store.open(url) as s:
                s.create_run(**RUN_KWARGS)

        assert run_at_once(worker, 6) == []
        with Store.open(url) as s:
            assert len(s.find_runs(status=None)) == 6


def test_newer_schema_refused_and_untouched(tmp_path):
    path = tmp_path / "future.db"
    make_newer_db(path)
    before = path.read_bytes()
    url = resolve_db_url(str(path))
    for check in (Store.open, Store.check_compatible):
        with pytest.raises(UserError) as info:
            check(url)
        message = str(info.value)
        assert f"version {SCHEMA_VERSION + 1}" in message
        assert f"version {SCHEMA_VERSION}" in message and "upgrade accumbench" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.db"]  # no -wal/-shm left


def test_check_compatible_accepts_own_database(db_url):
    Store.check_compatible(db_url)  # missing file: fine
    with Store.open(db_url) as s:
        s.create_run(**RUN_KWARGS)
        Store.check_compatible(db_url)  # while another connection holds it in WAL mode
    files = sorted(p.name for p in sqlite_path(db_url).parent.iterdir())
    Store.check_compatible(db_url)  # after close: leaves no -wal/-shm behind
    # Only the space the store keeps in reserve for recording a run's end on a full disk stays beside it, hidden.
    assert sorted(p.name for p in sqlite_path(db_url).parent.iterdir()) == files == [".runs.db-reserve", "runs.db"]


def test_check_compatible_on_missing_file_creates_nothing(tmp_path):
    Store.check_compatible(resolve_db_url(str(tmp_path / "nope.db")))
    assert list(tmp_path.iterdir()) == []


def test_check_compatible_rejects_non_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("this is not a database\n" * 100)
    for check in (Store.check_compatible, Store.open):
        with pytest.raises(UserError, match="is not an accumbench database: file is not a database$"):
            check(resolve_db_url(str(path)))  # the driver's words, without SQLAlchemy's [SQL: ...] and links
    assert path.read_text() == "this is not a database\n" * 100


def test_directory_is_not_a_database(tmp_path):
    (tmp_path / "dir.db").mkdir()
    for check in (Store.check_compatible, Store.open, Store.open_readonly):
        with pytest.raises(UserError, match="is not an accumbench database|no run database at"):
            check(resolve_db_url(str(tmp_path / "dir.db")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.db"]


def test_foreign_sqlite_database_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="customers"):
        Store.open(resolve_db_url(str(path)))


def test_check_compatible_ignores_non_sqlite_urls(tmp_path, monkeypatch):
    """The pre-flight reads SQLite files only: a server is not contacted (port 1 refuses every connection,
    so an attempt would raise) and an in-memory database is nothing to check."""
    monkeypatch.chdir(tmp_path)
    assert Store.check_compatible("postgresql://user@127.0.0.1:1/accumbench") is None
    assert Store.check_compatible("sqlite://") is None
    assert list(tmp_path.iterdir()) == []  # nor is a file made for them
    with pytest.raises(sqlalchemy.exc.OperationalError):  # whereas opening that server does try it
        Store.open("postgresql+psycopg://user@127.0.0.1:1/accumbench")


def test_missing_parent_dir(tmp_path):
    url = resolve_db_url(str(tmp_path / "no" / "such" / "runs.db"))
    for check in (Store.open, Store.check_compatible):
        with pytest.raises(UserError, match="does not exist; create it or pass --db"):
            check(url)
    assert list(tmp_path.iterdir()) == []


def test_open_readonly_reads_and_never_writes(tmp_path):
    path = tmp_path / "runs.db"
    url = resolve_db_url(str(path))
    with pytest.raises(UserError, match="no run database at .*train first"):
        Store.open_readonly(url)
    assert not path.exists()
    with Store.open(url) as s:
        run_id = s.create_run(**RUN_KWARGS)
        s.add_epoch(run_id, **epoch_metrics(1))
        s.finish_run(run_id, FINISHED)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with Store.open_readonly(url) as s:
        assert [r["id"] for r in s.find_runs()] == [run_id]
        assert [e["epoch"] for e in s.epochs_of([run_id])] == [1]
        assert s.find_runs(model="other") == [] and s.find_runs(status=None, sweep="none") == []
        with pytest.raises(sqlalchemy.exc.OperationalError, match="readonly"):
            s.update_run(run_id, best_epoch=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_open_readonly_refuses_an_older_schema_with_the_fix(tmp_path):
    path = tmp_path / "v1.db"
    make_v1_db(path)
    with pytest.raises(UserError, match="schema version 1, older than .* any accumbench train or sweep on it upgrades it"):
        Store.open_readonly(resolve_db_url(str(path)))
