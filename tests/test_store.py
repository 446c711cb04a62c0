"""Tests for accumbench.store: schema, lifecycle, steps, PRAGMAs, NaN, versions, migration."""

import inspect
import math
import sqlite3
import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy.exc
from sqlalchemy import event, text

from accumbench.errors import UserError
from accumbench.store import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    SCHEMA_VERSION,
    NullStore,
    Store,
    resolve_db_url,
    sqlite_path,
)
from accumbench.store.migrations import _MIGRATIONS

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


# The exact DDL that accumbench with SCHEMA_VERSION = 1 wrote (dumped from sqlite_master
# of a database it created). Frozen here on purpose: never derive it from the current models.
V1_DDL = [
    """CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
)""",
    """CREATE TABLE runs (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	status VARCHAR NOT NULL, 
	backend VARCHAR NOT NULL, 
	model VARCHAR NOT NULL, 
	dataset VARCHAR NOT NULL, 
	seed INTEGER NOT NULL, 
	lr FLOAT NOT NULL, 
	effective_batch_size INTEGER NOT NULL, 
	micro_batch_size INTEGER NOT NULL, 
	accumulation_steps INTEGER NOT NULL, 
	epochs INTEGER NOT NULL, 
	max_length INTEGER NOT NULL, 
	optimizer VARCHAR NOT NULL, 
	scheduler VARCHAR NOT NULL, 
	config_hash VARCHAR NOT NULL, 
	config_json TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	heartbeat_at DATETIME, 
	error TEXT, 
	torch_version VARCHAR, 
	transformers_version VARCHAR, 
	accelerate_version VARCHAR, 
	device VARCHAR, 
	num_train_samples INTEGER, 
	num_val_samples INTEGER, 
	num_test_samples INTEGER, 
	num_labels INTEGER, 
	best_epoch INTEGER, 
	checkpoint_path VARCHAR
)""",
    "CREATE INDEX ix_runs_config_hash ON runs (config_hash)",
    """CREATE TABLE epochs (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	epoch INTEGER NOT NULL, 
	train_loss FLOAT, 
	train_accuracy FLOAT, 
	val_loss FLOAT, 
	val_accuracy FLOAT, 
	test_loss FLOAT, 
	test_accuracy FLOAT, 
	optimizer_steps INTEGER NOT NULL, 
	samples_seen INTEGER NOT NULL, 
	epoch_seconds FLOAT NOT NULL, 
	train_seconds FLOAT NOT NULL, 
	eval_seconds FLOAT NOT NULL, 
	samples_per_second FLOAT NOT NULL, 
	peak_memory_mb FLOAT, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, epoch), 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_epochs_run_id ON epochs (run_id)",
]

# Every table and column of the current schema: the public contract.
EXPECTED_COLUMNS = {
    "schema_version": {"version"},
    "runs": {
        "id", "status", "backend", "model", "dataset", "seed", "lr", "effective_batch_size",
        "micro_batch_size", "accumulation_steps", "epochs", "max_length", "optimizer",
        "scheduler", "config_hash", "config_json", "created_at", "started_at", "finished_at",
        "heartbeat_at", "error", "torch_version", "transformers_version",
        "accelerate_version", "device", "num_train_samples", "num_val_samples",
        "num_test_samples", "num_labels", "best_epoch", "checkpoint_path",
        "precision", "world_size",
        "sweep_id", "attempt", "base_lr", "lr_scaling", "base_batch_size", "budget", "train_steps",
        "tokenize_seconds", "tokens_cached",
        "text_columns", "split_source", "dropped_rows", "positive_label", "positive_class",
        "pruned_epoch", "pruned_by", "pruned_p", "pruned_test",
        # schema 9: the optimizer settings used after scaling, the rules, and their name
        "beta1", "beta2", "eps", "weight_decay", "beta1_scaling", "beta2_scaling", "eps_scaling", "weight_decay_scaling",
        "scaling_rule",
    },
    "epochs": {
        "id", "run_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
        "test_loss", "test_accuracy", "optimizer_steps", "samples_seen", "epoch_seconds",
        "train_seconds", "eval_seconds", "samples_per_second", "peak_memory_mb",
        "skipped_steps", "tokens_per_second", "padding_fraction",
        "noise_scale", "noise_trace", "noise_grad_sq", "noise_steps",
        "val_f1", "val_mcc", "test_f1", "test_mcc",
    },
    "steps": {"id", "run_id", "step", "epoch", "samples_seen", "loss", "grad_norm", "lr",
              "micro_grad_sq", "noise_grad_sq", "noise_trace", "noise_scale"},
    "evals": {"id", "run_id", "step", "epoch", "samples_seen", "val_loss", "val_accuracy"},
    "sweeps": {"id", "name", "grid_hash", "spec_json", "num_cells", "created_at"},
    "predictions": {"id", "run_id", "split", "epoch", "num_examples", "split_hash", "labels", "predicted"},
    "epoch_predictions": {"id", "run_id", "split", "epoch", "num_examples", "split_hash", "labels", "predicted"},
}


def make_v1_db(path):
    """A genuine version-1 database, as the previous accumbench left it: one run, one epoch."""
    conn = sqlite3.connect(path)
    for ddl in V1_DDL:
        conn.execute(ddl)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute(
        "INSERT INTO runs (status, backend, model, dataset, seed, lr, effective_batch_size, "
        "micro_batch_size, accumulation_steps, epochs, max_length, optimizer, scheduler, "
        "config_hash, config_json, created_at, started_at, finished_at, heartbeat_at, "
        "device, best_epoch) VALUES ('FINISHED', 'hf', 'bert-tiny', 'sst2', 7, 2e-05, 64, 16, "
        "4, 1, 128, 'adamw', 'linear', 'abc123', '{}', '2024-05-01 10:00:00.000000', "
        "'2024-05-01 10:00:00.000000', '2024-05-01 10:05:00.000000', "
        "'2024-05-01 10:05:00.000000', 'cuda:0', 1)")
    conn.execute(
        "INSERT INTO epochs (run_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, "
        "test_loss, test_accuracy, optimizer_steps, samples_seen, epoch_seconds, train_seconds, "
        "eval_seconds, samples_per_second, peak_memory_mb) VALUES "
        "(1, 1, 'NaN', 0.5, 0.6, 0.75, NULL, 0.7, 16, 1000, 12.5, 10.0, 2.5, 100.0, 512.0)")
    conn.commit()
    conn.close()


def table_infos(path):
    """{table: PRAGMA table_info rows} for every table, plus the index names, via plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'")]
        infos = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        return infos, indexes
    finally:
        conn.close()


def step_row(step, **overrides):
    row = dict(step=step, epoch=(step - 1) // 100 + 1, samples_seen=64 * step, loss=1.0 / step,
               grad_norm=0.5 + step, lr=2e-5 * (1 - step / 1000))
    row.update(overrides)
    return row


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
                                     epoch_metrics(2)], strict=True):
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


