"""`accumbench sweep`: a grid of runs that any number of workers can share, stop and resume.

    spec (preset < YAML file < flags) -> cells (one RunConfig per grid point, named by config_hash)
      -> preflight: every cell valid, every dataset and model loadable (bad input: exit 2, nothing written)
      -> store.open_sweep (the same name must mean the same grid)
      -> loop: store.claim (stale RUNNING runs -> KILLED; choose the next cell; insert it RUNNING)
               -> prepare -> fit (heartbeat) -> FINISHED | FAILED | KILLED
      -> summary of every cell

A worker claims a cell inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: a lock
on the sweep's row), and the database refuses a second live run of a cell (a partial unique
index), so the same command started in many terminals, on many GPUs or machines, runs every cell
once. What "next cell" means lives here, in `cell_statuses`; the SQL lives in store.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Optional

from accumbench.config import (
    CONFIG_KEYS, RunConfig, check_value, coerce_field, file_error, format_lr, read_yaml_mapping,
)
from accumbench.errors import StoreUnavailable, UserError
from accumbench.store import DIVERGED_PREFIX, FAILED, FINISHED, INTERRUPTED, KILLED, RUNNING, TERMINATED

# The grid's axes: the plural name (flag and YAML key) of each RunConfig field a sweep can vary,
# outermost first. Cells are ordered so that one model/backend's EBS comparison completes early,
# and a seed's whole lr x EBS grid before the next seed: one seed already gives a tuned answer.
AXES = {"models": "model", "backends": "backend", "lr_scaling": "lr_scaling", "seeds": "seed", "lrs": "lr",
        "effective_batch_sizes": "effective_batch_size"}
# What each axis takes, for the error line when one of its values is wrong.
AXIS_EXAMPLES = {"models": "bert,modernbert", "backends": "torch,accelerate", "lr_scaling": "none,sqrt",
                 "seeds": "42,43,44", "lrs": "1e-5,3e-5,1e-4", "effective_batch_sizes": "64,256,1024"}
SWEEP_OPTIONS = {"name": None, "preset": None, "max_retries": 1, "stale_after": 600.0, "fail_fast": False}

PRESETS: dict[str, dict[str, Any]] = {
    # The original study (see README): IMDB pooled and split 8:1:1 once with seed 42; the grid's
    # seeds vary only the training order and the head. Needs the Hugging Face Hub and a CUDA GPU.
    "seed-study": dict(
        dataset="imdb", data_seed=42, max_length=128, models=["bert", "modernbert"], dropout=0.1,
        effective_batch_sizes=[64, 256, 1024], micro_batch_size=64, epochs=5, optimizer="adam", lr=5e-5,
        scheduler="constant", backends=["torch", "accelerate"], seeds=[42, 43, 44], lr_scaling=["none"],
        checkpoint=False,
    ),
    # Offline, on the packaged MiniLM and the synthetic reviews: about 4 minutes on 2 CPU cores. The
    # split is fixed like the study's, so that added seeds (--seeds 42,43,44) vary only the training.
    "demo": dict(
        models=["minilm"], dataset="demo", data_seed=42, effective_batch_sizes=[16, 32, 64], micro_batch_size=16,
        backends=["torch"], seeds=[42], lr_scaling=["none"], epochs=2, lr=1e-4, max_train_samples=480,
        max_eval_samples=120, checkpoint=False,
    ),
}
# The seed study re-run the way its own conclusion asked: every EBS at each of four learning rates, so
# that pick-best compares the EBS each at its own best lr (the tuned protocol). 72 cells, torch only.
PRESETS["tuned-study"] = {**{k: v for k, v in PRESETS["seed-study"].items() if k != "lr"},
                          "lrs": [1e-5, 3e-5, 1e-4, 3e-4], "backends": ["torch"]}
NEEDS_GPU_AND_HUB = ("seed-study", "tuned-study")

# Cell states, from the runs recorded for the cell.
PENDING, RUNNING_ELSEWHERE, DONE, DIVERGED, GAVE_UP = "pending", "running", "finished", "diverged", "gave up"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep as the user asked for it: grid axes, the options every cell shares, and how to run it."""

    axes: dict[str, tuple[Any, ...]]  # RunConfig field -> values
    options: dict[str, Any]  # RunConfig field -> value, the same for every cell
    name: Optional[str] = None
    preset: Optional[str] = None
    max_retries: int = 1
    stale_after: float = 600.0
    fail_fast: bool = False
    cells: tuple[RunConfig, ...] = field(default=(), compare=False)

    @property
    def grid_hash(self) -> str:
        """Names the set of cells: the same grid however it was spelled (preset, YAML, flags, order)."""
        hashes = sorted(cell.config_hash for cell in self.cells)
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]

    @property
    def sweep_name(self) -> str:
        """--name, or one derived from the grid: rerunning the same command resumes the same sweep."""
        return self.name or f"{self.preset or 'sweep'}-{self.grid_hash[:8]}"

    def to_json(self) -> str:
        return json.dumps({"preset": self.preset, "axes": {k: list(v) for k, v in self.axes.items()},
                           "options": self.options}, sort_keys=True)

    @property
    def heartbeat_seconds(self) -> float:
        """Beat four times per --stale-after (at most every 15 s), so a live run is never taken for dead."""
        return min(15.0, self.stale_after / 4)


