"""`accumbench branch`: a thin Typer command over accumbench.runtime.branch (app.py registers it, as it does
predict and export). Nothing heavy is imported until the command runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from accumbench.cli.command_line import WritableDb, user_errors


def _numbers(text: str, kind: type, flag: str) -> tuple[Any, ...]:
    from accumbench.errors import UserError

    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{flag} {text}: give comma-separated {kind.__name__}s, e.g. {flag} 16,64,256") from None


def branch(
    run: Annotated[int, typer.Option("--run", help="A run trained with --save-states (train prints its id).")],
    at: Annotated[str | None, typer.Option(
        help="The saved states to branch from: epochs (1,2,3) or steps (step20,step40); default: every one.")] = None,
    ebs: Annotated[str, typer.Option(help="The branches' effective batch sizes, multiples of the run's micro-batch.")
                   ] = "16,32,64,128,256",
    samples: Annotated[int, typer.Option(
        help="Samples every branch trains (the same at each EBS; a multiple of every EBS).")] = 256,
    seeds: Annotated[str, typer.Option(help="Branch seeds (each its own sample order and dropout); averaged.")] = "1,2",
    lr: Annotated[float | None, typer.Option(
        help="One lr at every EBS (e.g. each EBS's tuned one is not one value: leave it out to follow the run's "
             "--lr-scaling rule at each EBS).")] = None,
    tolerance: Annotated[float, typer.Option(
        help="The critical batch size is the largest EBS whose loss stays within (1 + tolerance) of the smallest "
             "EBS's, in (0, 1).")] = 0.01,
    db: WritableDb = None,
) -> None:
    """Measure the critical batch size along training (Merrill et al. 2025): from each saved state of --run,
    train short branches of the same number of samples at several EBS, and record the validation loss each
    reaches. The critical batch size there is the largest EBS that keeps within the tolerance of the smallest
    EBS's loss. report and the study page draw the curve beside B_simple.

    Example:

        accumbench train --model minilm --dataset demo --effective-batch-size 16 --save-states 0,1,2,3

        accumbench branch --run 1 --ebs 16,32,64,128 --samples 256 --seeds 1,2
    """
    with user_errors():
        from accumbench.analysis.critical_batch import check_tolerance
        from accumbench.runtime.branch import BranchPlan

        check_tolerance(tolerance)
        plan = BranchPlan(run, at, _numbers(ebs, int, "--ebs"), samples, _numbers(seeds, int, "--seeds"), lr, tolerance)
        from accumbench.present.critical import print_branch_row, print_curve
        from accumbench.runtime.branch import branch as run_branches

        curve = run_branches(plan, db, report=print_branch_row)
    print_curve(curve)