def run_at_once(worker, n: int) -> list[BaseException]:
    """Start n threads on `worker` together (a barrier) and return what they raised:
    pytest can't see exceptions raised in threads."""
    barrier, errors = threading.Barrier(n), []

    def guarded():
        barrier.wait()
        try:
            worker()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


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


@pytest.mark.parametrize("status,error", [(FINISHED, None), (FAILED, "CUDA OOM"), (KILLED, None)])
def test_lifecycle(store, status, error):
    run_id = store.create_run(**RUN_KWARGS)
    assert [r["id"] for r in store.find_runs(status=RUNNING)] == [run_id]
    store.finish_run(run_id, status, error=error)
    run = store.get_run(run_id)
    assert run["status"] == status and run["error"] == error
    assert run["finished_at"] >= run["started_at"]
    assert store.find_runs(status=RUNNING) == []
    assert [r["id"] for r in store.find_runs(status=status)] == [run_id]


def test_bad_status_refused(store):
    run_id = store.create_run(**RUN_KWARGS)
    for bad in (RUNNING, "DONE", "finished"):
        with pytest.raises(ValueError):
            store.finish_run(run_id, bad)
    assert store.get_run(run_id)["status"] == RUNNING


def test_find_runs_in_id_order(store):
    ids = [store.create_run(**RUN_KWARGS) for _ in range(3)]
    store.finish_run(ids[1], FINISHED)
    assert [r["id"] for r in store.find_runs(status=None)] == ids
    assert [r["id"] for r in store.find_runs(status=RUNNING)] == [ids[0], ids[2]]
    assert [r["id"] for r in store.find_runs()] == [ids[1]]  # FINISHED runs by default: what reports read


