"""What a run shows while it trains. The engine calls a Reporter; the CLI passes the rich one."""

from __future__ import annotations

import time
from typing import Any, Optional


class Reporter:
    """Progress hooks called by the engine. The base class stays silent (library use, tests)."""

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str, world_size: int = 1,
                    epochs: int = 0, total_steps: int = 0) -> None: ...
    def epoch_started(self, epoch: int, num_samples: int) -> None: ...
    def step(self, samples_done: int, loss: float) -> None: ...
    def epoch_finished(self, row: dict[str, Any]) -> None: ...


class RichReporter(Reporter):
    """A progress bar per epoch (loss, samples/s, ETA), then one persistent line per epoch."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._progress: Optional[Any] = None
        self._epochs = 0

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str, world_size: int = 1,
                    epochs: int = 0, total_steps: int = 0) -> None:
        self._epochs = epochs
        processes = f"{world_size} processes x " if world_size > 1 else ""
        lr = f"lr {config.scaled_lr:.3g}"
        if config.lr_scaling != "none":
            lr += f" ({config.lr_scaling} scaling of {config.lr:g} at EBS {config.base_batch_size})"
        length = f"{total_steps} steps over {epochs} epochs" if config.budget == "steps" else f"{epochs} epochs ({total_steps} steps)"
        self.console.print(
            f"run [bold]{run_id}[/]: {config.model} on {config.dataset} "
            f"(train/val/test {sizes['train']}/{sizes['validation']}/{sizes['test']})\n"
            f"EBS {config.effective_batch_size} = {processes}{config.accumulation_steps_for(world_size)} x "
            f"{config.micro_batch_size}, {lr}, {length}, {config.backend} backend on {device}"
        )

    def epoch_started(self, epoch: int, num_samples: int) -> None:
        self._started = time.perf_counter()
        if not self.console.is_terminal:  # logs and pipes get the per-epoch lines only
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{self._epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} samples/s"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=num_samples, loss=float("nan"), rate=0.0)

    def step(self, samples_done: int, loss: float) -> None:
        if self._progress is None:
            return
        rate = samples_done / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, completed=samples_done, loss=loss, rate=rate)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(
            f"epoch {row['epoch']}/{self._epochs}  loss/acc: train {row['train_loss']:.3f}/{row['train_accuracy']:.3f}"
            f"  val {row['val_loss']:.3f}/{row['val_accuracy']:.3f}  {row['samples_per_second']:.1f} samples/s"
            f"  {row['epoch_seconds']:.0f}s"
        )

    def summary(self, result: Any, db_label: str) -> None:
        """The one-screen end of `accumbench train`: every epoch, the best one, and where it is stored."""
        from rich.table import Table

        # Two-line headers, no box and 3 decimals keep all ten columns in an 80-column terminal.
        table = Table(title=f"run {result.run_id}: FINISHED", box=None, header_style="bold")
        for column in ("epoch", "train\nloss", "train\nacc", "val\nloss", "val\nacc", "test\nloss", "test\nacc",
                       "optim\nsteps", "samples\nper sec", "epoch\nsec"):
            table.add_column(column, justify="right")
        for row in result.epochs:
            mark = " *" if row["epoch"] == result.best_epoch else ""
            table.add_row(
                f"{row['epoch']}{mark}", f"{row['train_loss']:.3f}", f"{row['train_accuracy']:.3f}",
                f"{row['val_loss']:.3f}", f"{row['val_accuracy']:.3f}", f"{row['test_loss']:.3f}",
                f"{row['test_accuracy']:.3f}", str(row["optimizer_steps"]), f"{row['samples_per_second']:.1f}",
                f"{row['epoch_seconds']:.1f}",
            )
        self.console.print(table)
        best = result.epochs[result.best_epoch - 1]
        saved = f"; checkpoint {result.checkpoint_path}" if result.checkpoint_path else ""
        self.console.print(
            f"* best validation epoch {result.best_epoch}: val acc {best['val_accuracy']:.3f}, "
            f"test acc {best['test_accuracy']:.3f}{saved}\nrun id {result.run_id} recorded in {db_label}"
        )
