"""One sweep worker: claim a cell, train it, record it, repeat until none is left. Any number of workers
(terminals, GPUs, machines) can run the same sweep against one database, stop and resume it.

    preflight: every cell valid, every dataset and model loadable (bad input: exit 2, nothing written)
      -> store.open_sweep (the same name must mean the same grid)
      -> loop: store.claim (stale RUNNING runs -> KILLED; choose the next cell; insert it RUNNING)
               -> prepare -> fit (heartbeat) -> FINISHED | FAILED | KILLED | PRUNED (racing)
      -> the state of every cell

A worker claims a cell inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: a lock
on the sweep's row), and the database refuses a second live run of a cell (a partial unique
index), so the same command started in many terminals, on many GPUs or machines, runs every cell
once. What "next cell" means lives here, in `cell_statuses`; the SQL lives in store/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from accumbench.analysis.racing import Standing, claim_order, skip_reason
from accumbench.backends.device import require_supported_precision, resolve_precision
from accumbench.backends.static_step import resolve_cuda_graphs
from accumbench.config import RunConfig
from accumbench.errors import StoreUnavailable, UserError
from accumbench.model import check_model
from accumbench.model_names import check_model_name
from accumbench.runtime import engine
from accumbench.runtime.checkpoints import checkpoint_root, require_writable_checkpoints
from accumbench.runtime.lifecycle import (
    RunDiverged,
    RunLost,
    RunPruned,
    describe_failure,
    recorded_run,
    sigterm_as_exception,
)
from accumbench.runtime.preparation import load_dataset, loaded_columns, make_backend, prepare, run_columns, world_size
from accumbench.store import Store, resolve_db_url
from accumbench.sweep.presets import NEEDS_GPU_AND_HUB
from accumbench.sweep.race import Racer, sweep_standings
from accumbench.sweep.spec import SweepSpec
from accumbench.vocabulary import (
    CUT,
    DIVERGED,
    DIVERGED_PREFIX,
    DONE,
    FAILED,
    FINISHED,
    GAVE_UP,
    INTERRUPTED,
    KILLED,
    PASSED_OVER,
    PENDING,
    PRUNED,
    RUNNING,
    RUNNING_ELSEWHERE,
    SKIPPED,
    TERMINATED,
)

# --- which cell next --------------------------------------------------------------------------


@dataclass
class CellStatus:
    config: RunConfig
    state: str  # PENDING, RUNNING_ELSEWHERE, DONE, CUT (pruned), PASSED_OVER (skipped), DIVERGED or GAVE_UP
    attempts: int  # runs recorded for the cell
    failures: int  # of them, the ones that count against --max-retries
    run: dict[str, Any] | None  # the deciding run: the FINISHED or RUNNING one, else the latest


def counts_as_failure(run: dict[str, Any]) -> bool:
    """A failed attempt: an error, or a death (stale heartbeat). Not a user's Ctrl-C or SIGTERM:
    stopping a sweep and resuming it later must not use up a cell's retries."""
    if run["status"] == FAILED:
        return True
    return run["status"] == KILLED and run["error"] not in (INTERRUPTED, TERMINATED)


def cell_statuses(cells: tuple[RunConfig, ...], runs: list[dict[str, Any]], max_retries: int) -> list[CellStatus]:
    """Each cell's state from its recorded runs.

    A cell is done once it has a FINISHED run, and busy while it has a RUNNING one. A PRUNED run (racing
    stopped it), a SKIPPED one (racing passed it over) and a run that diverged are results (the same config
    diverges again), so none of these cells is run again. Otherwise it is pending until it has failed max_retries + 1 times."""
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_hash.setdefault(run["config_hash"], []).append(run)
    statuses = []
    for cell in cells:
        cell_runs = by_hash.get(cell.config_hash, [])
        failures = sum(counts_as_failure(run) for run in cell_runs)
        finished = [run for run in cell_runs if run["status"] == FINISHED]
        running = [run for run in cell_runs if run["status"] == RUNNING]
        pruned = [run for run in cell_runs if run["status"] == PRUNED]
        skipped = [run for run in cell_runs if run["status"] == SKIPPED]
        diverged = [run for run in cell_runs if run["status"] == FAILED and (run["error"] or "").startswith(DIVERGED_PREFIX)]
        if finished:
            state, deciding = DONE, finished[-1]
        elif running:
            state, deciding = RUNNING_ELSEWHERE, running[-1]
        elif pruned:
            state, deciding = CUT, pruned[-1]
        elif skipped:
            state, deciding = PASSED_OVER, skipped[-1]
        elif diverged:
            state, deciding = DIVERGED, diverged[-1]
        elif failures > max_retries:
            state, deciding = GAVE_UP, cell_runs[-1]
        else:
            state, deciding = PENDING, cell_runs[-1] if cell_runs else None
        statuses.append(CellStatus(cell, state, len(cell_runs), failures, deciding))
    return statuses


