"""Sweeps and their cells: a sweep's row, its runs, and the claim by which a worker takes the next cell.

Claiming is the one place where workers race: each claim is one write transaction that takes the
write lock at once (_begin_write on SQLite, the sweep's row FOR UPDATE on PostgreSQL), and the
one-live-run-per-cell index (schema.Run) backs it up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from accumbench.errors import UserError
from accumbench.store.connection import _begin_write, _resilient
from accumbench.store.schema import RUN_COLUMNS, Run, Sweep, _as_dict, _now
from accumbench.vocabulary import KILLED, RUNNING, STALE_ERROR


class SweepClaims:
    """The sweep half of Store (a mixin: Store's constructor sets url, engine and _session)."""

    url: str
    engine: Engine
    _session: sessionmaker
    # Where claim reads "now" from: the real UTC clock, unless a store (or a test, on the class) sets another.
    # Staleness is judged against the heartbeats that the workers stamped from their own clocks (_now), not
    # with the database's CURRENT_TIMESTAMP, so the seam is this `now` that the query compares them with:
    # a test moves this clock ahead instead of sleeping through --stale-after.
    clock: Callable[[], datetime] = staticmethod(_now)

    @_resilient()
    def open_sweep(self, name: str, grid_hash: str, spec_json: str, num_cells: int) -> dict[str, Any]:
        """The sweep called `name`, created if new. Every worker of a sweep calls this with the same
        grid; a different grid under an existing name is refused (UserError), as cells would be mixed."""
        for _ in range(2):  # a second try reads the row that a concurrent worker just inserted
            try:
                with self.engine.connect() as conn:
                    _begin_write(conn)
                    row = conn.execute(select(Sweep).where(Sweep.name == name)).first()
                    if row is None:
                        conn.execute(insert(Sweep).values(name=name, grid_hash=grid_hash, spec_json=spec_json,
                                                          num_cells=num_cells, created_at=_now()))
                        row = conn.execute(select(Sweep).where(Sweep.name == name)).first()
                    conn.commit()
            except IntegrityError:
                continue
            sweep = dict(row._mapping)
            if sweep["grid_hash"] != grid_hash:
                raise UserError(
                    f"sweep '{name}' already exists with a different grid ({sweep['num_cells']} cells); "
                    "rerun it with its own options, or pass a new --name"
                )
            return sweep
        raise RuntimeError(f"open_sweep: could not create or read sweep {name!r}")

    @_resilient()
    def sweep_runs(self, sweep_id: int) -> list[dict[str, Any]]:
        """Every run of the sweep, oldest first."""
        query = select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)
        with self._session() as session:
            return [_as_dict(run, RUN_COLUMNS) for run in session.scalars(query)]

    @_resilient()
    def claim(self, sweep_id: int, choose: Callable[[list[dict[str, Any]]], dict[str, Any] | None],
              stale_after: float) -> tuple[int | None, list[int]]:
        """Claim the next cell of a sweep for this worker, atomically.

        In one write transaction: mark the sweep's RUNNING runs whose heartbeat is older than
        `stale_after` seconds as KILLED (their worker died), read all its runs, and let `choose`
        (the sweep's policy: which cell, which attempt) return the run columns of the cell to run
        next, or None when nothing is left. That run is inserted as RUNNING (or, where the columns say status
        SKIPPED, as the finished record of a cell racing never trains). Returns (run id or
        None, ids of the runs marked KILLED). The one-live-run-per-cell index backs this up: a
        second live run of a cell raises IntegrityError rather than running the cell twice.
        """
        now = self.clock()
        with self.engine.connect() as conn:
            _begin_write(conn)
            conn.execute(select(Sweep.id).where(Sweep.id == sweep_id).with_for_update())  # PostgreSQL: the lock
            stale = conn.execute(
                select(Run.id, Run.heartbeat_at).where(
                    Run.sweep_id == sweep_id, Run.status == RUNNING,
                    Run.heartbeat_at < now - timedelta(seconds=stale_after))
            ).all()
            for run_id, beat in stale:
                silent = (now - beat).total_seconds()
                conn.execute(update(Run).where(Run.id == run_id).values(
                    status=KILLED, finished_at=now,
                    error=f"{STALE_ERROR}: no heartbeat for {silent:.0f} s (its worker died or lost the database)"))
            runs = [dict(row._mapping) for row in
                    conn.execute(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id))]
            columns = choose(runs)
            run_id = None
            if columns is not None:
                unknown = set(columns) - set(RUN_COLUMNS)
                if unknown:
                    raise TypeError(f"claim: not a run column: {', '.join(sorted(unknown))}")
                # A cell the policy passes over (racing's SKIPPED) is recorded done, in the same transaction.
                live = columns.get("status", RUNNING) == RUNNING
                times = dict(started_at=now, heartbeat_at=now) if live else dict(finished_at=now)
                result = conn.execute(insert(Run).values(
                    **{"status": RUNNING, **columns}, sweep_id=sweep_id, created_at=now, **times))
                run_id = result.inserted_primary_key[0]
            conn.commit()
        return run_id, [run_id for run_id, _ in stale]
