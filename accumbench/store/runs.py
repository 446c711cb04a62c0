"""Runs and what they record: a run's row, its epochs, its optimizer steps, its evaluations between
epochs and its predictions, written as a run trains and read back for sweeps and reports."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import delete, insert, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from accumbench.config import PRECISIONS  # runs.precision (accelerate's mixed_precision names)
from accumbench.store.connection import _resilient, free_reserve, sqlite_path
from accumbench.store.schema import (
    EPOCH_COLUMNS,
    EVAL_COLUMNS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    SWEEP_COLUMNS,
    Epoch,
    EpochPrediction,
    Prediction,
    Run,
    Step,
    StepEvaluation,
    Sweep,
    _as_dict,
    _now,
    _pack,
    _unpack,
)
from accumbench.vocabulary import FINISHED, RUNNING, TERMINAL_STATUSES


class RunRecords:
    """The run half of Store (a mixin: Store's constructor sets url, engine and _session). Each write
    is its own short transaction."""

    url: str
    engine: Engine
    _session: sessionmaker

    # --- writing, as a run trains -----------------------------------------------------------------

    @_resilient()
    def create_run(
        self, *, config_json: str, config_hash: str, backend: str, model: str, dataset: str,
        seed: int, lr: float, effective_batch_size: int, micro_batch_size: int,
        accumulation_steps: int, epochs: int, max_length: int, optimizer: str, scheduler: str,
        torch_version: str | None = None, transformers_version: str | None = None,
        accelerate_version: str | None = None, device: str | None = None,
        num_train_samples: int | None = None, num_val_samples: int | None = None,
        num_test_samples: int | None = None, num_labels: int | None = None,
        precision: str | None = None, world_size: int | None = None, cuda_graphs: str | None = None,
        base_lr: float | None = None, lr_scaling: str | None = None, base_batch_size: int | None = None,
        budget: str | None = None, train_steps: int | None = None,
        tokenize_seconds: float | None = None, tokens_cached: bool | None = None,
        text_columns: str | None = None, split_source: str | None = None, dropped_rows: str | None = None,
        positive_label: str | None = None, positive_class: int | None = None,
        beta1: float | None = None, beta2: float | None = None, eps: float | None = None,
        weight_decay: float | None = None, beta1_scaling: str | None = None, beta2_scaling: str | None = None,
        eps_scaling: str | None = None, weight_decay_scaling: str | None = None, scaling_rule: str | None = None,
    ) -> int:
        """Insert a run with status RUNNING; created/started/heartbeat = now. Returns its id.
        (Runs of a sweep are inserted by claim() instead.)"""
        fields = dict(locals())  # exactly the keyword arguments above: all run columns
        del fields["self"]
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"create_run: precision must be one of {PRECISIONS} or None, not {precision!r}")
        now = _now()
        run = Run(status=RUNNING, created_at=now, started_at=now, heartbeat_at=now, **fields)
        with self._session.begin() as session:
            session.add(run)
        return run.id

    @_resilient(idempotent=True)
    def add_epoch(self, run_id: int, **metrics: Any) -> None:
        """Record one finished epoch and bump the run's heartbeat, atomically.

        A duplicate (run_id, epoch) raises sqlalchemy.exc.IntegrityError.
        """
        with self._session.begin() as session:
            run = self._get(session, run_id)
            session.add(Epoch(run_id=run_id, **metrics))  # unknown key -> TypeError
            run.heartbeat_at = _now()

    @_resilient(idempotent=True)
    def add_steps(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Record many optimizer steps and bump the run's heartbeat, in one transaction.

        Each row has step, epoch, samples_seen, loss, lr and optionally grad_norm
        (run_id is filled in). One executemany INSERT, so hundreds of rows per
        epoch cost one commit. All or nothing: a duplicate (run_id, step) raises
        sqlalchemy.exc.IntegrityError and inserts none of the rows.
        """
        allowed = set(STEP_COLUMNS) - {"id", "run_id"}
        for row in rows:
            unknown = set(row) - allowed
            if unknown:
                raise TypeError(f"add_steps: not a step column: {', '.join(sorted(unknown))}")
        with self._session.begin() as session:
            run = self._get(session, run_id)
            if rows:
                session.execute(insert(Step), [{**row, "run_id": run_id} for row in rows])
            run.heartbeat_at = _now()

    @_resilient(idempotent=True)
    def add_evals(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        """Record validation evaluations (step, epoch, samples_seen, val_loss, val_accuracy), in one transaction."""
        allowed = set(EVAL_COLUMNS) - {"id", "run_id"}
        for row in rows:
            if set(row) != allowed:
                raise TypeError(f"add_evals: an evaluation has exactly the columns {', '.join(sorted(allowed))}")
        if not rows:
            return
        with self._session.begin() as session:
            self._get(session, run_id)
            session.execute(insert(StepEvaluation), [{**row, "run_id": run_id} for row in rows])

    @_resilient()
    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set arbitrary run columns, e.g. best_epoch=3, checkpoint_path='...'."""
        unknown = set(fields) - (set(RUN_COLUMNS) - {"id"})
        if unknown:
            raise TypeError(f"update_run: not an updatable run column: {', '.join(sorted(unknown))}")
        with self._session.begin() as session:
            run = self._get(session, run_id)
            for name, value in fields.items():
                setattr(run, name, value)

    @_resilient()
    def finish_run(self, run_id: int, status: str, error: str | None = None, **columns: Any) -> bool:
        """Move a RUNNING run to a terminal status (FINISHED, FAILED, KILLED or PRUNED), with finished_at=now,
        error and any other run `columns` (a PRUNED run's decision) in the same write. Returns False, changing
        nothing, when the run had already ended: e.g. another worker marked it KILLED because its heartbeat
        had gone stale. KeyError if there is no such run."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"finish_run: status must be one of {TERMINAL_STATUSES}, not {status!r}")
        unknown = set(columns) - (set(RUN_COLUMNS) - {"id", "status", "finished_at", "error"})
        if unknown:
            raise TypeError(f"finish_run: not a run column to set: {', '.join(sorted(unknown))}")
        with self._session.begin() as session:
            self._get(session, run_id)
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RUNNING)
                .values(status=status, finished_at=_now(), error=error, **columns)
            )
            return result.rowcount == 1

    def make_room(self) -> None:
        """On a full disk, free the space kept in reserve beside an SQLite file (reserve_space), so that
        the write that says why a run ended still fits. A server keeps its own: nothing to do."""
        path = sqlite_path(self.url)
        if path is not None:
            free_reserve(path)

    @_resilient()
    def heartbeat(self, run_id: int) -> bool:
        """Say the run is alive (heartbeat_at=now). False when it is no longer RUNNING, i.e. another
        worker has given it up for dead: the caller should stop training it."""
        with self._session.begin() as session:
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RUNNING).values(heartbeat_at=_now())
            )
            return result.rowcount == 1

    @_resilient(idempotent=True)
    def save_predictions(self, run_id: int, split: str, epoch: int, split_hash: str,
                         labels: list[int], predicted: list[int], best: bool = True) -> None:
        """Record the run's predictions on `split` at `epoch` (replacing any earlier ones of that epoch),
        and, with `best`, as its checkpoint's (replacing the earlier best)."""
        if len(labels) != len(predicted):
            raise ValueError("save_predictions: labels and predicted differ in length")
        row = dict(run_id=run_id, split=split, epoch=epoch, num_examples=len(labels), split_hash=split_hash,
                   labels=_pack(labels), predicted=_pack(predicted))
        with self._session.begin() as session:
            self._get(session, run_id)
            session.execute(delete(EpochPrediction).where(EpochPrediction.run_id == run_id,
                                                          EpochPrediction.split == split, EpochPrediction.epoch == epoch))
            session.add(EpochPrediction(**row))
            if best:
                session.execute(delete(Prediction).where(Prediction.run_id == run_id, Prediction.split == split))
                session.add(Prediction(**row))

    # --- reading ----------------------------------------------------------------------------------

    @_resilient()
    def get_run(self, run_id: int) -> dict[str, Any]:
        """All columns of one run; KeyError if there is no such run."""
        with self._session() as session:
            return _as_dict(self._get(session, run_id), RUN_COLUMNS)

    @_resilient()
    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """The run's epoch rows ordered by epoch (empty if none, or no such run)."""
        return self._epoch_rows(lambda query: query.where(Epoch.run_id == run_id).order_by(Epoch.epoch))

    def predictions(self, run_ids: list[int], split: str, epochs: dict[int, int] | None = None
                    ) -> dict[int, dict[str, Any]]:
        """{run id: {epoch, split_hash, labels, predicted}} for the runs that have predictions on `split`:
        at the checkpoint's epoch, or with `epochs` ({run id: epoch}) at that epoch, from every epoch's
        predictions or (a run recorded before those were kept) the checkpoint's when its epoch is that one."""
        found: dict[int, Any] = {}
        with self._session() as session:
            if epochs is not None:
                query = select(EpochPrediction).where(EpochPrediction.run_id.in_(run_ids),
                                                      EpochPrediction.split == split)
                found = {p.run_id: p for p in session.scalars(query) if epochs.get(p.run_id) == p.epoch}
            query = select(Prediction).where(Prediction.run_id.in_(run_ids), Prediction.split == split)
            for p in session.scalars(query):
                if p.run_id not in found and (epochs is None or epochs.get(p.run_id) == p.epoch):
                    found[p.run_id] = p
            return {run_id: dict(epoch=p.epoch, split_hash=p.split_hash, labels=_unpack(p.labels),
                                 predicted=_unpack(p.predicted)) for run_id, p in found.items()}

    # --- reading for reports (report and pick-best open the store with open_readonly) -------------

    def find_runs(self, status: str | None = FINISHED, sweep: str | None = None, model: str | None = None,
                  backend: str | None = None) -> list[dict[str, Any]]:
        """Runs matching every filter given, oldest first. `sweep` is a sweep's name."""
        query = select(Run).order_by(Run.id)
        if status is not None:
            query = query.where(Run.status == status)
        if sweep is not None:
            query = query.join(Sweep, Sweep.id == Run.sweep_id).where(Sweep.name == sweep)
        if model is not None:
            query = query.where(Run.model == model)
        if backend is not None:
            query = query.where(Run.backend == backend)
        with self._session() as session:
            return [_as_dict(run, RUN_COLUMNS) for run in session.scalars(query)]

    def epochs_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        return self._epoch_rows(lambda query: query.where(Epoch.run_id.in_(run_ids)).order_by(Epoch.run_id, Epoch.epoch))

    @functools.cached_property
    def _epoch_columns_present(self) -> set[str]:
        """The epochs table's columns in this database, read once per store."""
        return {column["name"] for column in inspect(self.engine).get_columns(Epoch.__tablename__)}

    def _epoch_rows(self, where: Any) -> list[dict[str, Any]]:
        """Epoch rows as dicts of every column (EPOCH_COLUMNS), selected by where(query). A metric's columns
        that this database lacks read as None: a read-only store is not upgraded, and one written before a metric
        was added to metrics.TABLE has none of its columns until a writable open adds them
        (migrations.add_metric_columns)."""
        present = self._epoch_columns_present
        query = where(select(*(Epoch.__table__.c[name] for name in EPOCH_COLUMNS if name in present)))
        with self._session() as session:
            return [{name: row.get(name) for name in EPOCH_COLUMNS} for row in session.execute(query).mappings()]

    def steps_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = select(Step).where(Step.run_id.in_(run_ids)).order_by(Step.run_id, Step.step)
        with self._session() as session:
            return [_as_dict(row, STEP_COLUMNS) for row in session.scalars(query)]

    def evals_of(self, run_ids: list[int]) -> list[dict[str, Any]]:
        query = (select(StepEvaluation).where(StepEvaluation.run_id.in_(run_ids))
                 .order_by(StepEvaluation.run_id, StepEvaluation.step))
        with self._session() as session:
            return [_as_dict(row, EVAL_COLUMNS) for row in session.scalars(query)]

    def list_sweeps(self) -> list[dict[str, Any]]:
        with self._session() as session:
            return [_as_dict(sweep, SWEEP_COLUMNS) for sweep in session.scalars(select(Sweep).order_by(Sweep.id))]

    @staticmethod
    def _get(session, run_id: int) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run with id {run_id}")
        return run
