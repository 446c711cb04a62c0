"""Runs into cells: the store's runs (read-only), each summarised at its best-validation epoch and keyed
by the cell it replicates.

    store.find_runs -> one row per run: its columns, its config, its summary metrics   load_runs
      cell_key:    a configuration up to its seed (the runs that are replicates of each other)
      lr_free_key: ... and up to its lr (the cells among which the tuned protocol picks an lr)
      series_key:  ... and up to its EBS (one lr x EBS grid)

Selection is on validation: a run's "best epoch" is the one with the best value of the selection metric
(--metric: validation accuracy by default, which is the run's recorded best_epoch; else the highest F1 or
MCC, or the lowest loss, ties to the lower loss, then the earlier epoch), and every test number is read
at that epoch. The best test accuracy over epochs is kept too, but only under a name that says it was
chosen on the test set.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from accumbench.config import RunConfig
from accumbench.ebs_schedule import ebs_label
from accumbench.errors import UserError
from accumbench.formatting import format_lr, rate_key
from accumbench.metrics import SPLITS, TABLE, scored_columns
from accumbench.noise_scale import measurable
from accumbench.optim_scaling import bundle_name
from accumbench.vocabulary import DIVERGED_PREFIX, FAILED, FINISHED, METRICS, PRUNED, RUNNING, SKIPPED, higher_is_better

# The columns that name a cell in the study's table ("lr": the rate it trained with, runs.lr); any
# other setting that differs between cells is listed in a "variant" column rather than averaged over.
CELL_COLUMNS = ("model", "effective_batch_size", "backend", "lr_scaling", "lr")
# The scaling rules have a column of their own (optim_rules, the report's "rules"), so they are no variant either,
# nor is the base EBS they scale from: what it does shows in the rate trained with and in the β1/β2/ε/wd used.
_NOT_A_VARIANT = {*CELL_COLUMNS, "seed", "data_seed", "checkpoint", "checkpoint_dir",  # "lr": the config's base rate
                  "scaling_rule", "beta1_scaling", "beta2_scaling", "eps_scaling", "weight_decay_scaling",
                  "base_batch_size", "ebs_schedule",  # a schedule names its EBS arm (ebs_label)
                  "save_states"}  # states saved for accumbench branch change no number of the run
# Settings the report's budget column shows, and so its variant column does not repeat.
_BUDGET_SETTINGS = {"budget", "epochs", "train_steps"}
# Each B_simple column, and the column that says why a run has none there.
NOISE_METRICS = {"noise_scale_first": "noise_note_first", "noise_scale_last": "noise_note_last"}
SPLITS_WITH_PREDICTIONS = ("validation", "test")
# The numbers read at each run's best epoch: every metric's validation and test columns (metrics.TABLE), the
# built-in ones first (accuracy and loss); a scored one is NaN for runs recorded before it was (F1 and MCC:
# before schema 7).
AT_BEST_EPOCH = (*(f"{split}_{m.key}" for split in SPLITS for m in TABLE if m.built_in), *scored_columns())


class NoRuns(UserError):
    """Nothing to report: no run matches, or none finished an epoch. The study page says so instead."""


def cell_key(config: RunConfig) -> str:
    """A configuration up to its seed: the runs that are replicates of one another share it.
    (data_seed is kept apart from seed: a fixed split and a per-seed split are different cells.)"""
    unseeded = dataclasses.replace(config, seed=0, data_seed=None if config.data_seed is None else -1)
    return unseeded.config_hash


def lr_free_key(config: RunConfig) -> str:
    """A configuration up to its seed and its learning rate (and the rule that derived it): the cells
    among which the tuned protocol picks one EBS's best lr share it. The base batch size goes too, unless
    another rule (beta, eps, weight decay) scales from it."""
    return cell_key(dataclasses.replace(config, lr=1.0, lr_scaling="none", scaling_rule="none",
                                        base_batch_size=config.base_batch_size if config.scales_beyond_lr else 64))


def series_key(config: RunConfig) -> str:
    """lr_free_key up to the EBS as well: the cells of one lr x EBS grid, over which the lr scaling
    exponent is fitted."""
    return lr_free_key(dataclasses.replace(config, effective_batch_size=1, micro_batch_size=1, scaling_rule="none"))


def optim_rules(config: RunConfig) -> str:
    """The run's scaling rules other than the lr's, by name ('sde β, ε', 'β2 half-life'); '' for none."""
    name = bundle_name(config.rules, with_lr=False)
    return "" if name == "none" else name


def optim_settings_text(config: RunConfig) -> str:
    """'0.656/0.996/5e-09/0': the β1, β2, ε and weight decay the run's optimizer used."""
    s = config.optimizer_settings
    return f"{s.beta1:.3g}/{s.beta2:.4g}/{s.eps:.2g}/{s.weight_decay:.2g}"


