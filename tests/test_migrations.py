"""Upgrading an older database in place: a genuine version-1 file ends with the same tables, columns and
indexes as a fresh one and keeps its data; a failed upgrade leaves it untouched; parallel openers upgrade
it once; a newer database is refused and left as it was."""

import math
import sqlite3
from datetime import datetime

import pytest
import sqlalchemy.exc
from store_helpers import RUN_KWARGS, epoch_metrics, make_v1_db, run_at_once, step_row, table_infos

from accumbench.errors import UserError
from accumbench.store import FINISHED, SCHEMA_VERSION, Store, resolve_db_url, sqlite_path
from accumbench.store.migrations import _MIGRATIONS


def test_migrations_cover_every_version():
    assert sorted(_MIGRATIONS) == list(range(2, SCHEMA_VERSION + 1))


def test_v1_database_is_migrated(tmp_path, db_url):
    path = tmp_path / "v1.db"
    make_v1_db(path)
    url = resolve_db_url(str(path))
    before = path.read_bytes()
    Store.check_compatible(url)  # an older version is fine, and check_compatible never upgrades
    assert path.read_bytes() == before

    with Store.open(url) as s:
        run = s.get_run(1)
        assert (run["status"], run["model"], run["device"], run["best_epoch"]) == (
            FINISHED, "bert-tiny", "cuda:0", 1)
        assert run["finished_at"] == datetime(2024, 5, 1, 10, 5)
        assert run["precision"] is None and run["world_size"] is None
        [epoch] = s.epochs(1)
        assert math.isnan(epoch["train_loss"]) and epoch["test_loss"] is None
        assert (epoch["optimizer_steps"], epoch["samples_seen"]) == (16, 1000)
        assert epoch["skipped_steps"] is None
        assert s.steps_of([1]) == []
        # The upgraded database takes the new data, and run ids keep counting up.
        new = s.create_run(**RUN_KWARGS, precision="bf16", world_size=2)
        assert new == 2
        s.add_epoch(new, **epoch_metrics(1, skipped_steps=0))
        s.add_steps(new, [step_row(1)])
        s.add_steps(1, [step_row(1)])
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("SELECT precision, world_size FROM runs WHERE id = 1").fetchone() == (
        None, None)
    assert conn.execute("SELECT skipped_steps FROM epochs WHERE run_id = 1").fetchone() == (None,)
    conn.close()

    # Same tables, columns (name, type, NOT NULL, default, pk, order) and indexes as a fresh one.
    Store.open(db_url).close()
    assert table_infos(path) == table_infos(sqlite_path(db_url))

    # A second open is a no-op.
    snapshot = table_infos(path)
    with Store.open(url) as s:
        assert [r["id"] for r in s.find_runs(status=None)] == [1, 2]
        assert len(s.steps_of([1])) == 1 and len(s.steps_of([2])) == 1
    assert table_infos(path) == snapshot
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_migration_is_idempotent_on_partially_migrated_columns(tmp_path):
    # E.g. someone added a column by hand: migrating must skip what already exists.
    path = tmp_path / "v1.db"
    make_v1_db(path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE runs ADD COLUMN precision VARCHAR")
    conn.execute("UPDATE runs SET precision = 'fp16'")
    conn.commit()
    conn.close()
    with Store.open(resolve_db_url(str(path))) as s:
        assert s.get_run(1)["precision"] == "fp16"
        assert s.get_run(1)["world_size"] is None


def test_failed_migration_leaves_v1_untouched(tmp_path, monkeypatch):
    path = tmp_path / "v1.db"
    make_v1_db(path)
    original = _MIGRATIONS[2]

    def broken(conn):
        original(conn)  # the ALTERs happen, then something goes wrong
        raise RuntimeError("boom")

    monkeypatch.setitem(_MIGRATIONS, 2, broken)
    with pytest.raises(RuntimeError, match="boom"):
        Store.open(resolve_db_url(str(path)))
    infos, _ = table_infos(path)
    assert set(infos) == {"schema_version", "runs", "epochs"}  # no steps table
    assert "precision" not in {row[1] for row in infos["runs"]}
    assert "skipped_steps" not in {row[1] for row in infos["epochs"]}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    conn.close()

    monkeypatch.setitem(_MIGRATIONS, 2, original)
    with Store.open(resolve_db_url(str(path))) as s:  # a later open upgrades it
        assert s.get_run(1)["precision"] is None and s.steps_of([1]) == []


def test_parallel_open_of_v1_database(tmp_path):
    # Parallel sweep workers may all open an old database at once: one upgrades it.
    path = tmp_path / "v1.db"
    make_v1_db(path)
    url = resolve_db_url(str(path))

    def worker():
        with Store.open(url) as s:
            run_id = s.create_run(**RUN_KWARGS, precision="no", world_size=1)
            s.add_steps(run_id, [step_row(1)])

    assert run_at_once(worker, 6) == []
    with Store.open(url) as s:
        assert len(s.find_runs(status=None)) == 7
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_newer_version_with_data_refused_untouched(tmp_path):
    # A database written by a future accumbench, with data: refused by both entry points,
    # and neither migrates, rewrites nor adds -wal/-shm files.
    path = tmp_path / "future.db"
    make_v1_db(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    url = resolve_db_url(str(path))
    for check in (Store.open, Store.check_compatible):
        with pytest.raises(UserError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade accumbench"):
            check(url)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.db"]


def test_migrated_database_guards_sweep_cells_like_a_fresh_one(tmp_path):
    path = tmp_path / "v1.db"
    make_v1_db(path)
    with Store.open(resolve_db_url(str(path))) as s:
        old = s.get_run(1)
        assert (old["sweep_id"], old["attempt"], old["lr_scaling"], old["budget"]) == (None, None, None, None)
        sweep_id = s.open_sweep("s", "grid", "{}", 1)["id"]
        columns = {**RUN_KWARGS, "attempt": 1}
        run_id, _ = s.claim(sweep_id, lambda runs: columns, stale_after=600)
        with pytest.raises(sqlalchemy.exc.IntegrityError):  # the index made by the migration
            s.claim(sweep_id, lambda runs: columns, stale_after=600)
        assert s.get_run(run_id)["sweep_id"] == sweep_id
    conn = sqlite3.connect(path)
    try:
        indexes = {row[1]: row for row in conn.execute("PRAGMA index_list(runs)")}
        assert indexes["uq_runs_live_sweep_cell"][2] == 1 and indexes["uq_runs_live_sweep_cell"][4] == 1  # unique, partial
        assert ("sweeps", "sweep_id", "id") in {(r[2], r[3], r[4]) for r in conn.execute("PRAGMA foreign_key_list(runs)")}
        with pytest.raises(sqlite3.IntegrityError):  # the foreign key holds on the migrated column too
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("UPDATE runs SET sweep_id = 999 WHERE id = 1")
    finally:
        conn.close()
