"""One training run, end to end: validate and load everything, then (and only then) record a
RUNNING run, train epoch by epoch, evaluate, time, measure memory, and close the run with a
terminal status whatever happens.

    prepare (preparation.py: data, model; every UserError happens there, before the store is written)
      -> store.create_run (RUNNING; a sweep claims the run in the store instead, see sweep/worker.py)
      -> recorded_run (lifecycle.py) + fit: for each epoch, _train_epoch: plan -> backend.train_epoch
         (backends/base.py: one optimizer step per group) -> evaluate val/test -> _record_epoch: predictions,
         store.add_steps, add_epoch (a heartbeat thread beats meanwhile); then a NaN evaluation is divergence,
         and a raced run (sweep --race) asks its Race whether to stop
      -> FINISHED | FAILED (exception; "diverged at step S") | KILLED (Ctrl-C, SIGTERM) | PRUNED (racing)

What a run shows while it trains goes through RunHooks, a small protocol: the console views in
present/progress.py implement it, SilentHooks is the library's default.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from accumbench import accumulation, task_metrics
from accumbench.backends.base import Backend, Diverged, EpochStats, logits_by_length
from accumbench.config import RunConfig
from accumbench.data import pipeline
from accumbench.ebs_schedule import EbsSchedule
from accumbench.runtime.checkpoints import checkpoint_root, require_writable_checkpoints, save_checkpoint
from accumbench.runtime.lifecycle import (
    Heartbeat,
    RunDiverged,
    RunPruned,
    recorded_run,
    sigterm_as_exception,
)
from accumbench.runtime.preparation import Prepared, device_name, loaded_columns, make_backend, prepare, run_columns
from accumbench.runtime.states import StateSaver
from accumbench.store import NullStore, Store, resolve_db_url

if TYPE_CHECKING:
    from accumbench.tracking import RunTracker


class RunHooks(Protocol):
    """What the engine tells whoever shows a run's progress (present/progress.py's RichReporter)."""

    def run_started(self, run_id: int, config: Any, sizes: dict[str, int], device: str, world_size: int = 1,
                    epochs: int = 0, total_steps: int = 0, data_notes: str = "") -> None: ...
    def epoch_started(self, epoch: int, num_samples: int) -> None: ...
    def step(self, samples_done: int, loss: float) -> None: ...
    def epoch_finished(self, row: dict[str, Any]) -> None: ...


class Race(Protocol):
    """Racing's judge (sweep/race.py's Racer), asked after each recorded epoch of a raced run."""

    metric: str

    def decide(self, run_id: int, epoch: int) -> Any: ...  # a PruneDecision to stop the run, or None


class SilentHooks(RunHooks):
    """RunHooks that show nothing (the protocol's own bodies do nothing): library use, tests, and the
    processes other than the main one."""


@dataclass
class TrainResult:
    run_id: int | None  # None on the processes other than the main one
    epochs: list[dict[str, Any]]
    best_epoch: int
    checkpoint_path: str | None


def train(config: RunConfig, db: str | None = None, reporter: RunHooks | None = None,
          cache: dict[Any, Any] | None = None) -> TrainResult:
    """Run one configuration and record it. Returns the run id and its epoch rows. `cache` is
    prepare()'s: runs that share one load their data once (a benchmark may seed it with its own
    TextDataset under data_key(config)).

    Raises RunDiverged (after recording the run as FAILED) when the loss becomes NaN or infinite."""
    url = resolve_db_url(db)
    Store.check_compatible(url)  # refuse a newer or foreign database before the slow loading
    require_writable_checkpoints(url, config)
    prepared = prepare(config, cache)
    backend = make_backend(prepared)
    if not backend.is_main:
        try:
            return fit(None, prepared, backend, NullStore(), SilentHooks(), checkpoint_root(url, config))
        except Diverged as exc:
            raise RunDiverged(None, exc.step, exc.loss) from None
        finally:
            backend.close()
    store = Store.open(url)
    try:
        with sigterm_as_exception():
            run_id = store.create_run(**{**run_columns(config), **loaded_columns(prepared, backend)})
            with recorded_run(store, run_id) as heartbeat:
                result = fit(run_id, prepared, backend, store, reporter, checkpoint_root(url, config), heartbeat)
            return result
    finally:
        store.close()
        backend.close()


@dataclass
class RunLoop:
    """One run as fit trains it: what it trains and records with, and how far it has got."""

    run_id: int | None  # None on the processes other than the main one, which record nothing
    prepared: Prepared
    backend: Backend
    store: Store | NullStore
    reporter: RunHooks
    checkpoints: Path
    heartbeat: Heartbeat | None = None
    tracker: RunTracker | None = None  # --log-with
    optimizer_steps: int = 0  # of the epochs so far
    samples_seen: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per epoch, as recorded
    best: dict[str, Any] | None = None  # the best epoch's row so far
    checkpoint_path: str | None = None
    schedule: EbsSchedule | None = None  # --ebs-schedule (auto's grows as it decides)
    states: StateSaver | None = None  # --save-states

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The padded batch of these training samples."""
        return pipeline.collate(self.prepared.splits["train"], indices, self.prepared.pad_token_id)

    def step_done(self, samples_done: int, loss: float) -> None:
        """After each optimizer step, once its numbers are read: a run another worker gave up stops here."""
        if self.heartbeat is not None:
            self.heartbeat.raise_if_lost()
        self.reporter.step(samples_done, loss)