@dataclass
class RunData:
    runs: pd.DataFrame  # one row per run: its columns, its config, and its summary metrics
    epochs: pd.DataFrame  # one row per (run, epoch)
    evals: pd.DataFrame  # one row per --eval-every evaluation (run, step)
    # Runs of the same filters whose loss diverged (FAILED, 'diverged at step S'): an lr that was tried
    # and blew up is evidence for the tuned protocol, though it has no metrics.
    diverged: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=DIVERGED_COLUMNS))
    metric: str = "val_accuracy"  # the validation metric each run's best epoch was chosen on
    without_metric: int = 0  # finished runs left out because they never recorded it (before F1 and MCC were)
    # Runs that racing stopped (PRUNED, sweep --race): their lr was tried and found worse, so it bounds the
    # grid and is never picked. One row per run with its decision, and their epochs for the curves.
    pruned: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=PRUNED_COLUMNS))
    pruned_epochs: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


DIVERGED_COLUMNS = ["run_id", "lr", "base_lr", "lr_scaling", "lr_free", "series", "effective_batch_size"]
PRUNED_COLUMNS = [*DIVERGED_COLUMNS, "model", "backend", "seed", "pruned_epoch", "pruned_by", "pruned_p", "pruned_test",
                  "pruned_deficit", "pruned_bound", "skipped", "epochs_planned", "seconds", "saved_seconds", "error"]


def noise_note(config: RunConfig, micro_batch_size: int, measured: bool, value: float) -> str:
    """Why a run's B_simple is missing, in a few words ('' when it has one). `micro_batch_size` is
    the run's recorded one (--micro-batch-size auto resolved; 0 if it never got that far)."""
    if measured:
        return "" if pd.notna(value) else "beyond resolution"  # EMA(|G|²) <= 0: noise swamps the signal
    if not config.noise_scale:
        return "off"
    if micro_batch_size and not measurable(config.effective_batch_size, micro_batch_size):
        return "k = 1"
    return "not recorded"  # e.g. a run recorded before accumbench measured it


# What each note means, for the sentence under the report's table.
NOISE_NOTES = {
    "k = 1": "one micro-batch per optimizer step gives one batch size, and the estimator needs two",
    "off": "trained with --no-noise-scale",
    "beyond resolution": "the |G|² average came out <= 0: the noise swamps the signal at these batch sizes",
    "not recorded": "recorded before accumbench measured the noise scale",
}