# --- preflight --------------------------------------------------------------------------------


def require_resources(spec: SweepSpec) -> None:
    """A preset that needs a GPU and the hub says so, naming everything missing, before any work."""
    if spec.preset not in NEEDS_GPU_AND_HUB:
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")

    not_cached = []
    for model in spec.axes["model"]:
        try:
            check_model(model, local_files_only=True)
        except UserError:
            not_cached.append(model)
    if not_cached:
        reachable, why = _hub_reachable()
        if not reachable:
            missing.append(f"the Hugging Face Hub ({', '.join(not_cached)} not cached, and {why})")
    if missing:
        raise UserError(
            f"--preset {spec.preset} needs {' and '.join(missing)}; run it on a GPU machine with internet access, "
            "or try --preset demo"
        )


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(whether the hub answers, why not). One TCP connect rather than a download: huggingface_hub
    retries a failing download for about a minute before it gives up."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE=1"
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError as exc:
        return False, f"{endpoint.hostname} is unreachable: {exc}"
    return True, ""


def preflight(spec: SweepSpec, url: str, cache: dict[Any, Any]) -> None:
    """Everything that could be the user's mistake, checked for every cell before the first claim: the
    database is ours, the resources are there, models and datasets load (datasets stay in `cache` for
    the cells), the sizes fit together and the checkpoints can be written. Claims and writes nothing."""
    Store.check_compatible(url)
    require_resources(spec)
    if world_size() > 1:
        raise UserError("accumbench sweep runs one process per worker; instead of torchrun, start one sweep per GPU "
                        "with CUDA_VISIBLE_DEVICES=<i> (see docs/many-machines.md)")
    for model in dict.fromkeys(cell.model for cell in spec.cells):
        check_model_name(model)  # one look at the hub, not a minute of retries, when it is out of reach
        check_model(model)
    for cell in spec.cells:
        require_supported_precision(cell.precision)
        resolve_cuda_graphs(cell.cuda_graphs, resolve_precision(cell.precision), cell.backend, world_size())  # `on`: can it?
        require_writable_checkpoints(url, cell)
        load_dataset(cell, cache)


# --- the worker loop ---------------------------------------------------------------------------


@dataclass
class SweepResult:
    sweep: dict[str, Any]
    statuses: list[CellStatus]
    ran: int  # cells this worker trained (any outcome)
    stopped_early: bool  # --fail-fast stopped this worker
    summaries: dict[int, dict[str, Any]]  # run id -> best epoch row, for finished and pruned cells

    def count(self, state: str) -> int:
        return sum(status.state == state for status in self.statuses)

    @property
    def ok(self) -> bool:
        """Every cell finished, pruned, skipped or still running on another worker; nothing failed for good."""
        return not self.stopped_early and all(s.state in (DONE, CUT, PASSED_OVER, RUNNING_ELSEWHERE)
                                            for s in self.statuses)


class SweepReporter:
    """Progress hooks of a sweep; this base stays silent (library use, tests)."""

    def sweep_started(self, spec: SweepSpec, sweep: dict[str, Any], statuses: list[CellStatus]) -> None: ...
    def reaped(self, run_ids: list[int]) -> None: ...
    def cell_started(self, spec: SweepSpec, status: CellStatus, run_id: int, done: int, eta: float | None) -> None: ...
    def cell_ended(self, run_id: int, outcome: str, detail: str) -> None: ...
    def run_reporter(self) -> engine.RunHooks:
        return engine.SilentHooks()