def fit(run_id: int | None, prepared: Prepared, backend: Backend, store: Store | NullStore,
        reporter: RunHooks | None, checkpoints: Path, heartbeat: Heartbeat | None = None,
        race: Race | None = None) -> TrainResult:
    """Train a run epoch by epoch, recording as it goes (a recorded run: inside recorded_run). With `race`
    (sweep --race), after each recorded epoch but the last, racing may stop it: RunPruned."""
    reporter = reporter or SilentHooks()
    sizes = {name: len(split) for name, split in prepared.splits.items()}
    reporter.run_started(run_id, prepared.config, sizes, device_name(backend.device), backend.world_size,
                         epochs=prepared.epochs, total_steps=prepared.total_steps,
                         data_notes=prepared.dataset.describe())
    config = prepared.config
    run = RunLoop(run_id, prepared, backend, store, reporter, checkpoints, heartbeat, schedule=config.schedule,
                  states=StateSaver.for_run(config.save_states, run_id, store, backend, checkpoints))
    if run.states is not None:
        run.states.at_epoch_end(0, 0, 0, config.effective_batch_size)
    if config.log_with:  # after the backend: Accelerate's trackers need its process state
        from accumbench.tracking import RunTracker

        run.tracker = RunTracker(config.log_with, f"run-{run_id}", checkpoints.parent / "tracking", config.to_dict())
    try:
        for epoch in range(1, prepared.epochs + 1):
            row = _train_epoch(run, epoch)
            # The training loss can stay finite while the weights have blown up: a NaN evaluation is divergence too.
            for loss in (row["val_loss"], row["test_loss"]):
                if not math.isfinite(loss):
                    raise Diverged(run.optimizer_steps, loss, steps=[])  # this epoch's steps are recorded
            # After the last epoch there is nothing left to save: a run that got there is FINISHED.
            if race is not None and epoch < prepared.epochs and (decision := race.decide(run_id, epoch)) is not None:
                raise RunPruned(decision, race.metric)
    finally:
        if run.tracker is not None:
            run.tracker.finish()
    assert run.best is not None
    return TrainResult(run_id=run_id, epochs=run.rows, best_epoch=run.best["epoch"],
                       checkpoint_path=run.checkpoint_path)


# fit's shape, for whoever runs it for a prepared run (sweep/worker.py: a test passes one that crashes).
Fit = Callable[[int | None, Prepared, Backend, Store | NullStore, RunHooks | None, Path, Heartbeat | None, Race | None],
               TrainResult]


