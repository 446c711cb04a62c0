"""The run lifecycle under a sweep: a running run's heartbeat keeps beating between epochs, and a
worker whose run was given up for dead stops training it and records nothing over the verdict."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from test_sweep_claims import run_columns

from accumbench.runtime.lifecycle import RunLost, recorded_run
from accumbench.store import FAILED, FINISHED, KILLED, RUNNING, Store, resolve_db_url


@pytest.fixture
def store(tmp_path):
    s = Store.open(resolve_db_url(str(tmp_path / "runs.db")))
    yield s
    s.close()


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_heartbeat_beats_while_the_run_trains(store):
    run_id = store.create_run(**run_columns("a"))
    first = store.get_run(run_id)["heartbeat_at"]
    with recorded_run(store, run_id, heartbeat_seconds=0.05):
        # No epoch ends here (nothing else writes the run): only the heartbeat thread moves it.
        assert wait_until(lambda: store.get_run(run_id)["heartbeat_at"] > first)
        second = store.get_run(run_id)["heartbeat_at"]
        assert wait_until(lambda: store.get_run(run_id)["heartbeat_at"] > second)
    run = store.get_run(run_id)
    assert run["status"] == FINISHED and isinstance(run["heartbeat_at"], datetime)


def test_a_run_given_up_for_dead_stops_at_its_next_step(store):
    run_id = store.create_run(**run_columns("a"))
    with pytest.raises(RunLost, match=f"run {run_id} was marked KILLED by another worker"):
        with recorded_run(store, run_id, heartbeat_seconds=0.02) as heartbeat:
            store.finish_run(run_id, KILLED, "stale heartbeat: no heartbeat for 700 s")  # another worker's verdict
            for _ in range(1000):  # the training loop: it checks at every optimizer step
                heartbeat.raise_if_lost()
                time.sleep(0.01)
            pytest.fail("the loop went on training a run another worker had taken over")
    run = store.get_run(run_id)
    assert (run["status"], run["error"]) == (KILLED, "stale heartbeat: no heartbeat for 700 s")


def test_finishing_a_run_that_was_given_up_raises_and_keeps_the_verdict(store):
    run_id = store.create_run(**run_columns("a"))
    with pytest.raises(RunLost):
        with recorded_run(store, run_id, heartbeat_seconds=60):  # no beat comes before the block ends
            store.finish_run(run_id, KILLED, "stale heartbeat")
    assert store.get_run(run_id)["status"] == KILLED  # not overwritten with FINISHED


def test_an_error_in_the_block_is_recorded_as_failed(store):
    run_id = store.create_run(**run_columns("a"))
    with pytest.raises(ValueError):
        with recorded_run(store, run_id, heartbeat_seconds=60):
            raise ValueError("bad batch")
    run = store.get_run(run_id)
    assert (run["status"], run["error"]) == (FAILED, "ValueError: bad batch") and run["status"] != RUNNING
