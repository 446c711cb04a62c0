"""What pick-best and check-ga print in a terminal: the answers, with the evidence under them (rich)."""

from __future__ import annotations

from typing import Any

from accumbench.analysis import answer
from accumbench.deficit import amount
from accumbench.formatting import format_lr, format_seconds, spread
from accumbench.metrics import named
from accumbench.vocabulary import METRIC_HEADINGS


def print_answer(answer: list[Any]) -> None:
    """pick-best in the terminal, whichever answer analysis.choice.choose gave: picks, protocol comparisons
    (they have .protocols) or race replays (.prunes)."""
    if answer and hasattr(answer[0], "prunes"):
        from rich.console import Console

        for replay in answer:
            Console().print(replay.text)
    elif answer and hasattr(answer[0], "protocols"):
        print_comparisons(answer)
    else:
        print_picks(answer)


def print_picks(picks: list[Any]) -> None:
    """`accumbench pick-best` in the terminal: per model, the candidates with their deficits to the best and the
    bounds, the pick, its test accuracy with a 95% interval, and the justification in words."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for pick in picks:
        console.print(f"[bold]{pick.group}: pick {answer.sentence(pick)}[/]")  # the answer first, then its evidence
        words = METRIC_HEADINGS[pick.metric]
        if pick.best_lrs:
            _print_best_lrs(console, pick, words)
        which = "stage 2: each EBS at its best lr" if pick.best_lrs else "candidates"
        table = Table(title=f"{pick.group}: {which}, best {words} first", box=None, header_style="bold",
                      title_justify="left")
        # Short headings and no wrapping: the candidates of a tuned lr grid fit 80 columns, and no value is cut.
        confidence = f"{pick.evidence.confidence:.0%}"
        for column in ("candidate", f"{words}\nmean ± std", "seeds", "train\ntime", "deficit", f"{confidence}\nbound",
                       "within\nmargin", "test p\n(report)"):
            table.add_column(column, justify="left" if column == "candidate" else "right", no_wrap=True)
        for c in pick.candidates:
            bound = c.deficit
            mark = "[bold green]* [/]" if c is pick.chosen else "  "
            table.add_row(f"{mark}{c.label}", f"{c.metric_mean:.4f}{spread(c.metric_std, 4)}", str(len(c.runs)),
                          format_seconds(c.train_seconds), "best" if bound is None else amount(bound.deficit, pick.metric),
                          "-" if bound is None else amount(bound.upper, pick.metric), "yes" if c.as_good else "no",
                          "-" if c.mcnemar_test_p is None else f"{c.mcnemar_test_p:.3g}")
        console.print(table)
        unit = named(pick.metric).unit
        console.print(f"* the pick; deficit to the best on validation in {unit}, with its one-sided {confidence} bound "
                      f"(seeds and validation examples); within margin: the bound is below "
                      f"{pick.evidence.words(pick.metric)}; test p: exact McNemar on test, reported only")
        for line in answer.bound_lines(pick):
            console.print(f"  {line}")
        low, high = pick.test_ci
        also = "" if pick.test_score is None else f"; test {METRIC_HEADINGS[pick.metric].removeprefix('val ')} {pick.test_score:.4f}"
        console.print(f"[bold]pick: {pick.chosen.label}[/] (chosen on validation, {pick.protocol} protocol; margin "
                      f"{pick.evidence.words(pick.metric)} at {confidence})\n"
                      f"test accuracy {pick.test_accuracy:.4f}, 95% CI [{low:.4f}, {high:.4f}] on {pick.test_examples} "
                      f"test examples x {len(pick.chosen.runs)} seed(s){also}\n{pick.justification}")
        for fit in pick.scaling:
            console.print(fit.text)
        if pick.noise is not None:
            console.print(pick.noise.text)
        for critical in pick.critical:
            console.print(critical.text)
        if pick.pruned:  # racing's decisions: their lrs counted as tried and worse above
            def stop(p: dict) -> str:
                where = f"EBS {p['effective_batch_size']} lr {format_lr(p['lr'])} seed {p['seed']}"
                if p["skipped"]:
                    return f"{where} skipped"
                behind = "" if p["bound"] is None else f", at least {p['bound'] * 100:.1f} behind"
                return f"{where} after epoch {p['epoch']}{behind}"

            stopped = sum(not p["skipped"] for p in pick.pruned)
            console.print(f"racing pruned {stopped} run{'s' if stopped != 1 else ''} and skipped "
                          f"{len(pick.pruned) - stopped}: {', '.join(stop(p) for p in pick.pruned)}")
        for line in pick.reconciled:
            console.print(f"[bold]another signal:[/] {line}")
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
        refined = format_lr(b.refined_lr) if b.refined else ("edge" if b.edge else "-")
        table.add_row(b.label.removeprefix("EBS "), format_lr(b.best.lr), f"{b.best.mean:.4f}{spread(b.best.std, 4)}",
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
        words = METRIC_HEADINGS[comparison.protocols[0].pick.metric] if (
            comparison.protocols) else "val acc"
        for column in ("protocol", "pick", "lr", f"{words}\nmean ± std", "seeds", "95% bound\nvs best", "test acc"):
            table.add_column(column, justify="left" if column in ("protocol", "pick") else "right")
        for row in comparison.protocols:
            chosen = row.pick.chosen
            bound = "best" if chosen.deficit is None else amount(chosen.deficit.upper, row.pick.metric)
            table.add_row(row.name, chosen.label, format_lr(float(chosen.runs["lr"].iloc[0])),
                          f"{chosen.metric_mean:.4f}{spread(chosen.metric_std, 4)}", str(len(chosen.runs)), bound,
                          f"{row.pick.test_accuracy:.4f}")
        if comparison.protocols:
            console.print(table)
            from accumbench.analysis.choice import COMPARED  # what each kind means, beside its function

            shown = [p for p in COMPARED if any(row.kind == p.kind for row in comparison.protocols)]
            if shown:
                console.print("; ".join(f"{p.kind}: {p.meaning}" for p in shown))
        if comparison.protocols:
            first = comparison.protocols[0].pick
            console.print(f"95% bound vs best: the pick's deficit to its protocol's best may be up to this many "
                          f"{_units_of_its(first.metric)}; a pick is taken only within "
                          f"{first.evidence.words(first.metric)}")
        console.print(f"[bold]{comparison.text}[/]")
        console.print()


def _units_of_its(metric: str) -> str:
    """What a deficit on `metric` is counted in, after 'this many': 'points', or '% of its loss'."""
    chosen = named(metric)
    return f"% of its {chosen.words}" if chosen.relative else "points"


def print_gradient_checks(checks: list[Any], samples: int, micro_batch_size: int, precision: str) -> None:
    """`accumbench check-ga`: per backend, how far the accumulated gradient is from the full-batch one."""
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


def save_pick(picks: list[Any], path: Any) -> str:
    """pick-best --save-config: the pick as a train YAML at `path` (written whole or not at all); what was written."""
    from accumbench.analysis.saved_config import saved_config
    from accumbench.files import write_text_aside

    _config, text, what = saved_config(picks)
    write_text_aside(path, text, "--save-config")
    return f"wrote {path}: {what}; train it again with: accumbench train --config {path}"