def _train_epoch(run: RunLoop, epoch: int) -> dict[str, Any]:
    """One epoch: its plan, one optimizer step per group, validation and test; then its records. Its row."""
    prepared, backend = run.prepared, run.backend
    config, train_split = prepared.config, prepared.splits["train"]
    if backend.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backend.device)
    groups = accumulation.plan_epoch(len(train_split), config.effective_batch_size, config.micro_batch_size,
                                     seed=config.seed, epoch=epoch, drop_last=config.drop_last,
                                     world_size=backend.world_size,
                                     lengths=train_split.lengths if config.group_by_length else None,
                                     schedule=run.schedule, steps_before=run.optimizer_steps)
    # The steps budget cuts the last epoch short; evaluation still follows, as at every epoch end.
    groups = groups[: prepared.total_steps - run.optimizer_steps]
    real_tokens, padded_tokens = pipeline.token_counts((mb.indices for g in groups for mb in g.micro_batches),
                                                       train_split.lengths)
    run.reporter.epoch_started(epoch, sum(len(g) for g in groups))
    between = EvalsBetween(run, epoch, groups, first_step=run.optimizer_steps + 1)

    epoch_start = time.perf_counter()
    stats = backend.train_epoch(groups, run.train_batch, epoch, config.grad_clip, run.optimizer_steps,
                                run.samples_seen, on_step=run.step_done, after_step=between.after_step)
    _sync(backend.device)
    train_seconds = time.perf_counter() - epoch_start - between.seconds

    eval_start = time.perf_counter()
    val = evaluate(backend, prepared.splits["validation"], prepared.pad_token_id, config.micro_batch_size)
    test = evaluate(backend, prepared.splits["test"], prepared.pad_token_id, config.micro_batch_size)
    val_loss, val_accuracy, test_loss, test_accuracy = val.loss, val.accuracy, test.loss, test.accuracy
    task = {f"{prefix}_{name}": value for prefix, split, evaluation in (("val", "validation", val), ("test", "test", test))
            for name, value in task_metrics.scores(getattr(prepared.dataset, split).labels, evaluation.predicted,
                                                   prepared.dataset.num_labels, prepared.positive).items()}
    eval_seconds = time.perf_counter() - eval_start + between.seconds

    run.optimizer_steps += stats.optimizer_steps
    run.samples_seen += stats.samples
    row = dict(
        epoch=epoch, train_loss=stats.loss, train_accuracy=stats.accuracy,
        val_loss=val_loss, val_accuracy=val_accuracy, test_loss=test_loss, test_accuracy=test_accuracy, **task,
        optimizer_steps=run.optimizer_steps, samples_seen=run.samples_seen, skipped_steps=stats.skipped_steps,
        epoch_seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds, eval_seconds=eval_seconds,
        samples_per_second=stats.samples / train_seconds, tokens_per_second=real_tokens / train_seconds,
        padding_fraction=1 - real_tokens / padded_tokens, peak_memory_mb=_peak_memory_mb(backend.device),
        **stats.noise_columns(),
    )
    _record_epoch(run, row, stats, between.rows, {"validation": val, "test": test}, epoch_start)
    _after_epoch(run, epoch, groups[-1].effective_batch_size, row.get("noise_scale"))
    return row


def _after_epoch(run: RunLoop, epoch: int, effective_batch_size: int, noise_scale: float | None) -> None:
    """At an epoch's end: its state, when --save-states asks for it; with --ebs-schedule auto, a doubled EBS
    from the next epoch on once the epoch's B_simple has passed the one in force."""
    if run.states is not None:
        run.states.at_epoch_end(epoch, run.optimizer_steps, run.samples_seen, effective_batch_size)
    schedule = run.schedule
    if schedule is not None and schedule.auto:
        doubled = schedule.next_auto_size(effective_batch_size, noise_scale, len(run.prepared.splits["train"]))
        if doubled is not None:
            run.schedule = schedule.with_stage(doubled, epoch)