def split_list(value: Any) -> list[Any]:
    """'64,256, 1024' -> ['64', '256', '1024']; a YAML list or a single value -> a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [value]


def read_sweep_yaml(path: Path) -> dict[str, Any]:
    """A sweep file: grid axes (lists), shared run options, and sweep options, all as top-level keys."""
    return read_yaml_mapping(path, "sweep file", (*AXES, *SWEEP_OPTIONS, *CONFIG_KEYS),
                             f"grid keys: {', '.join(AXES)}")


def build_spec(config_file: Optional[Path] = None, **given: Any) -> SweepSpec:
    """Preset, then the YAML file, then the flags that were given (not None). Expands and validates
    every cell, so a bad value fails here, before anything is written."""
    values: dict[str, Any] = {}
    from_file = read_sweep_yaml(config_file) if config_file else {}
    preset = given.get("preset") or from_file.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown --preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    flags = {k: v for k, v in given.items() if v is not None}
    if config_file:
        check_sweep_file(from_file, config_file, flags)
    sources = [(PRESETS[preset], f"in --preset {preset}")] if preset is not None else []
    sources += [(from_file, f"in {config_file}"), (flags, "on the command line")]
    for source, where in sources:
        for axis, name in AXES.items():
            if name != axis and name in source and axis in source:
                # --lr 1e-4 --lrs 1e-5,1e-4: one rate or a grid? Neither reading is safe to guess.
                raise UserError(f"{_spelling(name, where)} and {_spelling(axis, where)} both given {where}; "
                                f"keep {_spelling(axis, where)} for a grid (e.g. {AXIS_EXAMPLES[axis]}) or "
                                f"{_spelling(name, where)} for one value")
        for key, value in source.items():
            if key == "lr" and isinstance(value, (list, tuple)):
                raise UserError(f"'lr' takes one value in a sweep, got {value!r}; for a grid of learning rates "
                                f"use 'lrs: [{', '.join(map(str, value))}]' (or --lrs {','.join(map(str, value))})")
            # The singular spelling of an axis (model: bert in YAML, --lr 1e-4) sets a one-value axis.
            plural = next((axis for axis, name in AXES.items() if name == key), key)
            values[plural] = value
    if preset is not None:
        values["preset"] = preset

    axes = {name: axis_values(axis, values.pop(axis, getattr(RunConfig, name))) for axis, name in AXES.items()}
    sweep_options = {key: values.pop(key, default) for key, default in SWEEP_OPTIONS.items()}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            raise UserError(
                f"'{key}' takes one value in a sweep, got {value!r}; the grid axes are: {', '.join(AXES)}"
            )
    options = values
    max_retries, stale_after = retry_options(sweep_options["max_retries"], sweep_options["stale_after"])

    cells: dict[str, RunConfig] = {}
    for point in product(*axes.values()):
        cell_values = {**options, **dict(zip(axes, point))}
        try:
            cell = RunConfig(**cell_values)
        except UserError as exc:
            where = ", ".join(f"{name}={value}" for name, value in zip(axes, point) if len(axes[name]) > 1)
            raise UserError(f"{exc} (in the cell {where})" if where else str(exc)) from None
        cells.setdefault(cell.config_hash, cell)
    return SweepSpec(axes=axes, options=options, name=sweep_options["name"], preset=sweep_options["preset"],
                     max_retries=max_retries, stale_after=stale_after, fail_fast=bool(sweep_options["fail_fast"]),
                     cells=tuple(cells.values()))


def axis_values(axis: str, raw: Any) -> tuple[Any, ...]:
    """One grid axis ('64,256' or a YAML list) as RunConfig values, duplicates dropped, order kept;
    UserError naming the axis and an example when a value is not one."""
    name, flag, example = AXES[axis], "--" + axis.replace("_", "-"), AXIS_EXAMPLES[axis]
    items = split_list(raw)
    if not items:
        raise UserError(f"{flag} is empty; give at least one value, e.g. {flag} {example}")
    try:
        coerced = [coerce_field(name, item) for item in items]
    except UserError:
        bad = next(item for item in items if not _coerces(name, item))
        raise UserError(f"{flag} takes comma-separated values like {example}; {bad!r} is not one") from None
    if name == "lr":
        for lr in coerced:
            if not (lr > 0 and math.isfinite(lr)):
                raise UserError(f"{flag} must be positive learning rates, got {format_lr(lr)}; e.g. {flag} {example}")
    return tuple(dict.fromkeys(coerced))


def retry_options(max_retries: Any, stale_after: Any) -> tuple[int, float]:
    try:
        max_retries, stale_after = int(max_retries), float(stale_after)
    except (TypeError, ValueError):
        raise UserError("--max-retries must be an integer and --stale-after a number of seconds") from None
    if max_retries < 0:
        raise UserError(f"--max-retries must be >= 0, got {max_retries}; 0 never retries a failed cell")
    if not stale_after > 0:
        raise UserError(f"--stale-after must be a positive number of seconds, got {stale_after}; the default is 600")
    return max_retries, stale_after


def check_sweep_file(from_file: dict[str, Any], path: Path, flags: dict[str, Any]) -> None:
    """A sweep file on its own, before any flag is applied: every axis value, every run option, the retry
    options. A wrong value in it is an error even where a flag overrides it."""
    singular = {name: axis for axis, name in AXES.items()}
    for key, value in from_file.items():
        axis = key if key in AXES else singular.get(key)
        overriding = next((k for k in (key, axis, AXES.get(axis or "", "")) if k in flags), None)
        try:
            if axis is not None:
                for item in axis_values(axis, value):
                    check_value(AXES[axis], item)
            elif key in ("max_retries", "stale_after"):
                retry_options(from_file.get("max_retries", 1), from_file.get("stale_after", 600.0))
            elif key in CONFIG_KEYS and not isinstance(value, (list, tuple)):
                check_value(key, coerce_field(key, value))
        except UserError as exc:
            raise file_error(path, exc, overriding and "--" + overriding.replace("_", "-")) from None


def _spelling(key: str, where: str) -> str:
    """An option as the user wrote it: --lrs on the command line, lrs: in a file."""
    return f"--{key.replace('_', '-')}" if where == "on the command line" else f"'{key}'"


def _coerces(name: str, item: Any) -> bool:
    try:
        coerce_field(name, item)
    except UserError:
        return False
    return True


def grid_shape(spec: SweepSpec) -> str:
    """'2 models x 3 EBS x 4 lrs x 3 seeds = 72 cells': the axes that vary, and the cell count."""
    names = {"model": "models", "backend": "backends", "lr_scaling": "lr rules", "seed": "seeds", "lr": "lrs",
             "effective_batch_size": "EBS"}
    sizes = [f"{len(values)} {names[name]}" for name, values in spec.axes.items() if len(values) > 1]
    product_size = math.prod(len(values) for values in spec.axes.values())
    # Two grid points can name one configuration (one config_hash); it is then one cell.
    distinct = "" if product_size == len(spec.cells) else " distinct"
    return f"{' x '.join(sizes) or 'one point'} = {len(spec.cells)}{distinct} cell{'s' if len(spec.cells) != 1 else ''}"


# --- which cell next --------------------------------------------------------------------------


@dataclass
class CellStatus:
    config: RunConfig
    state: str  # PENDING, RUNNING_ELSEWHERE, DONE, DIVERGED or GAVE_UP
    attempts: int  # runs recorded for the cell
    failures: int  # of them, the ones that count against --max-retries
    run: Optional[dict[str, Any]]  # the deciding run: the FINISHED or RUNNING one, else the latest


def counts_as_failure(run: dict[str, Any]) -> bool:
    """A failed attempt: an error, or a death (stale heartbeat). Not a user's Ctrl-C or SIGTERM:
    stopping a sweep and resuming it later must not use up a cell's retries."""
    if run["status"] == FAILED:
        return True
    return run["status"] == KILLED and run["error"] not in (INTERRUPTED, TERMINATED)


