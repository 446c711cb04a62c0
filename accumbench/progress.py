"""What a run shows while it trains. The engine calls a Reporter; the CLI passes the rich one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from accumbench.config import format_lr


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
        lr = f"lr {format_lr(config.scaled_lr)}"
        if config.lr_scaling != "none":
            lr += f" ({config.lr_scaling} scaling of {format_lr(config.lr)} at EBS {config.base_batch_size})"
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


def short_model(model: str) -> str:
    """A local model directory by its last path component; aliases and hub ids as they are."""
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


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

        from accumbench.sweep import grid_shape

        cells = f"{len(spec.cells)} cell{'s' if len(spec.cells) != 1 else ''}"
        table = Table(title=f"sweep {spec.sweep_name}: {cells} (dry run, nothing trained)",
                      box=None, header_style="bold")
        self.console.print(grid_shape(spec))
        for column in ("#", "model", "EBS", "micro x k", "backend", "seed", "lr rule", "lr", "budget", "config hash"):
            table.add_column(column, justify="right" if column in ("#", "EBS", "seed", "lr") else "left")
        for index, cell in enumerate(spec.cells, 1):
            budget = f"{cell.train_steps} steps" if cell.budget == "steps" else f"{cell.epochs} epochs"
            table.add_row(str(index), cell.model, str(cell.effective_batch_size),
                          "auto" if cell.auto_micro_batch else f"{cell.micro_batch_size} x {cell.accumulation_steps}",
                          cell.backend, str(cell.seed),
                          cell.lr_scaling, format_lr(cell.scaled_lr), budget, cell.config_hash)
        self.console.print(table)

    def sweep_started(self, spec: Any, sweep: dict[str, Any], statuses: list[Any]) -> None:
        from accumbench.sweep import DONE, PENDING, RUNNING_ELSEWHERE

        self._total = len(statuses)
        count = lambda state: sum(s.state == state for s in statuses)  # noqa: E731
        self.console.print(
            f"sweep [bold]{sweep['name']}[/]: {self._total} cells, {count(DONE)} finished, "
            f"{count(RUNNING_ELSEWHERE)} running elsewhere, {count(PENDING)} to run"
        )

    def reaped(self, run_ids: list[int]) -> None:
        runs = ", ".join(map(str, run_ids))
        self.console.print(f"[yellow]run {runs}: heartbeat stale, marked KILLED; the cell goes back to the queue[/]")

    def cell_started(self, spec: Any, status: Any, run_id: int, done: int, eta: Optional[float]) -> None:
        from accumbench.sweep import describe

        attempt = f" · attempt {status.attempts + 1}" if status.attempts else ""
        left = f" · ETA {_duration(eta)}" if eta is not None else ""
        self.console.rule(f"[bold][{done}/{self._total} done][/] {describe(status.config, spec)}{attempt}{left}",
                          align="left")

    def cell_ended(self, run_id: int, outcome: str, detail: str) -> None:
        colour = {"FINISHED": "green", "FAILED": "red"}.get(outcome, "yellow")
        self.console.print(f"run {run_id} [{colour}]{outcome}[/]: {detail}")

    def summary(self, spec: Any, result: Any, db_label: str) -> None:
        from rich.table import Table

        from accumbench.sweep import DONE, GAVE_UP, RUNNING_ELSEWHERE

        # The axes that vary, then the outcome: fits 80 columns for the usual 2-3 varying axes.
        axes = [name for name in ("model", "backend", "lr_scaling", "seed") if len(spec.axes[name]) > 1]
        table = Table(title=f"sweep {result.sweep['name']}", box=None, header_style="bold")
        for column in (*axes, "EBS", "lr", "state", "tries", "run", "best\nepoch", "val\nacc", "test\nacc", "optim\nsteps"):
            table.add_column(column.replace("lr_scaling", "lr rule"),
                             justify="left" if column in ("model", "backend", "lr_scaling", "state") else "right")
        for status in result.statuses:
            cell, run = status.config, status.run
            best = result.summaries.get(run["id"]) if run else None
            state = "[green]finished[/]" if status.state == DONE else status.state
            if status.state not in (DONE, RUNNING_ELSEWHERE) and run and run["error"]:
                state = f"[red]{status.state}[/]: {run['error'][:32]}"
            values = {"model": short_model(cell.model), "backend": cell.backend,
                      "lr_scaling": cell.lr_scaling, "seed": str(cell.seed)}
            table.add_row(
                *(values[name] for name in axes), str(cell.effective_batch_size), format_lr(cell.scaled_lr),
                state, str(status.attempts), str(run["id"]) if run else "-",
                str(best["epoch"]) if best else "-", f"{best['val_accuracy']:.3f}" if best else "-",
                f"{best['test_accuracy']:.3f}" if best else "-", str(best["optimizer_steps"]) if best else "-",
            )
        self.console.print(table)
        done, running = result.count(DONE), result.count(RUNNING_ELSEWHERE)
        line = f"{done}/{len(result.statuses)} cells finished ({result.ran} run by this worker)"
        if running:
            line += f"; {running} still running on other workers"
        if result.count(GAVE_UP):
            line += f"; {result.count(GAVE_UP)} gave up after {spec.max_retries + 1} tries"
        if result.stopped_early:
            line += "; stopped at the first failure (--fail-fast)"
        self.console.print(f"{line}\nrecorded in {db_label} as sweep '{result.sweep['name']}'")


def print_picks(picks: list[Any]) -> None:
    """`accumbench pick-best` in the terminal: per model, the candidates with their p-values, the pick,
    its test accuracy with a 95% interval, and the justification in words."""
    from rich.console import Console
    from rich.table import Table

    from accumbench.report import format_seconds

    console = Console()
    for pick in picks:
        words = {"val_accuracy": "val acc", "val_loss": "val loss"}[pick.metric]
        if pick.best_lrs:
            _print_best_lrs(console, pick, words)
        which = "stage 2: each EBS at its best lr" if pick.protocol == "tuned" else "candidates"
        table = Table(title=f"{pick.group}: {which}, best {words} first", box=None, header_style="bold",
                      title_justify="left")
        # Short headings and no wrapping: the candidates of a tuned lr grid fit 80 columns, and no value is cut.
        for column in ("candidate", f"{words}\nmean ± std", "seeds", "train\ntime", "p vs best\n(val)", "not\nworse",
                       "test p\n(report)"):
            table.add_column(column, justify="left" if column == "candidate" else "right", no_wrap=True)
        for c in pick.candidates:
            spread = "" if c.metric_std != c.metric_std else f" ± {c.metric_std:.4f}"
            screen = "best" if c is pick.best else (
                f"{c.screen_p:.3g} {'Welch' if c.screen_test == 'welch' else 'McNemar'}" if c.screen_p is not None
                else "untested")
            mark = "[bold green]* [/]" if c is pick.chosen else "  "
            table.add_row(f"{mark}{c.label}", f"{c.metric_mean:.4f}{spread}", str(len(c.runs)),
                          format_seconds(c.train_seconds), screen, "yes" if c.not_worse else "no",
                          "-" if c.mcnemar_test_p is None else f"{c.mcnemar_test_p:.3g}")
        console.print(table)
        console.print("* the pick; p vs best: on validation (Welch across seeds, else exact McNemar); test p: exact "
                      "McNemar on test, reported only")
        low, high = pick.test_ci
        console.print(f"[bold]pick: {pick.chosen.label}[/] (chosen on validation, {pick.protocol} protocol; "
                      f"alpha {pick.alpha:g})\n"
                      f"test accuracy {pick.test_accuracy:.4f}, 95% CI [{low:.4f}, {high:.4f}] on {pick.test_examples} "
                      f"test examples x {len(pick.chosen.runs)} seed(s)\n{pick.justification}")
        for fit in pick.scaling:
            console.print(fit.text)
        if pick.noise is not None:
            console.print(pick.noise.text)
        for critical in pick.critical:
            console.print(critical.text)
        for warning in pick.warnings:
            console.print(f"[yellow]warning: {warning}[/]")
        console.print()


def _print_best_lrs(console: Any, pick: Any, words: str) -> None:
    """The tuned protocol's first stage: per EBS, the lrs tried and the best, on validation."""
    from rich.table import Table

    table = Table(title="stage 1: the best lr of each EBS, on validation", box=None, header_style="bold",
                  title_justify="left")
    for column in ("EBS", "best lr", f"{words}\nmean ± std", "seeds", "lrs tried", "lr*\nrefined"):
        table.add_column(column, justify="left" if column == "lrs tried" else "right", no_wrap=column != "lrs tried")
    for b in pick.best_lrs:
        spread = "" if b.best.std != b.best.std else f" ± {b.best.std:.4f}"
        refined = format_lr(b.refined_lr) if b.refined else ("edge" if b.edge else "-")
        table.add_row(b.label.removeprefix("EBS "), format_lr(b.best.lr), f"{b.best.mean:.4f}{spread}",
                      str(b.best.seeds), b.lrs_tried, refined)
    console.print(table)