def _record_epoch(run: RunLoop, row: dict[str, Any], stats: EpochStats, evals: list[dict[str, Any]],
                  evaluations: dict[str, Evaluation], epoch_start: float) -> None:
    """The epoch into the store (its predictions, the best epoch and its checkpoint, its steps, evaluations
    between epochs' ends and row), the tracker and the reporter, in that order."""
    config, dataset, store, epoch = run.prepared.config, run.prepared.dataset, run.store, row["epoch"]
    improved = run.best is None or _better(row, run.best)
    # Every epoch's predictions, for paired tests between runs at the epoch a metric chooses (pick-best's
    # McNemar tests and bootstraps); the best epoch's also as the checkpoint's.
    for name, evaluation in evaluations.items():
        text_split = getattr(dataset, name)
        store.save_predictions(run.run_id, name, epoch, text_split.fingerprint, list(text_split.labels),
                               evaluation.predicted, best=improved)
    if improved:
        run.best = row
        store.update_run(run.run_id, best_epoch=epoch)
        if config.checkpoint and run.backend.is_main:
            run.checkpoint_path = str(save_checkpoint(run.backend.unwrapped_model(), run.checkpoints / str(run.run_id),
                                                      epoch, dataset.label_names, config))
            store.update_run(run.run_id, checkpoint_path=run.checkpoint_path)
    row["epoch_seconds"] = time.perf_counter() - epoch_start  # includes the checkpoint write
    store.add_steps(run.run_id, stats.steps)
    store.add_evals(run.run_id, evals)
    store.add_epoch(run.run_id, **row)
    if run.tracker is not None:
        run.tracker.log_steps(stats.steps)
        run.tracker.log_epoch(row)
    run.rows.append(row)
    run.reporter.epoch_finished(row)


@dataclass
class EvalsBetween:
    """What happens after an optimizer step, between epochs' ends: --save-states at steps, and --eval-every's
    validation, for steps-to-target (the epoch's last step is evaluated with the epoch; its time is not training
    time)."""

    run: RunLoop
    epoch: int
    groups: Sequence[accumulation.OptimizerGroup]  # the epoch's
    first_step: int  # the epoch's first optimizer step
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def after_step(self, step: int, samples: int) -> None:
        prepared, backend = self.run.prepared, self.run.backend
        last_step = self.first_step + len(self.groups) - 1
        if self.run.states is not None:
            in_epoch = samples - self.run.samples_seen
            self.run.states.after_step(step, samples, self.epoch - 1 + in_epoch / len(prepared.splits["train"]),
                                       self.groups[step - self.first_step].effective_batch_size)
        every = prepared.config.eval_every
        if every is None or step % every or step == last_step:
            return
        _sync(backend.device)  # the training queued so far is training time, not evaluation time
        started = time.perf_counter()
        result = evaluate(backend, prepared.splits["validation"], prepared.pad_token_id,
                          prepared.config.micro_batch_size)
        self.rows.append(dict(step=step, epoch=self.epoch, samples_seen=samples, val_loss=result.loss,
                              val_accuracy=result.accuracy))
        self.seconds += time.perf_counter() - started


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float
    predicted: list[int]  # the predicted class of every example, in split order


@torch.inference_mode()
def evaluate(backend: Backend, split: pipeline.EncodedSplit, pad_token_id: int, batch_size: int) -> Evaluation:
    """Loss, accuracy and predictions over the split, batched by length (backends.base.logits_by_length, as
    predict's); with several processes each rank takes every W-th batch and the sums are all-reduced
    (each rank fills in its own examples' predictions, zeros elsewhere, so their sum is all of them)."""
    model, device = backend.unwrapped_model(), backend.device
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    predicted = torch.zeros(len(split), device=device, dtype=torch.float64)  # float64: exact for class ids
    for indices, batch, logits in logits_by_length(model, split.lengths, batch_size,
                                                   partial(pipeline.collate, split, pad_token_id=pad_token_id),
                                                   device, backend.rank, backend.world_size):
        loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum")
        guess = logits.argmax(dim=-1)
        correct += (guess == batch["labels"]).sum()
        predicted[torch.as_tensor(indices, device=device)] = guess.double()
    model.train()
    totals = backend.all_reduce_sum(torch.cat([torch.stack([loss_sum, correct]), predicted])).tolist()
    return Evaluation(totals[0] / len(split), totals[1] / len(split), [round(p) for p in totals[2:]])


def _better(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """Higher validation accuracy wins; on a tie, lower validation loss. NaN never wins."""
    if math.isnan(row["val_loss"]):
        return False
    if row["val_accuracy"] != best["val_accuracy"]:
        return row["val_accuracy"] > best["val_accuracy"]
    return math.isnan(best["val_loss"]) or row["val_loss"] < best["val_loss"]

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated this epoch. CPU: the process's peak resident set size (KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


