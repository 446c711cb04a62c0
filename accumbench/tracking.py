"""Optional experiment trackers (--log-with wandb|tensorboard|mlflow), mirrored from the SQLite store.

The store stays the source of truth; a tracker only gets a copy of each run's config, step rows and
epoch rows. We instantiate Accelerate's tracker classes ourselves instead of going through an
Accelerator, so the plain PyTorch backend and the Accelerate backend log exactly the same way.

Only the standard library is imported at module level: the CLI validates --log-with (config.require_tracker)
before any training, and `accumbench --help` must stay instant. Accelerate, torch and the tracker
packages are imported when a RunTracker is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from accumbench.config import require_tracker
from accumbench.errors import UserError, first_line

PROJECT = "accumbench"  # wandb project and mlflow experiment


def _is_main_process() -> bool:
    """Rank 0, or no launcher: torchrun and accelerate launch both set RANK, for both backends alike."""
    return int(os.environ.get("RANK", "0")) == 0


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config values every tracker accepts: nested dicts flattened to dotted keys, scalars kept,
    None as "None" (TensorBoard's hparams silently drop None), anything else (lists, paths) as text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{name}."))
        elif value is None:
            flat[name] = "None"
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def _number(value: Any) -> float | int | None:
    """A plain int/float for the tracker, or None to skip. Accelerate's TensorBoard and MLflow trackers
    silently drop anything that is not an int or float (numpy float32, 0-d tensors), hence the conversion."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return float(value)  # NaN and inf pass through: a diverged run should show as one
    except (TypeError, ValueError):
        return None


def _ensure_accelerate_state() -> None:
    """Accelerate's trackers log through accelerate.logging, which raises unless PartialState exists.

    The Accelerate backend's Accelerator has already made it (PartialState is shared, so this is then a
    no-op); for the torch backend we make it here. In a single process that sets up no process group.
    Under torchrun it must come after the backend's init_process_group: PartialState would otherwise
    start the rendezvous itself, on rank 0 alone, and wait forever for the other ranks."""
    import torch.distributed as dist
    from accelerate.state import PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build the RunTracker after the backend, once the process group exists")
    PartialState()


class RunTracker:
    """One run's experiment tracker. On ranks other than 0 every method does nothing.

    Build it after the training backend (see _ensure_accelerate_state)."""

    def __init__(self, log_with: str, run_name: str, logging_dir: Path, config: dict[str, Any]) -> None:
        require_tracker(log_with)
        self.log_with, self.run_name, self.logging_dir = log_with, run_name, Path(logging_dir)
        self._tracker: Any = None
        self._finished = False
        if not _is_main_process():
            return
        _ensure_accelerate_state()
        tracker = self._make_tracker()
        try:
            # Since huggingface/accelerate#3581 a tracker's __init__ only stores its arguments and start()
            # opens the writer/run (Accelerator.init_trackers calls it); earlier 1.x trackers had no start().
            start = getattr(tracker, "start", None)
            if start is not None:
                start()
        except Exception as exc:  # e.g. wandb not logged in, an unreachable MLFLOW_TRACKING_URI
            raise UserError(f"--log-with {log_with}: the tracker did not start: {first_line(exc)}") from exc
        self._tracker = tracker
        try:
            tracker.store_init_configuration(_flat_config(config))
        except BaseException:
            self.finish()  # no __exit__ runs for a constructor that raised: close the writer/run here
            raise

    def _make_tracker(self) -> Any:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        if self.log_with == "tensorboard":
            return TensorBoardTracker(self.run_name, self.logging_dir)  # events in logging_dir/run_name
        self.logging_dir.mkdir(parents=True, exist_ok=True)
        if self.log_with == "wandb":
            # WandBTracker passes its first argument to wandb.init as the *project*; name= is the run name.
            # dir= keeps wandb's local files next to the other logs rather than in the working directory.
            return WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=self.run_name, dir=str(self.logging_dir))
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # A file store needs nothing beyond mlflow itself (mlflow-skinny included), unlike sqlite.
            mlflow.set_tracking_uri((self.logging_dir / "mlruns").resolve().as_uri())
        # logging_dir=None: the artifact location then follows the tracking store, local or remote.
        return MLflowTracker(experiment_name=PROJECT, logging_dir=None, run_name=self.run_name)

    def _log(self, values: dict[str, Any], step: int) -> None:
        values = {k: n for k, v in values.items() if (n := _number(v)) is not None}
        if self._tracker is not None and not self._finished and values:
            self._tracker.log(values, step=int(step))

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Step rows as stored by Store.add_steps, each at its optimizer step."""
        for row in rows:
            self._log({"train/loss": row.get("loss"), "train/lr": row.get("lr"),
                       "train/grad_norm": row.get("grad_norm"), "train/samples_seen": row.get("samples_seen"),
                       "train/noise_scale": row.get("noise_scale")},
                      step=row["step"])

    def log_epoch(self, row: dict[str, Any]) -> None:
        """An epoch row as stored by Store.add_epoch, at the run's optimizer step count so that it lines
        up with the step curves. Every numeric column goes, so new columns need no change here."""
        self._log({f"epoch/{k}": v for k, v in row.items()}, step=row["optimizer_steps"])

    def finish(self) -> None:
        """Flush and close the tracker; safe to call more than once."""
        if self._tracker is not None and not self._finished:
            self._finished = True
            self._tracker.finish()

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.finish()
