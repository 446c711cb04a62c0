"""The `accumbench` command line: thin Typer commands over the library.

Nothing heavy is imported at module level (torch, transformers, datasets, pandas), so
`accumbench --help` answers instantly; each command imports what it needs when it runs.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer

from accumbench.config import RunConfig, build_config
from accumbench.errors import Terminated, UserError

app = typer.Typer(
    name="accumbench",
    help=(
        "Which effective batch size should you fine-tune your BERT-family classifier at? "
        "accumbench trains with exact gradient accumulation and records every epoch in SQLite.\n\n"
        "Example:\n\n"
        "    accumbench train --model minilm --dataset demo --effective-batch-size 64 --micro-batch-size 16"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Keeps `accumbench` a group of commands (train, ...), even while it has few."""


_CONFIG_FIELDS = {f.name: f for f in fields(RunConfig)}


def _help(name: str) -> str:
    """Option help from the RunConfig field, with the default shown (flags default to None so
    that only the flags a user typed override the YAML file)."""
    f = _CONFIG_FIELDS[name]
    return f"{f.metadata['help']} (default: {f.default})"


def fail(message: str) -> None:
    """One line naming the problem and the fix, on stderr, then exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    model: Optional[str] = typer.Option(None, help=_help("model")),
    dataset: Optional[str] = typer.Option(None, help=_help("dataset")),
    backend: Optional[str] = typer.Option(None, help=_help("backend")),
    effective_batch_size: Optional[int] = typer.Option(None, help=_help("effective_batch_size")),
    micro_batch_size: Optional[int] = typer.Option(None, help=_help("micro_batch_size")),
    epochs: Optional[int] = typer.Option(None, help=_help("epochs")),
    lr: Optional[float] = typer.Option(None, help=_help("lr")),
    lr_scaling: Optional[str] = typer.Option(None, help=_help("lr_scaling")),
    base_batch_size: Optional[int] = typer.Option(None, help=_help("base_batch_size")),
    budget: Optional[str] = typer.Option(None, help=_help("budget")),
    train_steps: Optional[int] = typer.Option(None, help=_help("train_steps")),
    optimizer: Optional[str] = typer.Option(None, help=_help("optimizer")),
    scheduler: Optional[str] = typer.Option(None, help=_help("scheduler")),
    warmup_ratio: Optional[float] = typer.Option(None, help=_help("warmup_ratio")),
    weight_decay: Optional[float] = typer.Option(None, help=_help("weight_decay")),
    grad_clip: Optional[float] = typer.Option(None, help=_help("grad_clip")),
    max_length: Optional[int] = typer.Option(None, help=_help("max_length")),
    dropout: Optional[float] = typer.Option(None, help=_help("dropout")),
    pooling: Optional[str] = typer.Option(None, help=_help("pooling")),
    precision: Optional[str] = typer.Option(None, help=_help("precision")),
    seed: Optional[int] = typer.Option(None, help=_help("seed")),
    data_seed: Optional[int] = typer.Option(None, help=_help("data_seed")),
    max_train_samples: Optional[int] = typer.Option(None, help=_help("max_train_samples")),
    max_eval_samples: Optional[int] = typer.Option(None, help=_help("max_eval_samples")),
    text_column: Optional[str] = typer.Option(None, help=_help("text_column")),
    label_column: Optional[str] = typer.Option(None, help=_help("label_column")),
    drop_last: Optional[bool] = typer.Option(None, "--drop-last/--keep-last", help=_help("drop_last")),
    checkpoint: Optional[bool] = typer.Option(None, "--checkpoint/--no-checkpoint", help=_help("checkpoint")),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of options (underscored names); flags override it."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite file or SQLAlchemy URL (default: $ACCUMBENCH_DB or ./runs.db)."),
) -> None:
    """Train one model at one effective batch size and record every epoch in the run store.

    Example:

        accumbench train --model minilm --dataset demo --effective-batch-size 64 --micro-batch-size 16 --epochs 2
    """
    options = {k: v for k, v in locals().items() if k in _CONFIG_FIELDS}
    try:
        run_config = build_config(config, **options)
        from accumbench.engine import train as run_training
        from accumbench.progress import RichReporter
        from accumbench.store import resolve_db_url, sqlite_path

        from accumbench.engine import RunDiverged

        reporter = RichReporter()
        result = run_training(run_config, db=db, reporter=reporter)
    except UserError as exc:
        fail(str(exc))
    except RunDiverged as exc:
        # Not bad input (exit 2): the run happened and is recorded, as FAILED.
        typer.echo(f"error: {exc}; recorded as FAILED. Lower --lr or use --lr-scaling sqrt", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted: the run is recorded as KILLED", err=True)
        raise typer.Exit(130)
    except Terminated:
        typer.echo("terminated: the run is recorded as KILLED", err=True)
        raise typer.Exit(143)
    if result.run_id is not None:  # None on the other processes of a multi-process run
        url = resolve_db_url(db)
        reporter.summary(result, db_label=str(sqlite_path(url) or url))


@app.command("check-ga")
def check_ga(
    model: str = typer.Option("minilm", help="Alias (bert, modernbert, minilm), hub id or local directory."),
    samples: int = typer.Option(50, help="Size of the one optimizer group to check."),
    micro_batch_size: int = typer.Option(16, help="Micro-batch size; a group of 50 in 16s leaves a ragged 2."),
    backend: str = typer.Option("both", help="torch, accelerate or both."),
    precision: str = typer.Option("no", help="no, bf16 or fp16 (fp16 needs a CUDA GPU)."),
    dataset: str = typer.Option("demo", help="Where the examples come from (as in train)."),
    max_length: int = typer.Option(128, help="Truncate token sequences to this length."),
) -> None:
    """Prove that gradient accumulation is exact on your model: one group's accumulated gradient
    against its full-batch gradient, per backend. Exit 0 when every backend passes, 1 otherwise.

    Example:

        accumbench check-ga --model minilm --samples 50 --micro-batch-size 16 --backend both
    """
    choices = {"torch": ("torch",), "accelerate": ("accelerate",), "both": ("torch", "accelerate")}
    try:
        if backend not in choices:
            raise UserError(f"unknown --backend '{backend}'; choose one of: torch, accelerate, both")
        from accumbench.check_ga import check_gradient_accumulation

        checks = check_gradient_accumulation(model, samples, micro_batch_size, choices[backend], precision,
                                             dataset, max_length)
    except UserError as exc:
        fail(str(exc))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one group of {samples} in micro-batches of {micro_batch_size}, precision {precision}",
                  box=None, header_style="bold")
    for column in ("gradient", "max |g-ref|", "relative", "|g|/|ref|", "tolerance", "result"):
        table.add_column(column, justify="right", no_wrap=True)
    for check in checks:
        verdict = "[green]PASS[/]" if check.tolerance and check.passed else "[red]FAIL[/]" if check.tolerance else "(contrast)"
        table.add_row(check.name, f"{check.max_abs_deviation:.2e}", f"{check.relative_deviation:.2e}",
                      f"{check.norm_ratio:.4f}", f"{check.tolerance:.0e}" if check.tolerance else "-", verdict)
    Console().print(table)
    if not all(check.passed for check in checks):
        raise typer.Exit(1)


def main(argv: Optional[list[str]] = None) -> Any:
    return app(args=argv if argv is not None else sys.argv[1:], prog_name="accumbench")
