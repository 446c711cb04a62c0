"""What a run and a sweep show while they train, in a terminal (rich): the console side of the engine's
RunHooks (runtime/engine.py) and the sweep's SweepReporter (sweep/worker.py). They implement those hooks by
shape, without importing the runtime that calls them (layers: present sits below the engine)."""

from __future__ import annotations

import time
from typing import Any

from accumbench.ebs_schedule import ebs_label
from accumbench.formatting import format_lr, format_seconds, short_model
from accumbench.optim_scaling import RULE_OPTIONS
from accumbench.vocabulary import CUT, DONE, GAVE_UP, PASSED_OVER, PENDING, RUNNING_ELSEWHERE


def scales_optimizer(config: Any) -> bool:
    """Whether the run header needs a line for the optimizer: a setting scaled, or one off Adam's defaults."""
    return config.scales_beyond_lr or (config.adam_beta1, config.adam_beta2, config.adam_eps) != (0.9, 0.999, 1e-8)


def optimizer_text(config: Any) -> str:
    """'adamw β1 0.6561, β2 0.996006, ε 5e-09, wd 0.02 (sde from EBS 64: kappa 4)': what the optimizer uses."""
    settings = config.optimizer_settings
    text = f"{config.optimizer} β1 {settings.beta1:.6g}, β2 {settings.beta2:.6g}, ε {settings.eps:.3g}"
    if settings.weight_decay:
        text += f", wd {settings.weight_decay:.3g}"
    return text + f" ({config.rule_bundle} from EBS {config.base_batch_size}: kappa {config.kappa:g})"


