"""The store's optimizer steps and evaluations between epochs: written in one transaction, read back
in step order, NaN kept as NaN (the noise scale's B_simple too), duplicates refused all or nothing."""

import math
import sqlite3

import pytest
import sqlalchemy.exc
from sqlalchemy import event, text
from store_helpers import RUN_KWARGS, epoch_metrics, step_row
from test_store_schema import EXPECTED_COLUMNS

from accumbench.store import sqlite_path


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