def test_null_store_has_exactly_stores_training_writes():
    # The other processes of a multi-GPU run write to a NullStore: every call it takes must be a Store
    # method with the very same signature, and no catch-all may swallow a misspelled one.
    writes = {"update_run", "save_predictions", "add_steps", "add_evals", "add_epoch"}
    assert {name for name in vars(NullStore) if not name.startswith("_")} == writes
    for name in writes:
        assert inspect.signature(getattr(NullStore, name)) == inspect.signature(getattr(Store, name)), name
    assert not hasattr(NullStore, "__getattr__") and NullStore.__getattribute__ is object.__getattribute__
    null = NullStore()
    with pytest.raises(AttributeError):
        null.add_step(None, [])  # a misspelling fails here as it would on a Store
    # What a process other than the main one calls, as it trains without a run id: nothing happens.
    assert null.update_run(None, best_epoch=1) is None
    assert null.save_predictions(None, "test", 1, "hash", [0, 1], [1, 1]) is None
    assert null.add_steps(None, [step_row(1)]) is None and null.add_evals(None, []) is None
    assert null.add_epoch(None, **epoch_metrics(1)) is None


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
    infos, _ = table_infos(sqlite_path(db_url))
    assert {table: {row[1] for row in info} for table, info in infos.items()} == EXPECTED_COLUMNS
    conn = sqlite3.connect(sqlite_path(db_url))
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(runs)")}
        assert any("config_hash" in name for name in indexed)
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(steps)")}
        assert any("run_id" in name for name in indexed)
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
    # Only the space the store keeps in reserve for recording a run's end on a full disk stays beside it.
    assert sorted(p.name for p in sqlite_path(db_url).parent.iterdir()) == files == ["runs.db", "runs.db-reserve"]


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


# --- schema version 2: steps, precision/world_size, skipped_steps -------------------------


def test_new_run_and_epoch_columns(store):
    run = store.get_run(store.create_run(**RUN_KWARGS))
    assert run["precision"] is None and run["world_size"] is None
    run_id = store.create_run(**RUN_KWARGS, precision="fp16", world_size=4)
    run = store.get_run(run_id)
    assert (run["precision"], run["world_size"]) == ("fp16", 4)
    store.update_run(run_id, precision="bf16", world_size=2)
    run = store.get_run(run_id)
    assert (run["precision"], run["world_size"]) == ("bf16", 2)
    with pytest.raises(ValueError, match="precision"):
        store.create_run(**RUN_KWARGS, precision="fp32")

    store.add_epoch(run_id, **epoch_metrics(1, skipped_steps=3))
    store.add_epoch(run_id, **epoch_metrics(2))
    assert [r["skipped_steps"] for r in store.epochs(run_id)] == [3, None]


def test_steps_round_trip(store, db_url):
    run_id = store.create_run(**RUN_KWARGS)
    other = store.create_run(**RUN_KWARGS)
    heartbeat = store.get_run(run_id)["heartbeat_at"]
    rows = [step_row(3), step_row(1, loss=float("nan"), grad_norm=None), step_row(2)]
    store.add_steps(run_id, rows)
    store.add_steps(other, [step_row(1)])
    assert store.get_run(run_id)["heartbeat_at"] >= heartbeat

    got = store.steps_of([run_id])
    assert [r["step"] for r in got] == [1, 2, 3]  # ordered by step, not insertion
    assert math.isnan(got[0]["loss"]) and got[0]["grad_norm"] is None
    for row, expected in zip(got[1:], [step_row(2), step_row(3)], strict=True):
        assert {k: row[k] for k in expected} == expected
    for row in got:
        assert row["run_id"] == run_id and isinstance(row["id"], int)
    assert set(got[0]) == EXPECTED_COLUMNS["steps"]
    assert [r["run_id"] for r in store.steps_of([other])] == [other]
    assert store.steps_of([999]) == []

    # grad_norm may be left out entirely; NaN is the TEXT 'NaN' in the file, as in epochs.
    store.add_steps(run_id, [{k: v for k, v in step_row(4).items() if k != "grad_norm"}])
    assert store.steps_of([run_id])[-1]["grad_norm"] is None
    conn = sqlite3.connect(sqlite_path(db_url))
    raw = conn.execute("SELECT loss FROM steps WHERE run_id = ? AND step = 1", (run_id,)).fetchone()
    conn.close()
    assert raw == ("NaN",)


def test_add_steps_bad_input(store):
    with pytest.raises(KeyError):
        store.add_steps(999, [step_row(1)])
    run_id = store.create_run(**RUN_KWARGS)
    with pytest.raises(TypeError, match="no_such"):
        store.add_steps(run_id, [step_row(1), step_row(2, no_such=1)])
    with pytest.raises(TypeError, match="run_id"):
        store.add_steps(run_id, [step_row(1, run_id=run_id + 1)])
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # loss is NOT NULL (NaN is fine)
        store.add_steps(run_id, [step_row(1, loss=None)])
    store.add_steps(run_id, [])  # nothing to do, but fine
    assert store.steps_of([run_id]) == []