def print_comparisons(comparisons: list[Any]) -> None:
    """`accumbench pick-best --compare-protocols`: per model, one row per protocol, then whether the EBS
    picked changes with it."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for comparison in comparisons:
        table = Table(title=f"{comparison.group}: the pick under each protocol (chosen on validation)", box=None,
                      header_style="bold", title_justify="left")
        words = {"val_accuracy": "val acc", "val_loss": "val loss"}[comparison.protocols[0].pick.metric] if (
            comparison.protocols) else "val acc"
        for column in ("protocol", "pick", "lr", f"{words}\nmean ± std", "seeds", "test acc"):
            table.add_column(column, justify="left" if column in ("protocol", "pick") else "right")
        for row in comparison.protocols:
            chosen = row.pick.chosen
            spread = "" if chosen.metric_std != chosen.metric_std else f" ± {chosen.metric_std:.4f}"
            table.add_row(row.name, chosen.label, format_lr(float(chosen.runs["lr"].iloc[0])),
                          f"{chosen.metric_mean:.4f}{spread}", str(len(chosen.runs)), f"{row.pick.test_accuracy:.4f}")
        if comparison.protocols:
            console.print(table)
            from accumbench.pick import PROTOCOL_MEANINGS

            kinds = [kind for kind in PROTOCOL_MEANINGS if any(row.kind == kind for row in comparison.protocols)]
            if kinds:
                console.print("; ".join(f"{kind}: {PROTOCOL_MEANINGS[kind]}" for kind in kinds))
        console.print(f"[bold]{comparison.text}[/]")
        console.print()