def load_runs(store: Any, *, sweep: str | None = None, model: str | None = None,
              backend: str | None = None, status: str | None = FINISHED, metric: str = "val_accuracy") -> RunData:
    """The runs that match, each summarised at its best epoch on `metric`. UserError if none does, or if
    none recorded `metric` (runs recorded before schema version 7 have no F1 or MCC)."""
    runs = store.find_runs(status=status, sweep=sweep, model=model, backend=backend)
    if not runs:
        filters = ", ".join(f"{k} {v}" for k, v in (("status", status), ("sweep", sweep), ("model", model),
                                                      ("backend", backend)) if v)
        known = ", ".join(s["name"] for s in store.list_sweeps()) or "none"
        raise NoRuns(f"no runs match ({filters}) in {store.url}; sweeps there: {known}")
    epochs = pd.DataFrame(store.epochs_of([r["id"] for r in runs]))
    frame = _with_config_columns(pd.DataFrame(runs).rename(columns={"id": "run_id"}), runs)
    if epochs.empty:
        raise NoRuns(f"the matching runs in {store.url} have no recorded epochs; nothing to report")
    per_run = _per_run_totals(epochs)
    for column in AT_BEST_EPOCH:  # a store of runs all recorded before F1 and MCC has no values there
        epochs[column] = epochs[column].astype(float) if column in epochs else float("nan")
    if metric != "val_accuracy":  # the recorded best_epoch is the best on validation accuracy
        frame["best_epoch"] = frame["run_id"].map(best_epochs(epochs, metric))
    at_best = epochs.merge(frame[["run_id", "best_epoch"]], left_on=["run_id", "epoch"],
                           right_on=["run_id", "best_epoch"])
    at_best = at_best.set_index("run_id")[list(AT_BEST_EPOCH)]
    frame = frame.join(per_run, on="run_id").join(at_best, on="run_id")
    finished_an_epoch = frame["run_id"].isin(epochs["run_id"])
    without_metric = int((finished_an_epoch & frame["best_epoch"].isna()).sum()) if metric != "val_accuracy" else 0
    frame = frame[frame["best_epoch"].notna()]  # e.g. a FAILED run that never finished an epoch
    if frame.empty:
        if metric != "val_accuracy" and epochs["val_accuracy"].notna().any():
            raise UserError(f"none of the matching runs in {store.url} recorded {METRICS[metric]} (they were trained "
                            "before accumbench recorded F1 and MCC); choose with --metric val_accuracy or val_loss")
        raise NoRuns(f"none of the matching runs in {store.url} finished an epoch; nothing to report")
    frame = _with_labels(frame)
    evals = pd.DataFrame(store.evals_of(frame["run_id"].tolist()),
                         columns=["run_id", "step", "epoch", "samples_seen", "val_loss", "val_accuracy"])
    filters = dict(sweep=sweep, model=model, backend=backend)
    pruned, pruned_epochs = _pruned(store, epochs, frame, **filters)
    return RunData(frame.reset_index(drop=True), epochs, evals, _diverged(store, **filters), metric, without_metric,
                   pruned, pruned_epochs)


def _with_config_columns(frame: pd.DataFrame, runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Each run's RunConfig, its cell, and the columns derived from it (also for runs recorded before these
    columns existed)."""
    configs = {row["id"]: RunConfig.from_dict(json.loads(row["config_json"])) for row in runs}
    frame["cell"] = frame["run_id"].map(lambda run_id: cell_key(configs[run_id]))
    frame["config"] = frame["run_id"].map(configs)
    frame["lr_scaling"] = frame["config"].map(lambda c: c.lr_scaling)
    frame["base_lr"] = frame["config"].map(lambda c: c.lr)
    frame["lr"] = frame["config"].map(lambda c: c.scaled_lr)
    # The other rules by name ('' for none: a cell's label then says nothing of them) and what they gave.
    frame["optim_rules"] = frame["config"].map(optim_rules)
    frame["optim_settings"] = frame["config"].map(optim_settings_text)
    frame["lr_free"] = frame["config"].map(lr_free_key)
    frame["series"] = frame["config"].map(series_key)
    return frame


def _per_run_totals(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per run, over its epochs: the best train and test accuracy, the time and work it took, its peak
    memory, the seconds per sample of each epoch, and the noise scale of its first and last epoch."""
    per_run = epochs.groupby("run_id").agg(
        best_train_accuracy=("train_accuracy", "max"), best_test_accuracy=("test_accuracy", "max"),
        train_seconds=("train_seconds", "sum"), samples_seen=("samples_seen", "max"),
        optimizer_steps=("optimizer_steps", "max"), peak_memory_mb=("peak_memory_mb", "max"),
    )
    per_run["samples_per_second"] = per_run["samples_seen"] / per_run["train_seconds"]
    # B_simple of the first and the last epoch (noise_steps says whether it was measured at all).
    ordered = epochs.sort_values(["run_id", "epoch"])
    # Each epoch's training seconds per sample, for telling a measured difference from noise (cost.py).
    epoch_samples = ordered["samples_seen"] - ordered.groupby("run_id")["samples_seen"].shift(fill_value=0)
    per_sample = (ordered["train_seconds"] / epoch_samples).rename("seconds_per_sample")
    per_run["seconds_per_sample"] = per_sample.groupby(ordered["run_id"]).agg(tuple)
    for name, keep in (("first", "first"), ("last", "last")):
        rows = ordered.drop_duplicates("run_id", keep=keep).set_index("run_id")
        per_run[f"noise_scale_{name}"] = rows["noise_scale"].astype(float)
        per_run[f"noise_measured_{name}"] = rows["noise_steps"].notna()
    return per_run


