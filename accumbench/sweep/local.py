"""`sweep --workers N`: several workers of one sweep on this machine, one per visible GPU or with the
CPU's cores split between them, each a `accumbench sweep` process of its own against one database."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accumbench.errors import UserError
from accumbench.store import resolve_db_url
from accumbench.sweep.spec import AXES, SweepSpec


def check_worker_count(count: int) -> None:
    """--workers is checked first, also with --dry-run: one error line, before the grid is read."""
    if count < 1:
        raise UserError(f"--workers must be at least 1, got {count}")


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
             "fail_fast": spec.fail_fast, "race": spec.race, "race_alpha": spec.race_alpha,
             "race_after": spec.race_after, "race_metric": spec.race_metric, "race_margin": spec.race_margin,
             "race_guard": spec.race_guard}
    return yaml.safe_dump({**sweep, **axes, **spec.options}, sort_keys=False)


def run_workers(spec: SweepSpec, db: str | None, count: int, echo: Any, command: Sequence[str] = ()) -> int:
    """Start `count` workers of the sweep on this machine, one per visible GPU or with the CPU's cores
    split between them, against one database; print their lines prefixed [worker i]; wait for all.
    Ctrl-C or SIGTERM reaches every worker, each records its run KILLED. The exit code is the first
    non-zero worker's, else 0. `command` starts accumbench in a worker (default: this Python's
    `-m accumbench`); the sweep's arguments follow it."""
    import signal
    import subprocess
    import sys
    import tempfile
    import threading

    from accumbench.sweep.worker import preflight  # torch and the engine: only once workers are to start

    preflight(spec, resolve_db_url(db), {})  # bad input is said once, here, not once per worker
    environments = worker_environments(count, visible_gpus(), os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="accumbench-workers-") as tmp:
        grid = Path(tmp) / "sweep.yaml"
        grid.write_text(spec_as_yaml(spec))
        worker_command = [*(command or (sys.executable, "-m", "accumbench")), "sweep", "--config", str(grid)]
        if db is not None:
            worker_command += ["--db", db]
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
                    worker_command, env={**os.environ, **env, "COLUMNS": os.environ.get("COLUMNS", "100")},
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