def cell_statuses(cells: tuple[RunConfig, ...], runs: list[dict[str, Any]], max_retries: int) -> list[CellStatus]:
    """Each cell's state from its recorded runs.

    A cell is done once it has a FINISHED run, and busy while it has a RUNNING one. A run that
    diverged is a result (the same config diverges again), so the cell is not retried. Otherwise
    it is pending until it has failed max_retries + 1 times."""
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_hash.setdefault(run["config_hash"], []).append(run)
    statuses = []
    for cell in cells:
        cell_runs = by_hash.get(cell.config_hash, [])
        failures = sum(counts_as_failure(run) for run in cell_runs)
        finished = [run for run in cell_runs if run["status"] == FINISHED]
        running = [run for run in cell_runs if run["status"] == RUNNING]
        diverged = [run for run in cell_runs if run["status"] == FAILED and (run["error"] or "").startswith(DIVERGED_PREFIX)]
        if finished:
            state, deciding = DONE, finished[-1]
        elif running:
            state, deciding = RUNNING_ELSEWHERE, running[-1]
        elif diverged:
            state, deciding = DIVERGED, diverged[-1]
        elif failures > max_retries:
            state, deciding = GAVE_UP, cell_runs[-1]
        else:
            state, deciding = PENDING, cell_runs[-1] if cell_runs else None
        statuses.append(CellStatus(cell, state, len(cell_runs), failures, deciding))
    return statuses