def _with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """What the tables say of each run beside its numbers: its variant, its budget, its noise notes."""
    frame["variant"] = _variants(frame)
    frame["ebs_label"] = frame["config"].map(lambda c: ebs_label(c.effective_batch_size, c.ebs_schedule))
    frame["shown_variant"] = _variants(frame, frozenset(_BUDGET_SETTINGS))  # the budget has a column of its own
    frame["budget_text"] = frame["config"].map(
        lambda c: f"{c.train_steps} steps" if c.budget == "steps" else f"{c.epochs} epoch{'s' if c.epochs != 1 else ''}")
    for which in ("first", "last"):
        frame[f"noise_note_{which}"] = [
            noise_note(config, int(micro), measured, value) for config, micro, measured, value in zip(
                frame["config"], frame["micro_batch_size"], frame[f"noise_measured_{which}"],
                frame[f"noise_scale_{which}"])]
    return frame


def best_epochs(epochs: pd.DataFrame, metric: str) -> pd.Series:
    """{run id: its best epoch on `metric`}; ties go to the lower validation loss, then to the earlier epoch.
    A run with no value of `metric` (recorded before the metric was) has none."""
    ranked = epochs[epochs[metric].notna()].assign(_loss=epochs["val_loss"].astype(float).fillna(float("inf")))
    ranked = ranked.sort_values(["run_id", metric, "_loss", "epoch"],
                                ascending=[True, not higher_is_better(metric), True, True])
    return ranked.drop_duplicates("run_id").set_index("run_id")["epoch"]


def _diverged(store: Any, **filters: Any) -> pd.DataFrame:
    """The diverged runs among those the filters match, keyed like the finished ones."""
    rows = []
    for run in store.find_runs(status=FAILED, **filters):
        if (run["error"] or "").startswith(DIVERGED_PREFIX):
            config = RunConfig.from_dict(json.loads(run["config_json"]))
            rows.append(dict(run_id=run["id"], lr=config.scaled_lr, base_lr=config.lr, lr_scaling=config.lr_scaling,
                             lr_free=lr_free_key(config), series=series_key(config),
                             effective_batch_size=config.effective_batch_size))
    return pd.DataFrame(rows, columns=DIVERGED_COLUMNS)


