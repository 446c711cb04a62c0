"""What every command of the CLI shares: Click's parse errors as one line, and RunConfig's fields as options.

Kept apart from app.py, which holds the commands themselves; nothing heavy is imported here either.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Annotated, Any, Optional

import typer

from accumbench.config import LIST_SEPARATORS, RunConfig, base_type
from accumbench.errors import UserError
from accumbench.trainer_names import trainer_hint

try:  # typer 0.2x vendors click as typer._click; earlier ones use click itself
    from typer._click.exceptions import ClickException, NoSuchOption
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoSuchOption
from typer.core import TyperGroup


def fail(message: str, code: int = 2) -> None:
    """One line naming the problem and the fix, on stderr, then exit code 2 (bad input) or `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


_DB_HELP = "SQLite file or SQLAlchemy URL (default: $ACCUMBENCH_DB or ./runs.db)"
# --db, as the commands that write runs (train, sweep) and those that only read them declare it.
WritableDb = Annotated[str | None, typer.Option("--db", help=f"{_DB_HELP}.")]
ReadOnlyDb = Annotated[str | None, typer.Option("--db", help=f"{_DB_HELP}; opened read-only.")]


@contextmanager
def user_errors(machine_failure: Callable[[OSError], str] | None = None) -> Iterator[None]:
    """A command's body: bad input (UserError) as one error line and exit 2. With `machine_failure`, an
    OSError (a full disk, a file that went away: the machine, not the input) as the line it gives, exit 1."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:
        if machine_failure is None:
            raise
        fail(machine_failure(exc), code=1)


class OneLineErrors(TyperGroup):
    """Click's own parse errors (`--lr abc`, an unknown option) as every other error here: one `error:`
    line naming the problem and where to look, exit code 2, instead of a usage banner and a boxed message.
    --help, the commands' own exit codes and Ctrl-C are left as they are."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "accumbench"
            message = " ".join(exc.format_message().split()).rstrip(".")  # one line, whatever click wrapped
            # --learning-rate, --num-train-epochs: the Trainer's names get accumbench's.
            if isinstance(exc, NoSuchOption) and (hint := trainer_hint(exc.option_name, flag=True)):
                message = f"No such option: {exc.option_name}; {hint}"
            typer.echo(f"error: {message}; see '{where} --help'", err=True)
            sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


_CONFIG_FIELDS = {f.name: f for f in fields(RunConfig)}
# Union[int, str] is --micro-batch-size (a number or auto): read as text, RunConfig converts it.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "Union[int, str]": str}
_BOOLEAN_FLAGS = {"drop_last": "--drop-last/--keep-last", "checkpoint": "--checkpoint/--no-checkpoint",
                  "group_by_length": "--group-by-length/--no-group-by-length", "compile": "--compile/--no-compile",
                  "noise_scale": "--noise-scale/--no-noise-scale"}


def _help(name: str) -> str:
    """Option help from the RunConfig field, with the default shown (flags default to None so
    that only the flags a user typed override the YAML file)."""
    f = _CONFIG_FIELDS[name]
    return f"{f.metadata['help']} (default: {f.default})"


def run_options(skip: tuple[str, ...] = (), own_first: bool = False,
                listed: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per RunConfig field (its help from the field), passed to the command
    as **options. train and sweep thus take the same options, and neither can drift from the config.
    The command's own options come after them in --help, or before with own_first. The fields in `listed`
    take comma-separated values (a sweep's axes), and say so."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        added = []
        for name, f in _CONFIG_FIELDS.items():
            if name in skip:
                continue
            base = _TYPES[base_type(f.type)]
            declarations = (_BOOLEAN_FLAGS[name],) if name in _BOOLEAN_FLAGS else ()
            separated = "Semicolon" if LIST_SEPARATORS[name] == ";" else "Comma"
            help_text = (f"{separated}-separated, a grid axis. " if name in listed else "") + _help(name)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[base],  # noqa: UP045 - built at run time for typer
                                           default=typer.Option(None, *declarations, help=help_text)))
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = inspect.Signature(own + added if own_first else added + own)  # type: ignore[attr-defined]
        return command

    return decorate
