"""The words every layer shares: run statuses, sweep cell states, selection metrics and protocols.

They live on the lowest floor so that the store, the analysis, the console views and the sweep can
all name the same things without importing one another.
"""

from __future__ import annotations

from accumbench.metrics import ACCURACY, TABLE

# --- run statuses (runs.status): a lifecycle RUNNING -> FINISHED | FAILED | KILLED | PRUNED; or SKIPPED -

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
# A raced run stopped early because its lr was shown worse than its group's best by more than the margin at
# that epoch (sweep --race): final, like FINISHED. runs.pruned_epoch, pruned_by, pruned_deficit and
# pruned_bound record the decision.
PRUNED = "PRUNED"
# A raced cell never trained: its lr lies beyond a bracketed optimum, or its arm was already pruned on another
# seed. Recorded as a run (runs.error says why, pruned_by names the run that decided it) so that pick-best
# counts the lr as tried and worse, as it counts PRUNED, and a resumed sweep never trains it.
SKIPPED = "SKIPPED"
STATUSES = (RUNNING, FINISHED, FAILED, KILLED, PRUNED, SKIPPED)
TERMINAL_STATUSES = (FINISHED, FAILED, KILLED, PRUNED, SKIPPED)
LIVE_STATUSES = (RUNNING, FINISHED)  # at most one such run per sweep cell
# The error of a run that ended KILLED says why. A user's stop (Ctrl-C, SIGTERM) is not the run's
# fault, so a sweep resumes such cells without counting a failed attempt; a stale heartbeat is
# (a crash, the OOM killer), so it counts.
INTERRUPTED = "interrupted (Ctrl-C)"
TERMINATED = "terminated (SIGTERM)"
# The error of a run whose loss became NaN or infinite: a result (the same config diverges again), not a fault.
DIVERGED_PREFIX = "diverged at step"
STALE_ERROR = "stale heartbeat"  # how a run's error begins when another worker gave it up for dead

# --- the state of a sweep's cell, from the runs recorded for it ----------------------------------------

PENDING, RUNNING_ELSEWHERE, DONE, DIVERGED, GAVE_UP = "pending", "running", "finished", "diverged", "gave up"
CUT = "pruned"  # its run was PRUNED by racing: done, never rerun
PASSED_OVER = "skipped"  # racing SKIPPED it: done, never trained

# --- choosing an EBS -----------------------------------------------------------------------------------

# The selection metrics of pick-best and report, on validation only, and how a sentence names them: one per
# entry of metrics.TABLE. F1 is the positive class's with two labels (runs.positive_label), macro-F1 with more;
# MCC is Matthews'.
METRICS = {metric.name: f"validation {metric.words}" for metric in TABLE}
# ... and how a table heading names them.
METRIC_HEADINGS = {metric.name: f"val {metric.label}" for metric in TABLE}
# Metrics that are not a mean over examples: two runs are compared on them by a paired bootstrap over the
# examples (task_metrics.paired_bootstrap), not McNemar, which tests accuracy alone.
BOOTSTRAPPED = {metric.name: metric.key for metric in TABLE if metric.bootstrapped}


def higher_is_better(metric: str) -> bool:
    """Every selection metric but the loss (and a name outside the table, as before there was one)."""
    return next((m.higher_is_better for m in TABLE if m.name == metric), True)


def curve_metric(metric: str) -> tuple[str, str]:
    """The validation metric learning curves draw beside the loss, and its words: the chosen one where it is
    computed from predictions (accuracy, F1, MCC), else accuracy."""
    scored = any(m.score is not None for m in TABLE if m.name == metric)
    return (metric, METRICS[metric]) if scored else (ACCURACY.name, METRICS[ACCURACY.name])


def test_metric(metric: str) -> str:
    """The test column of a validation metric: val_f1 -> test_f1."""
    return "test_" + metric.removeprefix("val_")
TUNED, POOLED = "tuned", "pooled"
# The defaults of sweep --race-alpha, --race-after and --race-guard (and of pick-best --replay-race), chosen by
# replaying racing over the SST-2 grid of bench/race.py and checked on SUBJ (docs/racing.md): of the rules that
# kept the pick and every best lr and stopped no arm pick-best would show as good as its EBS's best, the one
# with the fewest stops not ruled out at the end (the two lrs that collapse on one seed of two, which every
# rule that prunes stops), then the largest saving. alpha is the one-sided error of the deficit's lower bound:
# an arm stops when that bound is above the margin.
RACE_ALPHA = 1e-3
RACE_AFTER = 2
# The slow-starter guard: "closing" spares an arm whose last epoch's gain on the leader, carried over the epochs
# left, would bring it within the margin (and every arm until it has two epochs to extrapolate from); "none".
RACE_GUARDS = ("closing", "none")
RACE_GUARD = "closing"

# --- report -------------------------------------------------------------------------------------------

FORMATS = ("table", "markdown", "csv", "json", "html")
CURVES = ("best", "all")  # report --curves: each EBS at its best lr with the other lrs faded, or every series alike
