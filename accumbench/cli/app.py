"""The `accumbench` command line: thin Typer commands over the library.

Nothing heavy is imported at module level (torch, transformers, datasets, pandas), so
`accumbench --help` answers instantly; each command imports what it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from accumbench import metrics
from accumbench.cli.branching import branch
from accumbench.cli.command_line import OneLineErrors, ReadOnlyDb, WritableDb, fail, run_options, user_errors
from accumbench.cli.inference import export, predict
from accumbench.config import BACKENDS, REFERENCE_BACKEND
from accumbench.config_files import build_config
from accumbench.errors import StoreUnavailable, Terminated, UserError
from accumbench.formatting import unknown_choice
from accumbench.model_names import check_model_name
from accumbench.sweep.spec import SAME_NAMED_AXES
from accumbench.vocabulary import RACE_AFTER, RACE_ALPHA, RACE_GUARD, RACE_GUARDS

app = typer.Typer(
    cls=OneLineErrors,
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


@contextmanager
def _stops_as_exit_codes(what: str) -> Iterator[None]:
    """Ctrl-C and SIGTERM, after the engine has recorded the run as KILLED: say so, exit 130 / 143. A run
    database that cannot be written (a full disk, a server gone for good): one error line, exit 1, not
    bad input; the same command resumes."""
    try:
        yield
    except StoreUnavailable as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {what}", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo(f"terminated: {what}", err=True)
        raise typer.Exit(143) from None


def _db_label(db: str | None) -> str:
    """Where the runs went, as the user would name it: the SQLite file, or the URL without its password."""
    from accumbench.store import display_url, resolve_db_url

    return display_url(resolve_db_url(db))


_CONFIG_OPTION = typer.Option(None, "--config", help="YAML file of options (underscored names); flags override it.")


@app.command()
@run_options()
def train(config: Path | None = _CONFIG_OPTION, db: WritableDb = None, **options: Any) -> None:
    """Train one model at one effective batch size and record every epoch in the run store.

    Example:

        accumbench train --model minilm --dataset demo --effective-batch-size 64 --micro-batch-size 16 --epochs 2

    Example, sentence pairs (GLUE MRPC from the hub; its hidden test labels make validation the test set):

        accumbench train --dataset nyu-mll/glue --dataset-config mrpc --effective-batch-size 32 --micro-batch-size 16

    Example, pairs from your own file, F1 of the label 'duplicate':

        accumbench train --dataset pairs.csv --text-column question1 --text-pair-column question2 --positive-label duplicate

    Example, every batch-size-dependent Adam setting scaled from EBS 64 (the SDE rule: sqrt lr, β^kappa, ε/sqrt(kappa)):

        accumbench train --effective-batch-size 256 --micro-batch-size 16 --base-batch-size 64 --scaling-rule sde
    """
    with _stops_as_exit_codes("the run is recorded as KILLED"), user_errors():
        run_config = build_config(config, **options)
        check_model_name(run_config.model)  # a typo, or a hub id out of reach: in a second, before torch
        from accumbench.present.progress import RichReporter
        from accumbench.runtime.engine import train as run_training
        from accumbench.runtime.lifecycle import RunDiverged, describe_failure

        reporter = RichReporter()
        try:
            result = run_training(run_config, db=db, reporter=reporter)
        except RunDiverged as exc:
            # Not bad input (exit 2): the run happened and is recorded, as FAILED.
            fail(f"{exc}; recorded as FAILED. Lower --lr or use --lr-scaling sqrt", code=1)
        except OSError as exc:  # the machine, not the input: a full disk, a file that went away
            fail(f"the run failed: {describe_failure(exc)}; it is recorded as FAILED", code=1)
    if result.run_id is not None:  # None on the other processes of a multi-process run
        reporter.summary(result, db_label=_db_label(db))


@app.command()
@run_options(skip=("model", "effective_batch_size", "backend", "seed"), own_first=True,
             listed=SAME_NAMED_AXES)
def sweep(
    models: str | None = typer.Option(None, "--models", "--model", help="Comma-separated models (default: minilm)."),
    effective_batch_sizes: str | None = typer.Option(
        None, "--effective-batch-sizes", "--effective-batch-size", help="Comma-separated EBS values (default: 64)."),
    backends: str | None = typer.Option(None, "--backends", "--backend", help=f"Comma-separated: {', '.join(BACKENDS)} (default: {REFERENCE_BACKEND})."),
    seeds: str | None = typer.Option(None, "--seeds", "--seed", help="Comma-separated seeds (default: 42)."),
    lrs: str | None = typer.Option(
        None, "--lrs", help="Comma-separated learning rates, an axis like the others (base rates with --lr-scaling); "
                            "pick-best then compares every EBS at its own best lr. Not with --lr."),
    preset: str | None = typer.Option(
        None, help="demo (offline, ~3 min on CPU), seed-study (the original study) or tuned-study (the original study "
                   "at lrs 1e-5..3e-4, each EBS tuned); the last two need a GPU and the hub."),
    name: str | None = typer.Option(None, help="Label of the sweep (default: the preset or 'sweep', plus a hash of the grid)."),
    max_retries: int | None = typer.Option(None, help="Retries of a failed or crashed cell (default: 1)."),
    stale_after: float | None = typer.Option(
        None, help="Seconds without a heartbeat after which another worker's RUNNING run counts as dead (default: 600)."),
    fail_fast: bool | None = typer.Option(None, "--fail-fast/--keep-going", help="Stop at the first failed run (default: keep going)."),
    race: bool | None = typer.Option(
        None, "--race/--no-race", help="Race the lr grid: stop an lr once it is shown worse than its EBS's best by "
                                       "more than the margin (it ends PRUNED), skip what that decides (SKIPPED)."),
    race_alpha: float | None = typer.Option(None, help=f"An lr stops when its deficit's lower bound at 1 - alpha "
                                                      f"is above the margin (default: {RACE_ALPHA:g})."),
    race_margin: float | None = typer.Option(None, help="The deficit racing must show (default: the metric's margin)."),
    race_after: int | None = typer.Option(None, help=f"The first epoch after which racing may stop a run (default: {RACE_AFTER})."),
    race_guard: str | None = typer.Option(None, help=f"{' or '.join(RACE_GUARDS)}: closing spares an lr closing the gap "
                                                     f"fast enough to end within the margin (default: {RACE_GUARD})."),
    race_metric: str | None = typer.Option(
        None, help=f"The validation metric racing compares: {metrics.race_help()} "
                   f"(default: {metrics.ACCURACY.name})."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and exit; touches no database."),
    workers: int = typer.Option(
        1, "--workers", help="Start this many workers on this machine against one --db: one per visible GPU "
                             "(CUDA_VISIBLE_DEVICES), or the CPU cores split between them (OMP_NUM_THREADS)."),
    config: Path | None = typer.Option(None, "--config", help="YAML sweep file: grid axes as lists, then any option; flags override it."),
    db: WritableDb = None,
    **options: Any,
) -> None:
    """Train every cell of a grid (models x EBS x backends x seeds x lrs x lr rules) once, resumably.

    Finished cells are skipped; failed or crashed ones are retried. Start the same command in several
    terminals, on several GPUs or machines against one --db (or --workers N on one machine), and each
    cell still runs once.

    Example:

        accumbench sweep --models minilm --effective-batch-sizes 16,32,64 --micro-batch-size 16 --epochs 2 --max-train-samples 480

    Example, every EBS at three learning rates (9 cells; pick-best then tunes the lr per EBS):

        accumbench sweep --effective-batch-sizes 16,32,64 --lrs 3e-5,1e-4,3e-4 --micro-batch-size 16 --epochs 2 --dry-run

    Example, racing the lr grid (an lr shown worse than its EBS's best by more than a point stops early, PRUNED):

        accumbench sweep --effective-batch-sizes 16,64 --lrs 3e-5,1e-4,3e-4,1e-3 --seeds 42,43 --epochs 5 --race

    Example, the β, ε and weight-decay rules as axes (does the answer change when β2 is scaled too?):

        accumbench sweep --effective-batch-sizes 16,64,256 --base-batch-size 16 --lrs 1e-4,3e-4 --scaling-rule none,sde --dry-run

    Example, sentence pairs offline (demo-pairs: a generated 3-class entailment set):

        accumbench sweep --dataset demo-pairs --effective-batch-sizes 16,32 --micro-batch-size 16 --epochs 2 --name pairs
    """
    with _stops_as_exit_codes("the current run is recorded as KILLED; run the same command to resume"), user_errors():
        from accumbench.present.progress import RichSweepReporter
        from accumbench.sweep.local import check_worker_count, run_workers
        from accumbench.sweep.spec import build_spec

        check_worker_count(workers)
        spec = build_spec(config, models=models, effective_batch_sizes=effective_batch_sizes, backends=backends,
                          seeds=seeds, lrs=lrs, preset=preset, name=name, max_retries=max_retries,
                          stale_after=stale_after, fail_fast=fail_fast, race=race, race_alpha=race_alpha,
                          race_after=race_after, race_metric=race_metric, race_margin=race_margin,
                          race_guard=race_guard, **options)
        for model in spec.axes["model"]:  # typos now; the hub, if a model needs it, before the first claim
            check_model_name(model, reach_hub=False)
        reporter = RichSweepReporter()
        if dry_run:
            reporter.dry_run(spec)
            return
        if workers > 1:
            raise typer.Exit(run_workers(spec, db, workers, typer.echo))
        from accumbench.sweep.worker import run_sweep

        result = run_sweep(spec, db=db, reporter=reporter)
    reporter.summary(spec, result, db_label=_db_label(db))
    if not result.ok:
        raise typer.Exit(1)


_METRIC_OPTION = typer.Option(
    metrics.ACCURACY.name, help=f"Selection metric, on validation only: {metrics.choices_help()}. Each run's best "
                                "epoch is chosen on it.")
_MARGIN_OPTION = typer.Option(None, "--margin", help="How close to the best an EBS must be shown to be: "
                              f"{metrics.margin_help()}.")
_FILTERS = dict(
    sweep=typer.Option(None, help="Only the runs of this sweep (its name)."),
    model=typer.Option(None, help="Only this model (as recorded, e.g. minilm)."),
    backend=typer.Option(None, help="Only this backend: torch or accelerate."),
)


@app.command()
def report(
    sweep: str | None = _FILTERS["sweep"],
    model: str | None = _FILTERS["model"],
    backend: str | None = _FILTERS["backend"],
    status: str = typer.Option("FINISHED", help="Runs with this status (RUNNING, FINISHED, FAILED, KILLED) or 'any'."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv, json or html (the study page)."),
    columns: str | None = typer.Option(
        None, "--columns", help="Comma-separated columns of the table (table, markdown, html), e.g. model,ebs,val_acc; "
                                "see the README for every name."),
    wide: bool = typer.Option(False, "--wide", help="Every column (a table wider than the terminal is split in blocks)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the report to this file instead of the terminal."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write PNG figures per model into this directory."),
    metric: str = _METRIC_OPTION,
    margin: float | None = _MARGIN_OPTION,
    curves: str = typer.Option(
        "best", "--curves", help="Learning curves (html, --plot): best (each EBS at its best lr in colour, other lrs "
                                 "faded) or all (every series in its own colour)."),
    watch: float | None = typer.Option(
        None, "--watch", help="With --format html -o FILE: rewrite the page every SECONDS while sweeps run (the page "
                              "reloads itself); Ctrl-C stops.", metavar="SECONDS"),
    db: ReadOnlyDb = None,
) -> None:
    """The study's table: per model x EBS x backend (x lr, lr rule, budget where they vary), train, validation
    and test accuracy (mean ± std over seeds, at each run's best epoch on --metric; its F1 or MCC lead the
    table when chosen), training time and
    optimizer steps; an lr x EBS table where EBS were trained at several lrs, and the backend comparison.
    --format html writes one self-contained study page: the pick, the table, the curves and the evidence.
    Opens the database read-only.

    Example:

        accumbench report --sweep demo-3bf97179 --format markdown -o report.md --plot figures/

    Example, the study page, rewritten every 30 s while a sweep runs:

        accumbench report --format html -o study.html --watch 30

    Example, a pair task read by F1 (each run at its best epoch on F1, the table led by it):

        accumbench report --sweep pairs --metric val_f1
    """
    from accumbench.present.report import ReportRequest, produce, watch_page

    with user_errors():
        request = ReportRequest(db=db, sweep=sweep, model=model, backend=backend, status=status, fmt=fmt,
                                columns=columns, wide=wide, output=output, plot=plot, watch=watch, curves=curves,
                                metric=metric, margin=margin)
        if watch is not None:
            watch_page(request, typer.echo)
            return
        text, figures = produce(request, to_terminal=output is None)
    typer.echo(text if output is None else f"wrote {output} ({fmt})", nl=output is not None)
    for figure in figures:
        typer.echo(f"wrote {figure}")


@app.command("pick-best")
def pick_best(
    sweep: str | None = _FILTERS["sweep"],
    model: str | None = _FILTERS["model"],
    backend: str | None = _FILTERS["backend"],
    metric: str = _METRIC_OPTION,
    by: str = typer.Option("model", help="model (one pick per model) or none (one pick over all runs)."),
    margin: float | None = _MARGIN_OPTION,
    alpha: float = typer.Option(0.05, help="The bounds' one-sided error: 0.05 gives 95% bounds on each deficit."),
    target: float | None = typer.Option(
        None, help="Validation accuracy that steps-to-target counts to, for the critical batch size (default: 99% of the best seen)."),
    protocol: str | None = typer.Option(
        None, help="tuned (each EBS at its best lr on validation, then EBS against EBS) or pooled (every cell "
                   "competes as it is). Default: tuned where some EBS has 2+ lrs, else pooled."),
    compare_protocols: bool = typer.Option(
        False, "--compare-protocols", help="Print the pick under every protocol the runs support: each single lr, "
                                           "each lr scaling rule, pooled and tuned."),
    replay_race: bool = typer.Option(
        False, "--replay-race", help="Replay sweep --race over a complete lr grid from its stored epochs: the "
                                     "training time it would save, whether the pick changes, and its wrong prunes."),
    race_alpha: float = typer.Option(RACE_ALPHA, help="With --replay-race: racing's confidence, 1 - alpha."),
    race_margin: float | None = typer.Option(None, help="With --replay-race: the deficit racing must show."),
    race_after: int = typer.Option(RACE_AFTER, help="With --replay-race: the first epoch after which a run may stop."),
    race_guard: str = typer.Option(RACE_GUARD, help=f"With --replay-race: {' or '.join(RACE_GUARDS)}."),
    save_config: Path | None = typer.Option(
        None, "--save-config", help="Write the picked cell (its best seed) as a train YAML: train --config FILE "
                                    "trains it again, with epochs = its best epoch at a constant lr."),
    as_json: bool = typer.Option(False, "--json", help="Print the picks, candidates and their bounds as JSON."),
    db: ReadOnlyDb = None,
) -> None:
    """Pick the effective batch size per model on validation only, test it, and say how sure it is:
    with an lr grid each EBS first gets its own best lr (the tuned protocol); then the candidates shown
    within --margin of the best (a 95% upper bound on their deficit, from the seeds' spread and a paired
    bootstrap over the validation examples, below the margin) compete on cost: what they trained (samples,
    then optimizer steps), so the same store gives the same pick on every machine.
    Reports the pick's test accuracy with a 95% interval, the best lr per EBS and the lr scaling exponent
    it implies, and what the gradient noise scale and the critical batch size recommend.

    Example:

        accumbench pick-best --sweep demo-3bf97179 --metric val_accuracy --margin 0.02 --alpha 0.05

    Example, the same runs under every protocol (does the lr choice change the EBS answer?):

        accumbench pick-best --compare-protocols --json

    Example, a GLUE task judged by F1 (its bounds recompute F1 from the stored predictions):

        accumbench pick-best --metric val_f1

    Example, what racing (sweep --race) would have saved on a grid trained in full, and what it would have cost:

        accumbench pick-best --sweep race-sst2 --replay-race --race-alpha 0.05 --race-guard none

    Example, save the pick and train it again (then use it: predict, export):

        accumbench pick-best --save-config best.yaml && accumbench train --config best.yaml
    """
    import json

    from accumbench.analysis import shapes
    from accumbench.analysis.choice import choose
    from accumbench.analysis.pick import PickOptions
    from accumbench.analysis.runs import load_runs
    from accumbench.present.verdicts import print_answer, save_pick
    from accumbench.store import open_for_reading

    with user_errors():
        options = PickOptions(metric=metric, by=by, alpha=alpha, margin=margin, target=target, protocol=protocol,
                              compare_protocols=compare_protocols, replay_race=replay_race, race_alpha=race_alpha,
                              race_after=race_after, race_margin=race_margin, race_guard=race_guard,
                              save_config=save_config)
        with open_for_reading(db) as store:
            data = load_runs(store, sweep=sweep, model=model, backend=backend, metric=options.metric)
            answer = choose(store, data, options)
        if save_config is not None:
            typer.echo(save_pick(answer, save_config), err=True)
    if as_json:
        typer.echo(json.dumps(shapes.answer_json(answer), indent=2))
    else:
        print_answer(answer)


@app.command("check-ga")
def check_ga(
    model: str = typer.Option("minilm", help="Alias (bert, modernbert, minilm), hub id or local directory."),
    samples: int = typer.Option(50, help="Size of the one optimizer group to check."),
    micro_batch_size: int = typer.Option(16, help="Micro-batch size; a group of 50 in 16s leaves a ragged 2."),
    backend: str = typer.Option("both", help=f"{', '.join(BACKENDS)} or both."),
    precision: str = typer.Option("no", help="no, bf16 or fp16 (fp16 needs a CUDA GPU)."),
    dataset: str = typer.Option("demo", help="Where the examples come from (as in train)."),
    max_length: int = typer.Option(128, help="Truncate token sequences to this length."),
) -> None:
    """Prove that gradient accumulation is exact on your model: one group's accumulated gradient
    against its full-batch gradient, per backend. Exit 0 when every backend passes, 1 otherwise.

    Example:

        accumbench check-ga --model minilm --samples 50 --micro-batch-size 16 --backend both
    """
    choices = {**{name: (name,) for name in BACKENDS}, "both": tuple(BACKENDS)}
    with user_errors():
        if backend not in choices:
            raise UserError(unknown_choice("--backend", backend, choices))
        check_model_name(model)
        from accumbench.runtime.check_ga import check_gradient_accumulation

        checks = check_gradient_accumulation(model, samples, micro_batch_size, choices[backend], precision,
                                             dataset, max_length)
    from accumbench.present.verdicts import print_gradient_checks

    print_gradient_checks(checks, samples, micro_batch_size, precision)
    if not all(check.passed for check in checks):
        raise typer.Exit(1)


# Acting on the answer (predict, export); which EBS, and when (branch: the critical batch size along training).
for command in (predict, export, branch):
    app.command(command.__name__)(command)


def main(argv: list[str] | None = None) -> Any:
    return app(args=argv if argv is not None else sys.argv[1:], prog_name="accumbench")
