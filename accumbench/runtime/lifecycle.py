"""A recorded run's life in the store: RUNNING while its heartbeat beats, then FINISHED, FAILED, KILLED or
PRUNED, whatever happens, so that no run is left RUNNING by a crash, a signal or a full disk.

    recorded_run(store, run_id)   the block that trains a RUNNING run: its Heartbeat thread beats, and its
                                  end is recorded (FINISHED | FAILED, 'diverged at step S' | KILLED | PRUNED)
    sigterm_as_exception          SIGTERM raised as Terminated, so that it ends a run like Ctrl-C does
    describe_failure              a failed run's error, in one line
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from accumbench.backends.base import Diverged
from accumbench.errors import StoreUnavailable, Terminated, first_line
from accumbench.store import Store
from accumbench.vocabulary import DIVERGED_PREFIX, FAILED, FINISHED, INTERRUPTED, KILLED, PRUNED, TERMINATED

# A running run says it is alive this often (and at every epoch end), so a sweep can tell a
# crashed worker's run from a slow one. Sweeps shorten it to a quarter of their --stale-after.
HEARTBEAT_SECONDS = 15.0


class RunDiverged(Exception):
    """The run's loss became NaN or infinite. It is recorded as FAILED with 'diverged at step S'."""

    def __init__(self, run_id: int | None, step: int, loss: float) -> None:
        super().__init__(f"run {run_id} diverged at step {step} (loss {loss})")
        self.run_id, self.step, self.loss = run_id, step, loss


class RunLost(Exception):
    """Another worker marked this run KILLED (its heartbeat looked stale), so its result is not ours
    to record: the cell has been handed to someone else."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} was marked KILLED by another worker (stale heartbeat); its result is discarded")
        self.run_id = run_id


class RunPruned(Exception):
    """Racing stopped the run after an epoch (sweep --race): `decision` (analysis.racing.PruneDecision)
    says why. It is recorded as PRUNED, with the decision in its columns."""

    def __init__(self, decision: Any, metric: str = "val_accuracy") -> None:
        super().__init__(decision.describe(metric))
        self.decision = decision


@contextmanager
def recorded_run(store: Store, run_id: int, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> Iterator[Heartbeat]:
    """Keep a RUNNING run's heartbeat fresh while the block trains it, then close the run whatever
    happened: FINISHED; FAILED on an error, or 'diverged at step S' (raised as RunDiverged); PRUNED when
    racing stopped it (RunPruned, re-raised); KILLED on Ctrl-C or SIGTERM (re-raised). If another worker
    gave the run up for dead meanwhile, RunLost is raised and the run is left as that worker recorded it."""
    try:
        with Heartbeat(store, run_id, heartbeat_seconds) as heartbeat:
            yield heartbeat
    except RunLost:
        raise  # not ours to close: another worker has marked it KILLED
    except RunPruned as exc:
        # The status and the decision in one write: no run is ever PRUNED without saying why.
        if not store.finish_run(run_id, PRUNED, str(exc), **exc.decision.columns()):
            raise RunLost(run_id) from None
        raise
    except Diverged as exc:
        store.add_steps(run_id, exc.steps)  # the steps up to and including the one that diverged
        store.finish_run(run_id, FAILED, f"{DIVERGED_PREFIX} {exc.step}")
        raise RunDiverged(run_id, exc.step, exc.loss) from None
    except KeyboardInterrupt:
        _close(store, run_id, KILLED, INTERRUPTED)
        raise
    except Terminated:
        _close(store, run_id, KILLED, TERMINATED)
        raise
    except BaseException as exc:
        _close(store, run_id, FAILED, describe_failure(exc))
        raise
    if not store.finish_run(run_id, FINISHED):
        raise RunLost(run_id)


def _close(store: Store, run_id: int, status: str, error: str) -> None:
    """Record how a run ended, on the way out of an error. If even that write fails (the disk is full, the
    server is gone), say so and let the original error go on: the run stays RUNNING, its heartbeat stops,
    and a sweep worker marks it KILLED once --stale-after passes."""
    try:
        store.finish_run(run_id, status, error)
        return
    except Exception:  # noqa: BLE001 - whatever stops this write, the first error is the one to raise
        pass
    try:
        store.make_room()  # a full disk: the space the store kept in reserve for this write
        store.finish_run(run_id, status, error)
    except Exception as exc:  # noqa: BLE001
        print(f"accumbench: could not record run {run_id} as {status} ({first_line(exc)}); it stays RUNNING "
              "until its heartbeat goes stale and another worker marks it KILLED", file=sys.stderr)


class Heartbeat:
    """A daemon thread that sets the run's heartbeat_at every `seconds` while it trains.

    A killed process (SIGKILL, OOM, a lost machine) stops beating, which is how a sweep tells its
    run from a live one. If the store says the run is no longer RUNNING, another worker has
    given it up for dead: `lost` is set and the training loop stops at its next step."""

    def __init__(self, store: Store, run_id: int, seconds: float) -> None:
        self.store, self.run_id, self.seconds = store, run_id, seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                alive = self.store.heartbeat(self.run_id)
            except Exception:  # e.g. the database busy for longer than busy_timeout: try again next beat
                continue
            if not alive:
                self.lost = True
                return

    def raise_if_lost(self) -> None:
        if self.lost:
            raise RunLost(self.run_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def describe_failure(exc: BaseException) -> str:
    """A failed run's error, in one line that says what happened: 'disk full while writing ...' for a
    full disk (or a file-size limit), else the exception's type and first line."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f" while writing {exc.filename}" if exc.filename else ""
        return f"disk full{where}: {exc.strerror}"
    return f"{type(exc).__name__}: {first_line(exc)}"


class sigterm_as_exception:
    """While training, turn SIGTERM into Terminated so the run is closed as KILLED, not left RUNNING."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
