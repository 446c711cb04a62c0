"""`accumbench predict` and `accumbench export`: thin Typer commands over accumbench.runtime.inference.

app.py registers them (`app.command("predict")(predict)`, `app.command("export")(export)`), so this module
imports nothing of app.py, and nothing heavy: the library is imported when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accumbench.cli.command_line import ReadOnlyDb, user_errors
from accumbench.errors import first_line

_RUN_HELP = "A run id (train prints it): the run's best-validation checkpoint, from the store."


def _machine_failure(exc: OSError) -> str:
    """A failure of the machine, not of the input (a full disk, a file that went away): exit 1."""
    return f"{exc.strerror or first_line(exc)} ({exc.filename or 'no file named'}); nothing was written"


def predict(
    input_file: Annotated[Path, typer.Argument(
        metavar="INPUT", help="CSV, TSV, JSON (lines) or parquet file of texts, or of pairs for a pair model.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="CSV file to write: the input's columns, then label and prob_<label> per class.")],
    run: Annotated[int | None, typer.Option("--run", help=_RUN_HELP)] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="A directory written by accumbench export (needs no store).")] = None,
    text_column: Annotated[str | None, typer.Option(
        help="Text column of INPUT (default: the one trained on, else detected as train does).")] = None,
    text_pair_column: Annotated[str | None, typer.Option(
        help="Second text of a pair (default: the one trained on, else detected as train does).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 64,
    db: ReadOnlyDb = None,
) -> None:
    """Label every row of INPUT with a trained classifier, on a GPU when there is one: one row out per row in,
    in order, with the label and each class's probability. An input column named label (or prob_<label>)
    is kept as input_label. Rows without a text get no label.

    Example:

        accumbench predict --run 3 reviews.csv -o predictions.csv

    Example, from an export (no run store needed):

        accumbench predict --model exported/ pairs.csv -o predictions.csv
    """
    with user_errors(machine_failure=_machine_failure):
        from accumbench.runtime.inference import predict as label_rows

        result = label_rows(input_file, output, run=run, model=model, db=db, text_column=text_column,
                            text_pair_column=text_pair_column, batch_size=batch_size)
    unlabelled = result.rows - result.labelled
    notes = [f"{unlabelled} row{'s' * (unlabelled != 1)} without a text left unlabelled"] if unlabelled else []
    notes += [f"input column {old} written as {new}" for old, new in result.renamed.items()]
    typer.echo(f"wrote {result.output}: {result.rows} rows labelled by {result.origin} from "
               f"{' + '.join(result.columns)} on {result.device}" + "".join(f"; {note}" for note in notes))


def export(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A new (or empty) directory to write.")],
    run: Annotated[int, typer.Option("--run", help=_RUN_HELP)],
    db: ReadOnlyDb = None,
) -> None:
    """Write a run's checkpoint as a directory that predict --model loads without the run store: the encoder
    and tokenizer (save_pretrained, safetensors), the head (head.safetensors) and classifier.json (labels,
    head shape, pooling, max length, text columns). No pickle; loading it runs no remote code.

    Example:

        accumbench export --run 3 exported/
    """
    with user_errors(machine_failure=_machine_failure):
        from accumbench.runtime.inference import export as write_export

        result = write_export(run, directory, db=db)
    typer.echo(f"wrote {result.directory}: {result.origin}, labels {', '.join(result.label_names)}")
