"""`python -m accumbench`, with runs that pause: the test entry of the tests that signal or kill a run.

    python tests/paused_accumbench.py PAUSE train ...      (paused_command(PAUSE) + accumbench's arguments)

After recording each epoch, a run writes "<run id> <epoch>" to the file PAUSE and waits until the file is
removed. A test synchronises on that recorded state instead of racing a tiny model that may finish before
its signal lands; Ctrl-C and SIGTERM land in the wait as anywhere else in training. The pause is the
reporter's: every run's RunHooks are wrapped by the `fit` that train calls and that a sweep's worker is
given, and `sweep --workers N` starts its workers through this entry too. Nothing in accumbench reads it.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Any


def paused_command(pause: Path) -> list[str]:
    """The command line that starts accumbench with its runs pausing on `pause`; accumbench's arguments follow."""
    return [sys.executable, str(Path(__file__).resolve()), str(pause)]


class PausingHooks:
    """RunHooks that show what `shown` shows, then wait on the pause file after each recorded epoch."""

    def __init__(self, shown: Any, pause: Path) -> None:
        self.shown, self.pause, self.run_id = shown, pause, None

    def run_started(self, run_id: int | None, *args: Any, **kwargs: Any) -> None:
        self.run_id = run_id
        self.shown.run_started(run_id, *args, **kwargs)

    def epoch_started(self, epoch: int, num_samples: int) -> None:
        self.shown.epoch_started(epoch, num_samples)

    def step(self, samples_done: int, loss: float) -> None:
        self.shown.step(samples_done, loss)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        self.shown.epoch_finished(row)
        self.pause.write_text(f"{self.run_id} {row['epoch']}")
        while self.pause.exists():
            time.sleep(0.02)


def main(pause: Path, argv: list[str]) -> None:
    from accumbench.cli.app import main as accumbench
    from accumbench.runtime import engine
    from accumbench.sweep import local, worker

    fit = engine.fit

    def pausing_fit(run_id: int | None, prepared: Any, backend: Any, store: Any, reporter: Any, *args: Any,
                    **kwargs: Any) -> Any:
        return fit(run_id, prepared, backend, store, PausingHooks(reporter or engine.SilentHooks(), pause), *args,
                   **kwargs)

    engine.fit = pausing_fit  # what train() calls
    worker.run_sweep = partial(worker.run_sweep, fit=pausing_fit)
    local.run_workers = partial(local.run_workers, command=paused_command(pause))
    accumbench(argv)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
