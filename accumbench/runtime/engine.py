"""One training run, end to end: validate and load everything, then (and only then) record a
RUNNING run, train epoch by epoch, evaluate, time, measure memory, and close the run with a
terminal status whatever happens.

    prepare (preparation.py: data, model; every UserError happens there, before the store is written)
      -> store.create_run (RUNNING; a sweep claims the run in the store instead, see sweep/worker.py)
      -> recorded_run (lifecycle.py) + fit: for each epoch: plan -> backend.train_epoch -> evaluate
         val/test -> store.add_steps, add_epoch (a heartbeat thread beats meanwhile) -> a raced run
         (sweep --race) asks its Race whether to stop
      -> FINISHED | FAILED (exception; "diverged at step S") | KILLED (Ctrl-C, SIGTERM) | PRUNED (racing)

What a run shows while it trains goes through RunHooks, a small protocol: the console views in
present/progress.py implement it, SilentHooks is the library's default.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from accumbench import accumulation, task_metrics
from accumbench.backends.base import Backend, Diverged, logits_by_length
from accumbench.config import RunConfig
from accumbench.data import pipeline
from accumbench.runtime.checkpoints import checkpoint_root, require_writable_checkpoints, save_checkpoint
from accumbench.runtime.lifecycle import (
    Heartbeat,
    RunDiverged,
    RunPruned,
    pause_for_tests,
    recorded_run,
    sigterm_as_exception,
)
from accumbench.runtime.preparation import Prepared, device_name, loaded_columns, make_backend, prepare, run_columns
from accumbench.store import NullStore, Store, resolve_db_url


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
    run_id: int
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
            return _fit(None, prepared, backend, NullStore(), SilentHooks(), checkpoint_root(url, config))
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


def fit(run_id: int, prepared: Prepared, backend: Backend, store: Store, reporter: RunHooks | None,
        checkpoints: Path, heartbeat: Heartbeat | None = None, race: Race | None = None) -> TrainResult:
    """Train a recorded run epoch by epoch, recording as it goes (inside recorded_run). With `race` (sweep
    --race), after each recorded epoch but the last, racing may stop it: RunPruned."""
    reporter = reporter or SilentHooks()
    sizes = {name: len(split) for name, split in prepared.splits.items()}
    reporter.run_started(run_id, prepared.config, sizes, device_name(backend.device), backend.world_size,
                         epochs=prepared.epochs, total_steps=prepared.total_steps,
                         data_notes=prepared.dataset.describe())
    return _fit(run_id, prepared, backend, store, reporter, checkpoints, heartbeat, race)


def _fit(run_id: int | None, prepared: Prepared, backend: Backend, store: Store | NullStore, reporter: RunHooks,
         checkpoints: Path, heartbeat: Heartbeat | None = None, race: Race | None = None) -> TrainResult:
    config = prepared.config
    train_split = prepared.splits["train"]
    batch_for = lambda indices: pipeline.collate(train_split, indices, prepared.pad_token_id)  # noqa: E731

    def on_step(samples_done: int, loss: float) -> None:
        if heartbeat is not None:
            heartbeat.raise_if_lost()
        reporter.step(samples_done, loss)

    tracker = None
    if config.log_with:  # after the backend: Accelerate's trackers need its process state
        from accumbench.tracking import RunTracker

        tracker = RunTracker(config.log_with, f"run-{run_id}", checkpoints.parent / "tracking", config.to_dict())
    try:
        return _epochs(run_id, prepared, backend, store, reporter, checkpoints, on_step, batch_for, tracker, race)
    finally:
        if tracker is not None:
            tracker.finish()


def _epochs(run_id: int | None, prepared: Prepared, backend: Backend, store: Store | NullStore, reporter: RunHooks,
            checkpoints: Path, on_step: Any, batch_for: Any, tracker: Any, race: Race | None) -> TrainResult:
    config, splits = prepared.config, prepared.splits
    train_split, device = splits["train"], backend.device
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    checkpoint_path: str | None = None
    optimizer_steps = samples_seen = 0
    for epoch in range(1, prepared.epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        groups = accumulation.plan_epoch(len(train_split), config.effective_batch_size, config.micro_batch_size,
                                         seed=config.seed, epoch=epoch, drop_last=config.drop_last,
                                         world_size=backend.world_size,
                                         lengths=train_split.lengths if config.group_by_length else None)
        # The steps budget cuts the last epoch short; evaluation still follows, as at every epoch end.
        groups = groups[: prepared.total_steps - optimizer_steps]
        real_tokens, padded_tokens = pipeline.token_counts((mb.indices for g in groups for mb in g.micro_batches),
                                                       train_split.lengths)
        reporter.epoch_started(epoch, sum(len(g) for g in groups))
        evals: list[dict[str, Any]] = []
        eval_seconds_between = 0.0

        # after_step is called by this epoch's train_epoch only, so it reads this iteration's variables.
        def after_step(step: int, samples: int, epoch: int = epoch) -> None:
            nonlocal eval_seconds_between
            # --eval-every: validation between epochs' ends, for steps-to-target (the epoch's last
            # step is evaluated with the epoch, below). Its time is not training time.
            if config.eval_every is None or step % config.eval_every or step == optimizer_steps + len(groups):  # noqa: B023
                return
            _sync(device)  # the training queued so far is training time, not evaluation time
            started = time.perf_counter()
            result = evaluate(backend, splits["validation"], prepared.pad_token_id, config.micro_batch_size)
            evals.append(dict(step=step, epoch=epoch, samples_seen=samples, val_loss=result.loss,  # noqa: B023
                              val_accuracy=result.accuracy))
            eval_seconds_between += time.perf_counter() - started

        epoch_start = time.perf_counter()
        stats = backend.train_epoch(groups, batch_for, epoch, config.grad_clip, optimizer_steps, samples_seen,
                                    on_step=on_step, after_step=after_step)
        _sync(device)
        train_seconds = time.perf_counter() - epoch_start - eval_seconds_between

        eval_start = time.perf_counter()
        val = evaluate(backend, splits["validation"], prepared.pad_token_id, config.micro_batch_size)
        test = evaluate(backend, splits["test"], prepared.pad_token_id, config.micro_batch_size)
        val_loss, val_accuracy, test_loss, test_accuracy = val.loss, val.accuracy, test.loss, test.accuracy
        task = {f"{prefix}_{name}": value for prefix, split, evaluation in (("val", "validation", val), ("test", "test", test))
                for name, value in task_metrics.scores(getattr(prepared.dataset, split).labels, evaluation.predicted,
                                                       prepared.dataset.num_labels, prepared.positive).items()}
        eval_seconds = time.perf_counter() - eval_start + eval_seconds_between

        optimizer_steps += stats.optimizer_steps
        samples_seen += stats.samples
        row = dict(
            epoch=epoch, train_loss=stats.loss, train_accuracy=stats.accuracy,
            val_loss=val_loss, val_accuracy=val_accuracy, test_loss=test_loss, test_accuracy=test_accuracy, **task,
            optimizer_steps=optimizer_steps, samples_seen=samples_seen, skipped_steps=stats.skipped_steps,
            epoch_seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds, eval_seconds=eval_seconds,
            samples_per_second=stats.samples / train_seconds, tokens_per_second=real_tokens / train_seconds,
            padding_fraction=1 - real_tokens / padded_tokens, peak_memory_mb=_peak_memory_mb(device),
            **stats.noise_columns(),
        )
        improved = best is None or _better(row, best)
        # Every epoch's predictions, for paired tests between runs at the epoch a metric chooses (pick-best's
        # McNemar tests and bootstraps); the best epoch's also as the checkpoint's.
        for name, evaluation in (("validation", val), ("test", test)):
            text_split = getattr(prepared.dataset, name)
            store.save_predictions(run_id, name, epoch, text_split.fingerprint, list(text_split.labels),
                                   evaluation.predicted, best=improved)
        if improved:
            best = row
            store.update_run(run_id, best_epoch=epoch)
            if config.checkpoint and backend.is_main:
                checkpoint_path = str(save_checkpoint(backend.unwrapped_model(), checkpoints / str(run_id), epoch,
                                                      prepared.dataset.label_names, config))
                store.update_run(run_id, checkpoint_path=checkpoint_path)
        row["epoch_seconds"] = time.perf_counter() - epoch_start  # includes the checkpoint write
        store.add_steps(run_id, stats.steps)
        store.add_evals(run_id, evals)
        store.add_epoch(run_id, **row)
        if tracker is not None:
            tracker.log_steps(stats.steps)
            tracker.log_epoch(row)
        rows.append(row)
        reporter.epoch_finished(row)
        pause_for_tests(run_id, epoch)
        # The training loss can stay finite while the weights have blown up: a NaN evaluation is divergence too.
        for loss in (val_loss, test_loss):
            if not math.isfinite(loss):
                raise Diverged(optimizer_steps, loss, steps=[])  # this epoch's steps are recorded above
        # After the last epoch there is nothing left to save: a run that got there is FINISHED.
        if race is not None and epoch < prepared.epochs and (decision := race.decide(run_id, epoch)) is not None:
            raise RunPruned(decision, race.metric)
    assert best is not None
    return TrainResult(run_id=run_id, epochs=rows, best_epoch=best["epoch"], checkpoint_path=checkpoint_path)


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


