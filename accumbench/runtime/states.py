"""--save-states: a run's model and optimizer state at chosen points of training, for accumbench branch.

    <checkpoint root>/<run id>/states/step-<N>.pt   torch.save of {"model", "optimizer"} state dicts

Each file is written aside and renamed (a reader never sees half of one), then recorded in the store's
states table with the point it was saved at: epochs trained, optimizer steps, samples and the EBS in force.
Saving reads the weights and changes no number of the training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from accumbench.ebs_schedule import EPOCH, parse_points
from accumbench.files import write_aside


@dataclass
class StateSaver:
    """Saves the run's state at --save-states' points: at epoch ends (0: before training) or after steps."""

    run_id: int | None
    store: Any  # Store or NullStore
    backend: Any  # backends.base.Backend
    directory: Path
    unit: str
    points: tuple[int, ...]

    @classmethod
    def for_run(cls, text: str | None, run_id: int | None, store: Any, backend: Any, root: Path) -> StateSaver | None:
        if text is None or not backend.is_main:
            return None
        unit, points = parse_points(text)
        return cls(run_id, store, backend, root / str(run_id) / "states", unit, points)

    def at_epoch_end(self, epochs_done: int, steps: int, samples: int, effective_batch_size: int) -> None:
        if self.unit == EPOCH and epochs_done in self.points:
            self.save(float(epochs_done), steps, samples, effective_batch_size)

    def after_step(self, step: int, samples: int, epochs_done: float, effective_batch_size: int) -> None:
        if self.unit != EPOCH and step in self.points:
            self.save(epochs_done, step, samples, effective_batch_size)

    def save(self, epochs_done: float, step: int, samples: int, effective_batch_size: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step-{step}.pt"
        state = {"model": self.backend.unwrapped_model().state_dict(), "optimizer": self.backend.optimizer.state_dict()}
        write_aside(path, lambda aside: torch.save(state, aside))
        self.store.add_state(self.run_id, epoch=epochs_done, step=step, samples_seen=samples,
                             effective_batch_size=effective_batch_size, path=str(path.absolute()))


def load_state(path: str) -> dict[str, Any]:
    """A saved state's model and optimizer state dicts, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)