def describe(config: RunConfig, spec: Optional[SweepSpec] = None) -> str:
    """A cell in a few words: the values of the axes that vary (all of them without a spec)."""
    parts = {"model": config.model, "effective_batch_size": f"EBS {config.effective_batch_size}",
             "backend": config.backend, "seed": f"seed {config.seed}", "lr": f"lr {format_lr(config.scaled_lr)}"}
    if config.lr_scaling != "none":
        parts["lr"] += f" ({config.lr_scaling})"
    varies = {name for name in parts if spec is None or len(spec.axes[name]) > 1}
    if spec is not None and len(spec.axes["lr_scaling"]) > 1:
        varies.add("lr")
    shown = [name for name in parts if name in varies] or ["model", "effective_batch_size"]
    return ", ".join(parts[name] for name in shown)


# --- preflight --------------------------------------------------------------------------------


def require_resources(spec: SweepSpec) -> None:
    """A preset that needs a GPU and the hub says so, naming everything missing, before any work."""
    if spec.preset not in NEEDS_GPU_AND_HUB:
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    from accumbench.model import check_model

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
    from accumbench.backends.base import require_supported_precision
    from accumbench.engine import load_dataset, require_writable_checkpoints, world_size
    from accumbench.model import check_model
    from accumbench.store import Store

    Store.check_compatible(url)
    require_resources(spec)
    if world_size() > 1:
        raise UserError("accumbench sweep runs one process per worker; instead of torchrun, start one sweep per GPU "
                        "with CUDA_VISIBLE_DEVICES=<i> (see the README)")
    for model in dict.fromkeys(cell.model for cell in spec.cells):
        check_model(model)
    for cell in spec.cells:
        require_supported_precision(cell.precision)
        require_writable_checkpoints(url, cell)
        load_dataset(cell, cache)


# --- the worker loop ---------------------------------------------------------------------------


@dataclass
class SweepResult:
    sweep: dict[str, Any]
    statuses: list[CellStatus]
    ran: int  # cells this worker trained (any outcome)
    stopped_early: bool  # --fail-fast stopped this worker
    summaries: dict[int, dict[str, Any]]  # run id -> best epoch row, for finished cells

    def count(self, state: str) -> int:
        return sum(status.state == state for status in self.statuses)

    @property
    def ok(self) -> bool:
        """Every cell finished or still running on another worker; nothing failed for good."""
        return not self.stopped_early and all(s.state in (DONE, RUNNING_ELSEWHERE) for s in self.statuses)


