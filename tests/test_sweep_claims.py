"""Claiming sweep cells in the store, on SQLite and on a real PostgreSQL server: every cell is
claimed once however many workers race for it, the database refuses a second live run of a cell,
stale runs are reaped, and a heartbeat tells a worker when its run was given up for dead."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy.exc

from accumbench.errors import UserError
from accumbench.store import FAILED, FINISHED, KILLED, RUNNING, STALE_ERROR, Store, resolve_db_url


def run_columns(config_hash: str) -> dict:
    return dict(config_json="{}", config_hash=config_hash, backend="torch", model="tiny", dataset="demo", seed=1,
                lr=1e-3, effective_batch_size=8, micro_batch_size=8, accumulation_steps=1, epochs=1, max_length=16,
                optimizer="adam", scheduler="constant")


def first_free(cells: list[str]):
    """The simplest sweep policy: the first cell without a live run."""

    def choose(runs):
        live = {run["config_hash"] for run in runs if run["status"] in (RUNNING, FINISHED)}
        for cell in cells:
            if cell not in live:
                return {**run_columns(cell), "attempt": 1 + sum(r["config_hash"] == cell for r in runs)}
        return None

    return choose


@pytest.fixture
def store(any_db):
    s = Store.open(resolve_db_url(any_db))
    yield s
    s.close()


def test_many_workers_claim_every_cell_exactly_once(any_db):
    """8 threads, each with its own connection pool, drain a 24-cell sweep at once."""
    url = resolve_db_url(any_db)
    cells = [f"cell{i:02d}" for i in range(24)]
    with Store.open(url) as s:
        sweep_id = s.open_sweep("race", "grid", "{}", len(cells))["id"]
    claimed: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(name: str) -> None:
        try:
            with Store.open(url) as s:
                barrier.wait()
                while True:
                    run_id, _ = s.claim(sweep_id, first_free(cells), stale_after=600)
                    if run_id is None:
                        return
                    claimed.append((name, run_id))
                    s.finish_run(run_id, FINISHED)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store.open(url) as s:
        runs = s.sweep_runs(sweep_id)
    assert sorted(run["config_hash"] for run in runs) == cells  # each cell once, none twice
    assert {run["status"] for run in runs} == {FINISHED} and {run["attempt"] for run in runs} == {1}
    assert len(claimed) == len(cells)


def test_database_refuses_a_second_live_run_of_a_cell(store):
    sweep_id = store.open_sweep("s", "grid", "{}", 1)["id"]
    always = lambda runs: run_columns("cellA")  # noqa: E731 - a buggy policy that ignores live runs
    first, _ = store.claim(sweep_id, always, stale_after=600)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.claim(sweep_id, always, stale_after=600)  # RUNNING + RUNNING
    store.finish_run(first, FINISHED)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.claim(sweep_id, always, stale_after=600)  # FINISHED + RUNNING
    assert [run["id"] for run in store.sweep_runs(sweep_id)] == [first]  # the failed claims left nothing


def test_failed_and_killed_runs_do_not_block_a_retry_and_train_runs_may_repeat(store):
    sweep_id = store.open_sweep("s", "grid", "{}", 1)["id"]
    always = lambda runs: run_columns("cellA")  # noqa: E731
    for status in (FAILED, KILLED):
        run_id, _ = store.claim(sweep_id, always, stale_after=600)
        store.finish_run(run_id, status, "boom")
    retry, _ = store.claim(sweep_id, always, stale_after=600)
    assert store.get_run(retry)["status"] == RUNNING
    # `accumbench train` runs have no sweep: the same configuration may run any number of times.
    ids = [store.create_run(**run_columns("cellA")) for _ in range(2)]
    assert [store.get_run(i)["sweep_id"] for i in ids] == [None, None]


def test_stale_running_runs_are_reaped_at_claim(store):
    """Staleness is read from the recorded heartbeats: `dead` last beat an hour ago, `alive` just now.
    No sleep: the verdict cannot depend on how fast this machine runs the test."""
    sweep_id = store.open_sweep("s", "grid", "{}", 2)["id"]
    dead, _ = store.claim(sweep_id, first_free(["a", "b"]), stale_after=600)
    store.update_run(dead, heartbeat_at=datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=5))
    alive, reaped = store.claim(sweep_id, first_free(["a", "b"]), stale_after=600)
    assert reaped == [] and store.get_run(dead)["status"] == RUNNING  # 5 minutes is not stale at 600 s
    store.update_run(dead, heartbeat_at=datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1))
    store.heartbeat(alive)
    _, reaped = store.claim(sweep_id, lambda runs: None, stale_after=600)
    assert reaped == [dead]
    run = store.get_run(dead)
    assert run["status"] == KILLED and run["error"].startswith(STALE_ERROR) and run["finished_at"]
    assert store.get_run(alive)["status"] == RUNNING
    # The dead worker's run may come back to life (a network partition): it cannot revive the run.
    assert store.heartbeat(dead) is False
    assert store.finish_run(dead, FINISHED) is False
    assert store.get_run(dead)["status"] == KILLED


def test_staleness_is_judged_by_the_claiming_stores_clock(store):
    """A claim reads now from the store's clock: one 601 s ahead finds a run that just beat stale at 600 s,
    and says for how long it was silent by that clock. Nothing sleeps."""
    sweep_id = store.open_sweep("s", "grid", "{}", 2)["id"]
    run_id, _ = store.claim(sweep_id, first_free(["a", "b"]), stale_after=600)
    beat = store.get_run(run_id)["heartbeat_at"]
    store.clock = lambda: beat + timedelta(seconds=599)
    assert store.claim(sweep_id, lambda runs: None, stale_after=600) == (None, [])
    store.clock = lambda: beat + timedelta(seconds=601)
    assert store.claim(sweep_id, lambda runs: None, stale_after=600) == (None, [run_id])
    run = store.get_run(run_id)
    assert (run["status"], run["finished_at"]) == (KILLED, beat + timedelta(seconds=601))
    assert run["error"] == f"{STALE_ERROR}: no heartbeat for 601 s (its worker died or lost the database)"


def test_claim_passes_every_run_of_the_sweep_only(store):
    one = store.open_sweep("one", "g1", "{}", 1)["id"]
    two = store.open_sweep("two", "g2", "{}", 1)["id"]
    store.claim(one, first_free(["a"]), stale_after=600)
    seen = []
    store.claim(two, lambda runs: seen.extend(runs), stale_after=600)
    assert seen == []  # sweep one's run is not sweep two's business
    run_id, _ = store.claim(two, first_free(["a"]), stale_after=600)  # the same config, another sweep
    assert store.get_run(run_id)["sweep_id"] == two


def test_open_sweep_is_idempotent_and_refuses_another_grid(store):
    first = store.open_sweep("s", "grid", '{"a": 1}', 3)
    assert store.open_sweep("s", "grid", '{"a": 1}', 3) == first
    with pytest.raises(UserError, match="sweep 's' already exists with a different grid \\(3 cells\\).*new --name"):
        store.open_sweep("s", "other", "{}", 4)
    assert store.list_sweeps() == [first]  # one row, as open_sweep returned it


def test_parallel_open_sweep_creates_one_row(any_db):
    url = resolve_db_url(any_db)
    results, barrier = [], threading.Barrier(6)

    def worker():
        with Store.open(url) as s:
            barrier.wait()
            results.append(s.open_sweep("same", "grid", "{}", 2)["id"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