def test_unique_run_step_and_all_or_nothing(store):
    run_id = store.create_run(**RUN_KWARGS)
    store.add_steps(run_id, [step_row(1), step_row(2)])
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.add_steps(run_id, [step_row(3), step_row(2, loss=9.0), step_row(4)])
    assert [r["step"] for r in store.steps_of([run_id])] == [1, 2]  # step 3 rolled back too
    assert store.steps_of([run_id])[1]["loss"] == 0.5
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # duplicate within one call
        store.add_steps(run_id, [step_row(5), step_row(5)])
    assert [r["step"] for r in store.steps_of([run_id])] == [1, 2]
    other = store.create_run(**RUN_KWARGS)
    store.add_steps(other, [step_row(1)])  # same step number in another run is fine


def test_steps_cascade_delete(store):
    keep, drop = store.create_run(**RUN_KWARGS), store.create_run(**RUN_KWARGS)
    for run_id in (keep, drop):
        store.add_steps(run_id, [step_row(1), step_row(2)])
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM runs WHERE id = :id"), {"id": drop})
        left = conn.execute(text("SELECT run_id FROM steps")).scalars().all()
    assert left == [keep, keep]


def test_add_steps_is_one_transaction(store):
    run_id = store.create_run(**RUN_KWARGS)
    commits, inserts = [], []

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO STEPS"):
            inserts.append(len(parameters) if executemany else 1)

    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    event.listen(store.engine, "before_cursor_execute", on_execute)
    store.add_steps(run_id, [step_row(i) for i in range(1, 501)])
    event.remove(store.engine, "before_cursor_execute", on_execute)
    assert len(commits) == 1
    assert inserts == [500]  # a single executemany, not one statement per row
    assert len(store.steps_of([run_id])) == 500


# --- migration ---------------------------------------------------------------------------


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


# --- schema version 3: sweeps, the runs' sweep and lr/budget columns, the live-cell index ------


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



# --- schema version 4: predictions; reading for reports --------------------------------------------


def test_predictions_round_trip_compactly_and_are_replaced(store):
    run_id = store.create_run(**RUN_KWARGS)
    labels = [0, 1, 2, 1] * 250
    store.save_predictions(run_id, "test", 1, "hash1", labels, [1] * 1000)
    store.save_predictions(run_id, "test", 3, "hash1", labels, labels)  # a better epoch replaces it
    store.save_predictions(run_id, "validation", 3, "hashv", [0, 1], [1, 1])
    got = store.predictions([run_id], "test")[run_id]
    assert (got["epoch"], got["split_hash"], got["labels"], got["predicted"]) == (3, "hash1", labels, labels)
    assert store.predictions([run_id], "validation")[run_id]["predicted"] == [1, 1]
    assert store.predictions([run_id + 1], "test") == {}
    conn = sqlite3.connect(sqlite_path(store.url))
    (blob_size,) = conn.execute("SELECT LENGTH(predicted) FROM predictions WHERE split = 'test'").fetchone()
    (rows,) = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()
    conn.close()
    assert blob_size == 2000 and rows == 2  # 2 bytes per example; one row per (run, split)


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


# --- noise scale and evaluations between epochs (schema version 6) ---------------------------------


def test_noise_columns_keep_nan_and_evals_round_trip(store):
    """B_simple is NaN when the |G|² average is <= 0 (noise swamps signal): kept as NaN, not NULL."""
    run_id = store.create_run(**RUN_KWARGS)
    store.add_steps(run_id, [step_row(1, micro_grad_sq=2.0, noise_grad_sq=-0.1, noise_trace=30.0,
                                      noise_scale=float("nan")), step_row(2)])
    store.add_epoch(run_id, **epoch_metrics(1, noise_scale=180.5, noise_trace=90.25, noise_grad_sq=0.5, noise_steps=2))
    first, second = store.steps_of([run_id])
    assert math.isnan(first["noise_scale"]) and first["noise_grad_sq"] == -0.1
    assert second["noise_scale"] is None  # not measured at this step (--noise-scale-every, or k = 1)
    [epoch] = store.epochs(run_id)
    assert (epoch["noise_scale"], epoch["noise_steps"]) == (180.5, 2)

    rows = [dict(step=s, epoch=1, samples_seen=64 * s, val_loss=0.7 - s / 100, val_accuracy=0.5 + s / 100)
            for s in (5, 10)]
    store.add_evals(run_id, rows)
    assert [(e["step"], e["val_accuracy"]) for e in store.evals_of([run_id])] == [(5, 0.55), (10, 0.6)]
    with pytest.raises(TypeError, match="add_evals"):
        store.add_evals(run_id, [dict(step=15, val_accuracy=0.7)])
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.add_evals(run_id, rows[:1])  # one evaluation per step


def test_a_database_is_printed_without_its_password():
    from accumbench.store import display_url

    assert display_url("postgresql+psycopg://user:s3cret@db-host:5432/runs") == "postgresql+psycopg://user:***@db-host:5432/runs"
    assert display_url("sqlite:////tmp/x/runs.db") == "/tmp/x/runs.db"
