"""Tests for accumbench.store: schema, lifecycle, PRAGMAs, NaN, version checks."""

import math
import sqlite3
import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from accumbench.errors import UserError
from accumbench.store import (
    FAILED, FINISHED, KILLED, RUNNING, SCHEMA_VERSION, Store, resolve_db_url, sqlite_path,
)

RUN_KWARGS = dict(
    config_json='{"lr": 2e-05}', config_hash="abc123", backend="hf", model="bert-tiny",
    dataset="sst2", seed=7, lr=2e-5, effective_batch_size=64, micro_batch_size=16,
    accumulation_steps=4, epochs=3, max_length=128, optimizer="adamw", scheduler="linear",
)
OPTIONAL_RUN_KWARGS = dict(
    torch_version="2.3.0", transformers_version="4.41.0", accelerate_version="0.30.0",
    device="cuda:0", num_train_samples=1000, num_val_samples=100, num_test_samples=200,
    num_labels=2,
)


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def epoch_metrics(epoch, **overrides):
    metrics = dict(
        epoch=epoch, train_loss=0.5 / epoch, train_accuracy=0.8, val_loss=0.6, val_accuracy=0.75,
        test_loss=0.65, test_accuracy=0.7, optimizer_steps=16 * epoch, samples_seen=1000 * epoch,
        epoch_seconds=12.5, train_seconds=10.0, eval_seconds=2.5, samples_per_second=100.0,
        peak_memory_mb=512.0,
    )
    metrics.update(overrides)
    return metrics


@pytest.fixture
def db_url(tmp_path):
    return resolve_db_url(str(tmp_path / "runs.db"))


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