class ClaimPlan:
    """Which cell a worker claims next: the first pending one in the sweep's order, or with --race in racing's
    order from what the store knows now, where racing may record it SKIPPED instead (its reason in `skipped`)."""

    def __init__(self, spec: SweepSpec, order: list[RunConfig], known: dict[str, Standing] | None = None) -> None:
        self.spec, self.known = spec, known
        self.rank = {cell.config_hash: i for i, cell in enumerate(order)}
        self.picked: list[CellStatus] = []
        self.counts: dict[str, int] = {}
        self.skipped = ""

    @classmethod
    def read(cls, store: Store, sweep_id: int, spec: SweepSpec) -> ClaimPlan:
        if not spec.race:
            return cls(spec, list(spec.cells))
        known = sweep_standings(store, store.sweep_runs(sweep_id), spec.race_metric, spec.race_rule)
        return cls(spec, claim_order(spec.cells, known), known)

    def choose(self, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
        """store.claim's policy, inside its transaction (a claim retried after a lost connection chooses afresh)."""
        self.picked.clear()
        self.skipped = ""
        statuses = cell_statuses(self.spec.cells, runs, self.spec.max_retries)
        self.counts.update({state: sum(s.state == state for s in statuses) for state in (PENDING, DONE)})
        for status in sorted(statuses, key=lambda s: self.rank[s.config.config_hash]):
            if status.state != PENDING:
                continue
            self.picked.append(status)
            columns = {**run_columns(status.config), "attempt": status.attempts + 1}
            if self.known is not None:
                skip = skip_reason(status.config, self.spec.cells, self.known)
                if skip is not None:
                    self.skipped = skip[0]
                    return {**columns, "status": SKIPPED, "error": skip[0], "pruned_by": skip[1]}
            return columns
        return None


def run_sweep(spec: SweepSpec, db: str | None = None, reporter: SweepReporter | None = None,
              fit: engine.Fit = engine.fit) -> SweepResult:
    """Work on the sweep until no cell is left to claim. Safe to run in many processes at once. `fit` trains
    each claimed cell once it is prepared (engine.fit; a test passes one that crashes)."""
    reporter = reporter or SweepReporter()
    url = resolve_db_url(db)
    cache: dict[Any, Any] = {}
    preflight(spec, url, cache)

    store = Store.open(url)
    try:
        sweep = store.open_sweep(spec.sweep_name, spec.grid_hash, spec.to_json(), len(spec.cells))
        reporter.sweep_started(spec, sweep, cell_statuses(spec.cells, store.sweep_runs(sweep["id"]), spec.max_retries))
        ran, stopped_early, durations = 0, False, []
        with sigterm_as_exception():
            while not stopped_early:
                # With --race, what the store knows now decides the order and the skips (analysis/racing.py).
                plan = ClaimPlan.read(store, sweep["id"], spec)
                run_id, reaped = store.claim(sweep["id"], plan.choose, spec.stale_after)
                if reaped:
                    reporter.reaped(reaped)
                if run_id is None:
                    break
                status, counts = plan.picked[0], plan.counts
                if plan.skipped:
                    reporter.cell_ended(run_id, SKIPPED, plan.skipped)
                    continue
                eta = sum(durations) / len(durations) * counts[PENDING] if durations else None
                reporter.cell_started(spec, status, run_id, counts[DONE], eta)
                started = time.perf_counter()
                ran += 1
                racer = Racer(store, sweep["id"], status.config, spec.race_metric, spec.race_rule) if spec.race else None
                outcome, detail = _train_cell(store, url, status.config, run_id, cache, spec, reporter, racer, fit)
                durations.append(time.perf_counter() - started)
                reporter.cell_ended(run_id, outcome, detail)
                if outcome == FAILED and spec.fail_fast:
                    stopped_early = True
        statuses = cell_statuses(spec.cells, store.sweep_runs(sweep["id"]), spec.max_retries)
        summaries = {}
        for status in statuses:
            if status.state in (DONE, CUT) and status.run["best_epoch"]:
                epochs = store.epochs(status.run["id"])
                summaries[status.run["id"]] = next(e for e in epochs if e["epoch"] == status.run["best_epoch"])
        return SweepResult(sweep, statuses, ran, stopped_early, summaries)
    finally:
        store.close()


def _train_cell(store: Store, url: str, config: RunConfig, run_id: int, cache: dict[Any, Any],
                spec: SweepSpec, reporter: SweepReporter, racer: Racer | None = None,
                fit: engine.Fit = engine.fit) -> tuple[str, str]:
    """Train one claimed cell to its end. Returns (FINISHED | PRUNED | FAILED | lost, detail). Ctrl-C and
    SIGTERM are re-raised after the run is recorded as KILLED."""
    try:
        with recorded_run(store, run_id, spec.heartbeat_seconds) as heartbeat:
            prepared = prepare(config, cache)
            backend = make_backend(prepared)
            try:
                store.update_run(run_id, **loaded_columns(prepared, backend))
                result = fit(run_id, prepared, backend, store, reporter.run_reporter(), checkpoint_root(url, config),
                             heartbeat, racer)
            finally:
                backend.close()
    except RunDiverged as exc:
        return FAILED, f"{DIVERGED_PREFIX} {exc.step}"
    except RunPruned as exc:
        return PRUNED, str(exc)
    except RunLost as exc:
        return "lost", str(exc)
    except StoreUnavailable:
        raise  # no cell can be recorded now: the sweep stops (exit 1), and the same command resumes it
    except Exception as exc:  # recorded as FAILED by recorded_run; the sweep goes on (or stops: --fail-fast)
        return FAILED, describe_failure(exc)
    best = result.epochs[result.best_epoch - 1]
    return FINISHED, f"val acc {best['val_accuracy']:.3f}, test acc {best['test_accuracy']:.3f}"


