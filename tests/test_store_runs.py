"""The store's runs and epochs: written and read back, a run's lifecycle, NaN and infinities kept,
unknown runs and columns refused, cascades, predictions, and the NullStore of a multi-GPU run's other
processes."""

import inspect
import math
import sqlite3

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from store_helpers import OPTIONAL_RUN_KWARGS, RUN_KWARGS, epoch_metrics, step_row, utcnow

from accumbench.store import FAILED, FINISHED, KILLED, RUNNING, NullStore, Store, sqlite_path


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


def test_in_memory_database():
    with Store.open("sqlite://") as s:
        run_id = s.create_run(**RUN_KWARGS)
        s.add_epoch(run_id, **epoch_metrics(1, train_loss=float("nan")))
        assert math.isnan(s.epochs(run_id)[0]["train_loss"])


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