def make_newer_db(path):
    """A database written by a future accumbench (plain rollback journal, like a copy would be)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()


def test_run_and_epochs_round_trip(store):
    before = utcnow()
    run_id = store.create_run(**RUN_KWARGS, **OPTIONAL_RUN_KWARGS)
    run = store.get_run(run_id)
    for key, value in {**RUN_KWARGS, **OPTIONAL_RUN_KWARGS}.items():
        assert run[key] == value, key
    assert run["id"] == run_id
    assert run["status"] == RUNNING
    assert run["created_at"] == run["started_at"] == run["heartbeat_at"]
    assert before <= run["created_at"] <= utcnow()
    assert run["created_at"].tzinfo is None
    assert run["finished_at"] is None and run["error"] is None
    assert run["best_epoch"] is None and run["checkpoint_path"] is None

    store.add_epoch(run_id, **epoch_metrics(2))
    store.add_epoch(run_id, **epoch_metrics(1, peak_memory_mb=None, test_loss=None))
    rows = store.epochs(run_id)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, expected in zip(rows, [epoch_metrics(1, peak_memory_mb=None, test_loss=None),
                                     epoch_metrics(2)]):
        assert {k: row[k] for k in expected} == expected
        assert row["run_id"] == run_id and isinstance(row["id"], int)
    assert store.get_run(run_id)["heartbeat_at"] >= run["heartbeat_at"]

    store.update_run(run_id, best_epoch=2, checkpoint_path="/ckpt/run-1")
    run = store.get_run(run_id)
    assert (run["best_epoch"], run["checkpoint_path"]) == (2, "/ckpt/run-1")


def test_optional_run_fields_default_to_none(store):
    run = store.get_run(store.create_run(**RUN_KWARGS))
    assert all(run[key] is None for key in OPTIONAL_RUN_KWARGS)


def test_data_survives_reopen(db_url):
    with Store.open(db_url) as s:
        run_id = s.create_run(**RUN_KWARGS)
        s.add_epoch(run_id, **epoch_metrics(1))
    with Store.open(db_url) as s:
        assert s.get_run(run_id)["model"] == "bert-tiny"
        assert len(s.epochs(run_id)) == 1


def test_parallel_first_open(tmp_path):
    # Parallel workers of a sweep may all open a fresh database at once.
    for trial in range(3):
        url = resolve_db_url(str(tmp_path / f"runs{trial}.db"))
        barrier, errors = threading.Barrier(6), []

        def worker():
            barrier.wait()
            try:
                with Store.open(url) as s:
                    s.create_run(**RUN_KWARGS)
            except Exception as exc:  # collected: pytest can't see thread exceptions
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with Store.open(url) as s:
            assert len(s.list_runs()) == 6


@pytest.mark.parametrize("status,error", [(FINISHED, None), (FAILED, "CUDA OOM"), (KILLED, None)])
def test_lifecycle(store, status, error):
    run_id = store.create_run(**RUN_KWARGS)
    assert [r["id"] for r in store.list_runs(RUNNING)] == [run_id]
    store.finish_run(run_id, status, error=error)
    run = store.get_run(run_id)
    assert run["status"] == status and run["error"] == error
    assert run["finished_at"] >= run["started_at"]
    assert store.list_runs(RUNNING) == []
    assert [r["id"] for r in store.list_runs(status)] == [run_id]


def test_bad_status_refused(store):
    run_id = store.create_run(**RUN_KWARGS)
    for bad in (RUNNING, "DONE", "finished"):
        with pytest.raises(ValueError):
            store.finish_run(run_id, bad)
    assert store.get_run(run_id)["status"] == RUNNING
    with pytest.raises(ValueError):
        store.list_runs("DONE")


def test_list_runs_in_id_order(store):
    ids = [store.create_run(**RUN_KWARGS) for _ in range(3)]
    store.finish_run(ids[1], FINISHED)
    assert [r["id"] for r in store.list_runs()] == ids
    assert [r["id"] for r in store.list_runs(RUNNING)] == [ids[0], ids[2]]


def test_unknown_run_and_bad_fields(store):
    with pytest.raises(KeyError):
        store.get_run(999)
    with pytest.raises(KeyError):
        store.add_epoch(999, **epoch_metrics(1))
    run_id = store.create_run(**RUN_KWARGS)
    with pytest.raises(TypeError):
        store.update_run(run_id, no_such_column=1)
    with pytest.raises(TypeError):
        store.update_run(run_id, id=5)
    with pytest.raises(TypeError):
        store.add_epoch(run_id, **epoch_metrics(1, no_such_metric=1.0))
    assert store.epochs(run_id) == []


def test_unique_run_epoch(store):
    run_id = store.create_run(**RUN_KWARGS)
    store.add_epoch(run_id, **epoch_metrics(1))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.add_epoch(run_id, **epoch_metrics(1, train_loss=0.1))
    assert [r["train_loss"] for r in store.epochs(run_id)] == [0.5]
    # Same epoch number in another run is fine.
    other = store.create_run(**RUN_KWARGS)
    store.add_epoch(other, **epoch_metrics(1))


def test_cascade_delete(store):
    keep, drop = store.create_run(**RUN_KWARGS), store.create_run(**RUN_KWARGS)
    for run_id in (keep, drop):
        store.add_epoch(run_id, **epoch_metrics(1))
        store.add_epoch(run_id, **epoch_metrics(2))
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM runs WHERE id = :id"), {"id": drop})
        left = conn.execute(text("SELECT run_id FROM epochs")).scalars().all()
    assert left == [keep, keep]
    # AUTOINCREMENT: a deleted run's id is never reused.
    assert store.create_run(**RUN_KWARGS) > drop


def test_pragmas_set_on_every_connection(store):
    conns = [store.engine.raw_connection() for _ in range(2)]  # two pooled connections
    try:
        for conn in conns:
            cur = conn.cursor()
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
            cur.close()
    finally:
        for conn in conns:
            conn.close()


def test_nan_and_inf_round_trip(store, db_url):
    run_id = store.create_run(**RUN_KWARGS)
    values = [float("nan"), float("inf"), float("-inf"), 1.25, None]
    for epoch, value in enumerate(values, start=1):
        store.add_epoch(run_id, **epoch_metrics(epoch, train_loss=value))
    got = [r["train_loss"] for r in store.epochs(run_id)]
    assert math.isnan(got[0])
    assert got[1:] == [math.inf, -math.inf, 1.25, None]

    # With the plain sqlite3 module: NaN is the TEXT 'NaN' (the driver would turn a
    # float NaN into NULL), +/-inf are ordinary REALs, and NULL still means "not
    # measured". float() of every non-NULL value gives the number back.
    conn = sqlite3.connect(sqlite_path(db_url))
    rows = conn.execute(
        "SELECT train_loss, typeof(train_loss) FROM epochs WHERE run_id = ? ORDER BY epoch",
        (run_id,)).fetchall()
    conn.close()
    assert rows == [("NaN", "text"), (math.inf, "real"), (-math.inf, "real"), (1.25, "real"),
                    (None, "null")]
    assert math.isnan(float(rows[0][0]))


def test_column_names_are_the_public_contract(store, db_url):
    expected = {
        "schema_version": {"version"},
        "runs": {
            "id", "status", "backend", "model", "dataset", "seed", "lr", "effective_batch_size",
            "micro_batch_size", "accumulation_steps", "epochs", "max_length", "optimizer",
            "scheduler", "config_hash", "config_json", "created_at", "started_at", "finished_at",
            "heartbeat_at", "error", "torch_version", "transformers_version",
            "accelerate_version", "device", "num_train_samples", "num_val_samples",
            "num_test_samples", "num_labels", "best_epoch", "checkpoint_path",
        },
        "epochs": {
            "id", "run_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
            "test_loss", "test_accuracy", "optimizer_steps", "samples_seen", "epoch_seconds",
            "train_seconds", "eval_seconds", "samples_per_second", "peak_memory_mb",
        },
    }
    conn = sqlite3.connect(sqlite_path(db_url))
    try:
        for table, columns in expected.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            assert {row[1] for row in info} == columns, table
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(runs)")}
        assert any("config_hash" in name for name in indexed)
    finally:
        conn.close()


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
    assert sorted(p.name for p in sqlite_path(db_url).parent.iterdir()) == files == ["runs.db"]


def test_check_compatible_on_missing_file_creates_nothing(tmp_path):
    Store.check_compatible(resolve_db_url(str(tmp_path / "nope.db")))
    assert list(tmp_path.iterdir()) == []


def test_check_compatible_rejects_non_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("this is not a database\n" * 100)
    for check in (Store.check_compatible, Store.open):
        with pytest.raises(UserError, match="is not an accumbench database"):
            check(resolve_db_url(str(path)))
    assert path.read_text() == "this is not a database\n" * 100


def test_directory_is_not_a_database(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(UserError, match="is not an accumbench database"):
        Store.open(resolve_db_url(str(tmp_path / "dir.db")))


def test_foreign_sqlite_database_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="customers"):
        Store.open(resolve_db_url(str(path)))


def test_check_compatible_ignores_non_sqlite_urls():
    Store.check_compatible("postgresql://user@localhost/accumbench")
    Store.check_compatible("sqlite://")


def test_missing_parent_dir(tmp_path):
    url = resolve_db_url(str(tmp_path / "no" / "such" / "runs.db"))
    for check in (Store.open, Store.check_compatible):
        with pytest.raises(UserError, match="does not exist; create it or pass --db"):
            check(url)
    assert list(tmp_path.iterdir()) == []


def test_resolve_db_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCUMBENCH_DB", raising=False)
    assert resolve_db_url(None) == f"sqlite:///{tmp_path.resolve() / 'runs.db'}"
    monkeypatch.setenv("ACCUMBENCH_DB", "sub/x.db")
    assert resolve_db_url(None) == f"sqlite:///{tmp_path.resolve() / 'sub' / 'x.db'}"
    monkeypatch.setenv("ACCUMBENCH_DB", "postgresql://u@h/db")
    assert resolve_db_url(None) == "postgresql://u@h/db"
    assert resolve_db_url("rel.db") == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    assert resolve_db_url("/abs/r.db") == "sqlite:////abs/r.db"
    assert resolve_db_url("sqlite:///relative.db") == "sqlite:///relative.db"


def test_sqlite_path():
    assert str(sqlite_path("sqlite:////abs/r.db")) == "/abs/r.db"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u@h/db") is None


def test_in_memory_database():
    with Store.open("sqlite://") as s:
        run_id = s.create_run(**RUN_KWARGS)
        s.add_epoch(run_id, **epoch_metrics(1, train_loss=float("nan")))
        assert math.isnan(s.epochs(run_id)[0]["train_loss"])