def _pruned(store: Any, finished_epochs: pd.DataFrame, finished: pd.DataFrame,
            **filters: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The PRUNED and SKIPPED runs among those the filters match, keyed like the finished ones, with their
    decision and the training time racing saved: the epochs a pruned run did not train, at the pace of the ones
    it did; a skipped run's planned epochs, at the pace of its group's finished runs (its EBS: same work)."""
    runs = sorted(store.find_runs(status=PRUNED, **filters) + store.find_runs(status=SKIPPED, **filters),
                  key=lambda run: run["id"])
    epochs = pd.DataFrame(store.epochs_of([run["id"] for run in runs])) if runs else pd.DataFrame()
    pace = (finished_epochs.merge(finished[["run_id", "lr_free"]], on="run_id").groupby("lr_free")["epoch_seconds"].mean()
            if len(finished) else pd.Series(dtype=float))
    rows = []
    for run in runs:
        config = RunConfig.from_dict(json.loads(run["config_json"]))
        own = epochs[epochs["run_id"] == run["id"]] if not epochs.empty else epochs
        seconds = float(own["epoch_seconds"].sum()) if len(own) else 0.0
        left = max(0, int(run["epochs"]) - len(own))
        each = seconds / len(own) if len(own) else float(pace.get(lr_free_key(config), 0.0))
        rows.append(dict(run_id=run["id"], lr=config.scaled_lr, base_lr=config.lr, lr_scaling=config.lr_scaling,
                         lr_free=lr_free_key(config), series=series_key(config),
                         effective_batch_size=config.effective_batch_size, model=run["model"], backend=run["backend"],
                         seed=run["seed"], pruned_epoch=run["pruned_epoch"] or 0, pruned_by=run["pruned_by"],
                         pruned_p=run["pruned_p"], pruned_test=run["pruned_test"],
                         pruned_deficit=run.get("pruned_deficit"), pruned_bound=run.get("pruned_bound"),
                         skipped=run["status"] == SKIPPED, epochs_planned=int(run["epochs"]),
                         seconds=seconds, saved_seconds=each * left, error=run["error"]))
    return pd.DataFrame(rows, columns=PRUNED_COLUMNS), epochs


def _variants(frame: pd.DataFrame, leave_out: frozenset[str] = frozenset()) -> pd.Series:
    """For each run, the settings (other than the cell columns, the seed and `leave_out`) that differ
    between the cells being reported, e.g. 'dropout=0.2, epochs=3'; empty when they differ in nothing else."""
    settings = {run_id: {k: v for k, v in dataclasses.asdict(c).items() if k not in _NOT_A_VARIANT | leave_out}
                for run_id, c in zip(frame["run_id"], frame["config"])}
    keys = sorted({k for s in settings.values() for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]
    return frame["run_id"].map(lambda run_id: ", ".join(f"{k}={settings[run_id][k]}" for k in varying))




def varying(runs: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """The columns among `columns` whose value differs between the runs. A base lr counts only where
    the rate trained with differs too: one rate reached from several base rates by a rule is one lr."""
    def varies(column: str) -> bool:
        if column == "base_lr" and runs["lr"].map(rate_key).nunique() < 2:
            return False
        return runs[column].nunique() > 1

    return [c for c in columns if varies(c)]


def arm_name(run: dict[str, Any]) -> str:
    """'EBS 256', or a schedule's label."""
    label = run.get("ebs_label")
    return f"EBS {run['effective_batch_size']}" if label is None or str(label).isdigit() else str(label)


def cell_label(run: dict[str, Any], vary: list[str]) -> str:
    """A cell named for people: 'EBS 256', plus the values of the columns that vary, e.g. 'EBS 256 sqrt'.
    A varying base lr shows as the rate the cell trained with: 'EBS 256 lr 3e-4'."""
    parts = [f"lr {format_lr(run['lr'])}" if c == "base_lr" else str(run[c]) for c in vary if run[c]]
    return " ".join([arm_name(run), *parts])



def load_predictions(store: Any, data: RunData) -> dict[str, dict[int, dict[str, Any]]]:
    """{'validation': {run id: ...}, 'test': {run id: ...}}: the stored predictions of the runs, for
    the paired tests of pick-best (Store.predictions' shape)."""
    at = {int(run_id): int(epoch) for run_id, epoch in zip(data.runs["run_id"], data.runs["best_epoch"])}
    return {split: store.predictions(list(at), split, epochs=at) for split in SPLITS_WITH_PREDICTIONS}


def count_running(store: Any, **filters: Any) -> int:
    """Runs still RUNNING among those the filters match (the study page says so while it waits)."""
    return len(store.find_runs(status=RUNNING, **filters))
