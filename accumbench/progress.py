"""What a run shows while it trains. The engine calls a Reporter; the CLI passes the rich one."""

from __future__ import annotations

import time
from typing import Any, Optional


class Reporter:
    """Progress hooks called by the engine. The base class stays silent (library use, tests)."""

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str) -> None: ...
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

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str) -> None:
        self._epochs = config.epochs
        self.console.print(
            f"run [bold]{run_id}[/]: {config.model} on {config.dataset} "
            f"(train {sizes['train']}, val {sizes['validation']}, test {sizes['test']}), "
            f"EBS {config.effective_batch_size} = {config.accumulation_steps} x {config.micro_batch_size}, "
            f"lr {config.lr:g}, {config.backend} on {device}"
        )

    def epoch_started(self, epoch: int, num_samples: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{self._epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} samples/s"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=num_samples, loss=float("nan"), rate=0.0)
        self._started = time.perf_counter()

    def step(self, samples_done: int, loss: float) -> None:
        rate = samples_done / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, completed=samples_done, loss=loss, rate=rate)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
        self.console.print(
            f"epoch {row['epoch']}/{self._epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} | "
            f"{row['samples_per_second']:.1f} samples/s, {row['epoch_seconds']:.1f}s"
        )

    def summary(self, result: Any, db_label: str) -> None:
        """The one-screen end of `accumbench train`: every epoch, the best one, and where it is stored."""
        from rich import box
        from rich.table import Table

        # SIMPLE_HEAD and 3 decimals keep all ten columns readable in an 80-column terminal.
        table = Table(title=f"run {result.run_id}: FINISHED", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("epoch", "train loss", "train acc", "val loss", "val acc", "test loss", "test acc",
                       "steps", "samples/s", "seconds"):
            table.add_column(column, justify="right", no_wrap=True, min_width=5, max_width=9)
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
            f"* best validation epoch {result.best_epoch}: val acc {best['val_accuracy']:.4f}, "
            f"test acc {best['test_accuracy']:.4f}{saved}\nrun id {result.run_id} recorded in {db_label}"
        )