class SweepReporter:
    """Progress hooks of a sweep; this base stays silent (library use, tests)."""

    def sweep_started(self, spec: SweepSpec, sweep: dict[str, Any], statuses: list[CellStatus]) -> None: ...
    def reaped(self, run_ids: list[int]) -> None: ...
    def cell_started(self, spec: SweepSpec, status: CellStatus, run_id: int, done: int, eta: Optional[float]) -> None: ...
    def cell_ended(self, run_id: int, outcome: str, detail: str) -> None: ...
    def run_reporter(self) -> Any:
        from accumbench.progress import Reporter

        return Reporter()


def run_sweep(spec: SweepSpec, db: Optional[str] = None, reporter: Optional[SweepReporter] = None) -> SweepResult:
    """Work on the sweep until no cell is left to claim. Safe to run in many processes at once."""
    from accumbench import engine
    from accumbench.store import Store, resolve_db_url

    reporter = reporter or SweepReporter()
    url = resolve_db_url(db)
    cache: dict[Any, Any] = {}
    preflight(spec, url, cache)

    store = Store.open(url)
    try:
        sweep = store.open_sweep(spec.sweep_name, spec.grid_hash, spec.to_json(), len(spec.cells))
        reporter.sweep_started(spec, sweep, cell_statuses(spec.cells, store.sweep_runs(sweep["id"]), spec.max_retries))
        ran, stopped_early, durations = 0, False, []
        with engine._sigterm_as_exception():
            while not stopped_early:
                picked: list[CellStatus] = []
                counts: dict[str, int] = {}

                def choose(runs: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
                    picked.clear()  # a claim retried after a lost connection chooses afresh
                    statuses = cell_statuses(spec.cells, runs, spec.max_retries)
                    counts.update({state: sum(s.state == state for s in statuses) for state in (PENDING, DONE)})
                    for status in statuses:
                        if status.state == PENDING:
                            picked.append(status)
                            return {**engine.run_columns(status.config), "attempt": status.attempts + 1}
                    return None

                run_id, reaped = store.claim(sweep["id"], choose, spec.stale_after)
                if reaped:
                    reporter.reaped(reaped)
                if run_id is None:
                    break
                status = picked[0]
                eta = sum(durations) / len(durations) * counts[PENDING] if durations else None
                reporter.cell_started(spec, status, run_id, counts[DONE], eta)
                started = time.perf_counter()
                ran += 1
                outcome, detail = _train_cell(engine, store, url, status.config, run_id, cache, spec, reporter)
                durations.append(time.perf_counter() - started)
                reporter.cell_ended(run_id, outcome, detail)
                if outcome == FAILED and spec.fail_fast:
                    stopped_early = True
        statuses = cell_statuses(spec.cells, store.sweep_runs(sweep["id"]), spec.max_retries)
        summaries = {}
        for status in statuses:
            if status.state == DONE and status.run["best_epoch"]:
                epochs = store.epochs(status.run["id"])
                summaries[status.run["id"]] = next(e for e in epochs if e["epoch"] == status.run["best_epoch"])
        return SweepResult(sweep, statuses, ran, stopped_early, summaries)
    finally:
        store.close()


def _train_cell(engine: Any, store: Any, url: str, config: RunConfig, run_id: int, cache: dict[Any, Any],
                spec: SweepSpec, reporter: SweepReporter) -> tuple[str, str]:
    """Train one claimed cell to its end. Returns (FINISHED | FAILED | lost, detail). Ctrl-C and
    SIGTERM are re-raised after the run is recorded as KILLED."""
    try:
        with engine.recorded_run(store, run_id, spec.heartbeat_seconds) as heartbeat:
            prepared = engine.prepare(config, cache)
            backend = engine.make_backend(prepared)
            try:
                store.update_run(run_id, **engine.loaded_columns(prepared, backend))
                result = engine.fit(run_id, prepared, backend, store, reporter.run_reporter(),
                                    engine.checkpoint_root(url, config), heartbeat)
            finally:
                backend.close()
    except engine.RunDiverged as exc:
        return FAILED, f"{DIVERGED_PREFIX} {exc.step}"
    except engine.RunLost as exc:
        return "lost", str(exc)
    except StoreUnavailable:
        raise  # no cell can be recorded now: the sweep stops (exit 1), and the same command resumes it
    except Exception as exc:  # recorded as FAILED by recorded_run; the sweep goes on (or stops: --fail-fast)
        return FAILED, engine.describe_failure(exc)
    best = result.epochs[result.best_epoch - 1]
    return FINISHED, f"val acc {best['val_accuracy']:.3f}, test acc {best['test_accuracy']:.3f}"


# --- several local workers: `sweep --workers N` ---------------------------------------------------


def worker_environments(count: int, gpus: list[str], cpus: int) -> list[dict[str, str]]:
    """What each of `count` local workers sees: one visible GPU each (CUDA_VISIBLE_DEVICES), or on a
    CPU-only machine its share of the cores (two 2-thread workers on 2 cores ran 5.5x slower than two
    1-thread ones: they fight over the same cores)."""
    if gpus:
        if count > len(gpus):
            raise UserError(f"--workers {count} but {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} visible "
                            f"({','.join(gpus)}); one worker per GPU: use --workers {len(gpus)} or fewer")
        return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus[:count]]
    threads = str(max(1, cpus // count))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            for _ in range(count)]


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES would name them to a child."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in given.split(",") if part.strip()] if given else []
    return ids[: torch.cuda.device_count()] if ids else [str(i) for i in range(torch.cuda.device_count())]


def spec_as_yaml(spec: SweepSpec) -> str:
    """The resolved grid as a sweep file: the same cells (the same grid hash) under the same name, for
    workers started by `--workers` (each reads it with --config)."""
    import yaml

    axes = {axis: list(spec.axes[name]) for axis, name in AXES.items()}
    sweep = {"name": spec.sweep_name, "max_retries": spec.max_retries, "stale_after": spec.stale_after,
             "fail_fast": spec.fail_fast}
    return yaml.safe_dump({**sweep, **axes, **spec.options}, sort_keys=False)


def run_workers(spec: SweepSpec, db: Optional[str], count: int, echo: Any) -> int:
    """Start `count` workers of the sweep on this machine, one per visible GPU or with the CPU's cores
    split between them, against one database; print their lines prefixed [worker i]; wait for all.
    Ctrl-C or SIGTERM reaches every worker, each records its run KILLED. The exit code is the first
    non-zero worker's, else 0."""
    import signal
    import subprocess
    import sys
    import tempfile
    import threading

    environments = worker_environments(count, visible_gpus(), os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="accumbench-workers-") as tmp:
        grid = Path(tmp) / "sweep.yaml"
        grid.write_text(spec_as_yaml(spec))
        command = [sys.executable, "-m", "accumbench", "sweep", "--config", str(grid)]
        if db is not None:
            command += ["--db", db]
        shown = ", ".join(" ".join(f"{k}={v}" for k, v in env.items() if v) or "CUDA_VISIBLE_DEVICES=" for env in environments)
        echo(f"sweep {spec.sweep_name}: starting {count} workers ({shown})")
        workers: list[subprocess.Popen] = []

        def forward(signum: int, _frame: Any) -> None:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signum)

        def relay(index: int, worker: subprocess.Popen) -> None:
            for line in worker.stdout:
                echo(f"[worker {index}] {line.rstrip()}")

        # Handlers first, so that no signal finds a worker started and not yet known to forward().
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        relays = []
        try:
            for index, env in enumerate(environments, 1):
                # Each worker in a session of its own: a terminal's Ctrl-C reaches this process alone, which
                # passes it on once. (In our process group every worker would get it twice, and the second
                # can cut short the write that records its run KILLED.)
                workers.append(subprocess.Popen(
                    command, env={**os.environ, **env, "COLUMNS": os.environ.get("COLUMNS", "100")},
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True))
                relays.append(threading.Thread(target=relay, args=(index, workers[-1]), daemon=True))
                relays[-1].start()
            codes = [worker.wait() for worker in workers]
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for worker in workers:  # only after an error of our own: stop the workers we started
                if worker.poll() is None:
                    worker.terminate()
        for thread in relays:
            thread.join()
    echo(f"sweep {spec.sweep_name}: {count} workers ended with exit codes {codes}")
    return next((code for code in codes if code != 0), 0)
