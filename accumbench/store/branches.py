"""Saved states and the branches trained from them (accumbench branch): written and read.

A state is a file (the model's and optimizer's state dicts); its row says which run it belongs to and at
which point of training it was saved. A branch row is one short training from a state at one EBS and seed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select

from accumbench.store.connection import _resilient
from accumbench.store.schema import BRANCH_COLUMNS, STATE_COLUMNS, Branch, SavedState, _as_dict


class BranchRecords:
    """The branch half of Store (a mixin, like RunRecords). Each write is its own short transaction."""

    _session: Any

    @_resilient()
    def add_state(self, run_id: int, epoch: float, step: int, samples_seen: int, effective_batch_size: int,
                  path: str) -> int:
        """Record a saved state (replacing one saved at the same step of the run, e.g. by a retried run); its id."""
        with self._session.begin() as session:
            session.execute(delete(SavedState).where(SavedState.run_id == run_id, SavedState.step == step))
            return session.execute(insert(SavedState).values(
                run_id=run_id, epoch=epoch, step=step, samples_seen=samples_seen,
                effective_batch_size=effective_batch_size, path=path).returning(SavedState.id)).scalar_one()

    def states_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = select(SavedState).where(SavedState.run_id.in_(run_ids)).order_by(SavedState.run_id, SavedState.step)
        with self._session() as session:
            return [_as_dict(row, STATE_COLUMNS) for row in session.scalars(query)]

    @_resilient()
    def add_branch(self, **columns: Any) -> None:
        """Record one branch (replacing an earlier one of the same state, EBS, seed, samples and lr)."""
        allowed = set(BRANCH_COLUMNS) - {"id", "created_at"}
        if set(columns) != allowed:
            raise TypeError(f"add_branch: a branch has exactly the columns {', '.join(sorted(allowed))}")
        key = ("state_id", "effective_batch_size", "seed", "samples", "lr")
        with self._session.begin() as session:
            session.execute(delete(Branch).where(*(getattr(Branch, name) == columns[name] for name in key)))
            session.execute(insert(Branch).values(**columns))

    def branches_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = select(Branch).where(Branch.run_id.in_(run_ids)).order_by(Branch.run_id, Branch.state_id,
                                                                          Branch.effective_batch_size, Branch.seed)
        with self._session() as session:
            return [_as_dict(row, BRANCH_COLUMNS) for row in session.scalars(query)]