class RichReporter:
    """A progress bar per epoch (loss, samples/s, ETA), then one persistent line per epoch."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._progress: Any | None = None
        self._epochs = 0

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str, world_size: int = 1,
                    epochs: int = 0, total_steps: int = 0, data_notes: str = "") -> None:
        self._epochs = epochs
        processes = f"{world_size} processes x " if world_size > 1 else ""
        lr = f"lr {format_lr(config.scaled_lr)}"
        if config.lr_scaling != "none":
            lr += f" ({config.lr_scaling} scaling of {format_lr(config.lr)} at EBS {config.base_batch_size})"
        length = f"{total_steps} steps over {epochs} epochs" if config.budget == "steps" else f"{epochs} epochs ({total_steps} steps)"
        self.console.print(
            f"run [bold]{run_id}[/]: {config.model} on {config.dataset} "
            f"(train/val/test {sizes['train']}/{sizes['validation']}/{sizes['test']})\n"
            f"EBS {config.effective_batch_size} = {processes}{config.accumulation_steps_for(world_size)} x "
            f"{config.micro_batch_size}, {lr}, {length}, {config.backend} backend on {device}"
            + (f"\n{optimizer_text(config)}" if scales_optimizer(config) else "")
            + (f"\ndata: {data_notes}" if data_notes else "")
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
            f"  {row['epoch_seconds']:.0f}s" + (f"  B_simple {row['noise_scale']:.3g}" if row.get("noise_scale") is not None else "")
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


class RichSweepReporter:
    """An overall line per cell (cells done / total, the cell, ETA from finished cells), the run's own
    progress bar under it, and a table of every cell at the end."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._total = 0

    def run_reporter(self) -> RichReporter:
        reporter = RichReporter()
        reporter.console = self.console
        return reporter

    def dry_run(self, spec: Any) -> None:
        from rich.table import Table

        cells = f"{len(spec.cells)} cell{'s' if len(spec.cells) != 1 else ''}"
        table = Table(title=f"sweep {spec.sweep_name}: {cells} (dry run, nothing trained)",
                      box=None, header_style="bold")
        self.console.print(spec.grid_shape())
        for column in ("#", "model", "EBS", "micro x k", "backend", "seed", "rules", "lr", "budget", "config hash"):
            table.add_column(column, justify="right" if column in ("#", "EBS", "seed", "lr") else "left")
        if spec.race:
            self.console.print(f"racing ({spec.race_rule.words(spec.race_metric)}) on {spec.race_metric}; cells in "
                               "claim order before anything is known (what is learnt reorders them and may skip some)")
        for index, cell in enumerate(spec.claim_order(), 1):
            budget = f"{cell.train_steps} steps" if cell.budget == "steps" else f"{cell.epochs} epochs"
            table.add_row(str(index), cell.model, ebs_label(cell.effective_batch_size, cell.ebs_schedule),
                          "auto" if cell.auto_micro_batch else f"{cell.micro_batch_size} x {cell.accumulation_steps}",
                          cell.backend, str(cell.seed),
                          cell.rule_bundle, format_lr(cell.scaled_lr), budget, cell.config_hash)
        self.console.print(table)

    def sweep_started(self, spec: Any, sweep: dict[str, Any], statuses: list[Any]) -> None:
        self._total = len(statuses)
        count = lambda state: sum(s.state == state for s in statuses)  # noqa: E731
        self.console.print(
            f"sweep [bold]{sweep['name']}[/]: {self._total} cells, {count(DONE)} finished, "
            + (f"{count(CUT)} pruned, " if count(CUT) else "")
            + (f"{count(PASSED_OVER)} skipped, " if count(PASSED_OVER) else "")
            + f"{count(RUNNING_ELSEWHERE)} running elsewhere, {count(PENDING)} to run"
            + (f"; racing ({spec.race_rule.words(spec.race_metric)})" if spec.race else "")
        )

    def reaped(self, run_ids: list[int]) -> None:
        runs = ", ".join(map(str, run_ids))
        self.console.print(f"[yellow]run {runs}: heartbeat stale, marked KILLED; the cell goes back to the queue[/]")

    def cell_started(self, spec: Any, status: Any, run_id: int, done: int, eta: float | None) -> None:
        attempt = f" · attempt {status.attempts + 1}" if status.attempts else ""
        left = f" · ETA {format_seconds(eta)}" if eta is not None else ""
        self.console.rule(f"[bold][{done}/{self._total} done][/] {spec.describe(status.config)}{attempt}{left}",
                          align="left")

    def cell_ended(self, run_id: int, outcome: str, detail: str) -> None:
        colour = {"FINISHED": "green", "FAILED": "red", "PRUNED": "cyan", "SKIPPED": "cyan"}.get(outcome, "yellow")
        self.console.print(f"run {run_id} [{colour}]{outcome}[/]: {detail}")

    def summary(self, spec: Any, result: Any, db_label: str) -> None:
        from rich.table import Table

        # The axes that vary, then the outcome: fits 80 columns for the usual 2-3 varying axes.
        axes = [name for name in ("model", "backend", "lr_scaling", "seed") if len(spec.axes[name]) > 1]
        if any(len(spec.axes[name]) > 1 for name in RULE_OPTIONS):
            axes = [*(name for name in axes if name != "lr_scaling"), "rules"]  # the bundle says the lr rule too
        table = Table(title=f"sweep {result.sweep['name']}", box=None, header_style="bold")
        for column in (*axes, "EBS", "lr", "state", "tries", "run", "best\nepoch", "val\nacc", "test\nacc", "optim\nsteps"):
            table.add_column(column.replace("lr_scaling", "lr rule"),
                             justify="left" if column in ("model", "backend", "lr_scaling", "rules", "state") else "right")
        for status in result.statuses:
            cell, run = status.config, status.run
            best = result.summaries.get(run["id"]) if run else None
            state = "[green]finished[/]" if status.state == DONE else status.state
            if status.state == CUT:
                behind = (f", {run['pruned_deficit'] * 100:.1f} behind (at least {run['pruned_bound'] * 100:.1f})"
                          if run.get("pruned_bound") is not None else "")
                state = f"[cyan]pruned[/] after epoch {run['pruned_epoch']}{behind}"
            elif status.state == PASSED_OVER:
                state = f"[cyan]skipped[/] (run {run['pruned_by']} decided it)"
            elif status.state not in (DONE, RUNNING_ELSEWHERE) and run and run["error"]:
                state = f"[red]{status.state}[/]: {run['error'][:32]}"
            values = {"model": short_model(cell.model), "backend": cell.backend,
                      "lr_scaling": cell.lr_scaling, "rules": cell.rule_bundle, "seed": str(cell.seed)}
            table.add_row(
                *(values[name] for name in axes), ebs_label(cell.effective_batch_size, cell.ebs_schedule), format_lr(cell.scaled_lr),
                state, str(status.attempts), str(run["id"]) if run else "-",
                str(best["epoch"]) if best else "-", f"{best['val_accuracy']:.3f}" if best else "-",
                f"{best['test_accuracy']:.3f}" if best else "-", str(best["optimizer_steps"]) if best else "-",
            )
        self.console.print(table)
        done, running = result.count(DONE), result.count(RUNNING_ELSEWHERE)
        line = f"{done}/{len(result.statuses)} cells finished ({result.ran} run by this worker)"
        if result.count(CUT):
            line += f"; {result.count(CUT)} pruned by racing"
        if result.count(PASSED_OVER):
            line += f"; {result.count(PASSED_OVER)} skipped by racing"
        if running:
            line += f"; {running} still running on other workers"
        if result.count(GAVE_UP):
            line += f"; {result.count(GAVE_UP)} gave up after {spec.max_retries + 1} tries"
        if result.stopped_early:
            line += "; stopped at the first failure (--fail-fast)"
        self.console.print(f"{line}\nrecorded in {db_label} as sweep '{result.sweep['name']}'")
