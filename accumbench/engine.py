"""One training run, end to end: validate and load everything, then (and only then) record a
RUNNING run, train epoch by epoch, evaluate, time, measure memory, and close the run with a
terminal status whatever happens.

    setup (data, model: every UserError happens here, before the store is written)
      -> store.create_run (RUNNING; a sweep claims the run in the store instead, see sweep.py)
      -> recorded_run + fit: for each epoch: plan -> backend.train_epoch -> evaluate val/test -> store.add_steps, add_epoch
         (a heartbeat thread beats meanwhile)
      -> FINISHED | FAILED (exception; "diverged at step S") | KILLED (Ctrl-C, SIGTERM)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import platform
import re
import resource
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from accumbench import accumulation, data
from accumbench.backends.base import (
    AUTOCAST_DTYPES, Backend, Diverged, micro_batch_loss, require_supported_precision, resolve_precision,
    to_device, training_device, use_fast_cuda_math,
)
from accumbench.config import RunConfig
from accumbench.errors import StoreUnavailable, Terminated, UserError, first_line
from accumbench.model import TextClassifier, load_tokenizer_and_encoder
from accumbench.noise_scale import measurable
from accumbench.progress import Reporter
from accumbench.store import (
    DIVERGED_PREFIX, FAILED, FINISHED, INTERRUPTED, KILLED, TERMINATED, Store, resolve_db_url, sqlite_path,
)


# A running run says it is alive this often (and at every epoch end), so a sweep can tell a
# crashed worker's run from a slow one. Sweeps shorten it to a quarter of their --stale-after.
HEARTBEAT_SECONDS = 15.0


@dataclass
class TrainResult:
    run_id: int
    epochs: list[dict[str, Any]]
    best_epoch: int
    checkpoint_path: Optional[str]


class RunDiverged(Exception):
    """The run's loss became NaN or infinite. It is recorded as FAILED with 'diverged at step S'."""

    def __init__(self, run_id: Optional[int], step: int, loss: float) -> None:
        super().__init__(f"run {run_id} diverged at step {step} (loss {loss})")
        self.run_id, self.step, self.loss = run_id, step, loss


class RunLost(Exception):
    """Another worker marked this run KILLED (its heartbeat looked stale), so its result is not ours
    to record: the cell has been handed to someone else."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} was marked KILLED by another worker (stale heartbeat); its result is discarded")
        self.run_id = run_id


@dataclass
class Prepared:
    """Everything a run needs, loaded and validated before anything is written."""

    config: RunConfig  # as the run trains it: --micro-batch-size auto and --precision auto resolved
    dataset: data.TextDataset
    splits: dict[str, data.EncodedSplit]
    model: TextClassifier
    pad_token_id: int
    epochs: int  # planned, from the budget: config.epochs, or enough for config.train_steps
    total_steps: int  # optimizer steps of the whole run
    tokenize_seconds: float  # spent tokenizing, or reading the tokens back from the cache
    tokens_cached: bool  # whether the tokenized splits came from a cache (disk, or a sweep's memory)


def world_size() -> int:
    """Processes in this run: set by torchrun and accelerate launch, 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare(config: RunConfig, cache: Optional[dict[Any, Any]] = None) -> Prepared:
    """Load data and model and tokenize once. Raises UserError on bad input; writes nothing.

    `cache` (a sweep passes one dict for all its cells) keeps loaded datasets and tokenized splits,
    so cells that share them load and tokenize once; tokenized splits are also cached on disk
    (data.TokenCache), so a second run of the same data and tokenizer skips tokenization. The
    model is always loaded afresh."""
    cache = {} if cache is None else cache
    config.accumulation_steps_for(world_size())  # checks EBS = world x micro x k before any loading
    if config.auto_micro_batch and world_size() > 1:
        raise UserError("--micro-batch-size auto needs a single process (each would probe on its own); "
                        "pass a number with torchrun or accelerate launch")
    require_supported_precision(config.precision)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision))
    use_fast_cuda_math()  # before the auto micro-batch probe, which must run the training's own math
    dataset = load_dataset(config, cache)
    tokenizer, encoder = load_tokenizer_and_encoder(config.model)
    token_key = (data_key(config), config.model, config.max_length)
    started, tokens_cached = time.perf_counter(), True
    if token_key not in cache:
        cache[token_key], tokens_cached = data.TokenCache().load_or_tokenize(dataset, tokenizer, config.max_length)
    splits = cache[token_key]
    tokenize_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)  # the head's init depends on the seed only
    model = TextClassifier(encoder, dataset.num_labels, config.dropout, config.pooling)
    if config.auto_micro_batch:
        config = config.with_micro_batch_size(_probe_micro_batch_size(model, config))
    epochs, total_steps = accumulation.training_length(
        len(splits["train"]), config.effective_batch_size, config.drop_last, config.epochs,
        config.train_steps if config.budget == "steps" else None)
    return Prepared(config, dataset, splits, model, tokenizer.pad_token_id, epochs, total_steps, tokenize_seconds,
                    tokens_cached)


def _probe_micro_batch_size(model: TextClassifier, config: RunConfig) -> int:
    """--micro-batch-size auto, probed on the device the run will train on."""
    from accumbench.micro_batch import auto_micro_batch_size

    device = training_device()
    model.to(device)
    return auto_micro_batch_size(model, device, config.effective_batch_size, world_size(), config.max_length,
                                 AUTOCAST_DTYPES.get(config.precision), lambda m, batch: micro_batch_loss(m, batch)[0])


def data_key(config: RunConfig) -> tuple[Any, ...]:
    """Everything that decides which examples a run gets: runs with equal keys share a loaded dataset."""
    return (config.dataset, config.split_seed, config.text_column, config.label_column,
            config.max_train_samples, config.max_eval_samples)


def load_dataset(config: RunConfig, cache: dict[Any, Any]) -> data.TextDataset:
    """The run's dataset, loaded once per `cache`, and checked against the batch plan (UserError)."""
    key = data_key(config)
    if key not in cache:
        cache[key] = data.load_text_dataset(
            config.dataset, seed=config.split_seed, text_column=config.text_column,
            label_column=config.label_column, max_train_samples=config.max_train_samples,
            max_eval_samples=config.max_eval_samples,
        )
    dataset = cache[key]
    if config.drop_last and len(dataset.train) < config.effective_batch_size:
        raise UserError(
            f"--drop-last with {len(dataset.train)} training samples and effective batch size "
            f"{config.effective_batch_size} leaves no optimizer step; lower --effective-batch-size or use --keep-last"
        )
    return dataset


def make_backend(prepared: Prepared) -> Backend:
    """The training loop the config names, set up for this process (and its process group)."""
    config = prepared.config
    common = dict(optimizer=config.optimizer, lr=config.scaled_lr, weight_decay=config.weight_decay,
                  scheduler=config.scheduler, warmup_ratio=config.warmup_ratio,
                  total_steps=prepared.total_steps, precision=config.precision, compile=config.compile)
    if config.backend == "accelerate":
        from accumbench.backends.accelerate_loop import AccelerateBackend

        train_split = prepared.splits["train"]
        backend: Backend = AccelerateBackend(
            prepared.model, **common, accumulation_steps=config.accumulation_steps_for(world_size()),
            collate=lambda indices: data.collate(train_split, indices, prepared.pad_token_id))
    else:
        from accumbench.backends.torch_loop import TorchBackend

        backend = TorchBackend(prepared.model, **common)
    if config.noise_scale and measurable(config.effective_batch_size, config.micro_batch_size):
        backend.measure_noise_scale(config.noise_scale_decay, config.noise_scale_every)
    # Both backends start training from the same generator state, whatever their setup drew from it,
    # so that they draw the same dropout masks (the parity test with dropout checks this).
    torch.manual_seed(config.seed + 1)
    return backend


def run_columns(config: RunConfig) -> dict[str, Any]:
    """The run's columns that follow from its configuration alone (known before anything loads)."""
    return dict(
        config_json=config.to_json(), config_hash=config.config_hash, backend=config.backend,
        model=config.model, dataset=config.dataset, seed=config.seed,
        lr=config.scaled_lr, base_lr=config.lr, lr_scaling=config.lr_scaling, base_batch_size=config.base_batch_size,
        budget=config.budget, train_steps=config.train_steps,
        effective_batch_size=config.effective_batch_size,
        # --micro-batch-size auto is probed once the model is loaded: 0 until loaded_columns fills it in.
        micro_batch_size=0 if config.auto_micro_batch else config.micro_batch_size,
        accumulation_steps=config.accumulation_steps or 0, epochs=config.epochs, max_length=config.max_length,
        optimizer=config.optimizer, scheduler=config.scheduler, precision=config.precision,
    )


def loaded_columns(prepared: Prepared, backend: Backend) -> dict[str, Any]:
    """The run's columns known once data, model and backend are set up."""
    return dict(
        micro_batch_size=prepared.config.micro_batch_size, precision=prepared.config.precision,
        accumulation_steps=prepared.config.accumulation_steps_for(backend.world_size), world_size=backend.world_size,
        tokenize_seconds=prepared.tokenize_seconds, tokens_cached=prepared.tokens_cached,
        epochs=prepared.epochs, train_steps=prepared.total_steps,
        torch_version=_version("torch"), transformers_version=_version("transformers"),
        accelerate_version=_version("accelerate"), device=_device_name(backend.device),
        num_train_samples=len(prepared.splits["train"]), num_val_samples=len(prepared.splits["validation"]),
        num_test_samples=len(prepared.splits["test"]), num_labels=prepared.dataset.num_labels,
    )


class _NoStore:
    """What ranks other than the main one write to: nothing. Only the main process records."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def train(config: RunConfig, db: Optional[str] = None, reporter: Optional[Reporter] = None,
          cache: Optional[dict[Any, Any]] = None) -> TrainResult:
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
            return _fit(None, prepared, backend, _NoStore(), Reporter(), checkpoint_root(url, config))
        except Diverged as exc:
            raise RunDiverged(None, exc.step, exc.loss) from None
        finally:
            backend.close()
    store = Store.open(url)
    try:
        with _sigterm_as_exception():
            run_id = store.create_run(**{**run_columns(config), **loaded_columns(prepared, backend)})
            with recorded_run(store, run_id) as heartbeat:
                result = fit(run_id, prepared, backend, store, reporter, checkpoint_root(url, config), heartbeat)
            return result
    finally:
        store.close()
        backend.close()


@contextmanager
def recorded_run(store: Store, run_id: int, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> Iterator[Heartbeat]:
    """Keep a RUNNING run's heartbeat fresh while the block trains it, then close the run whatever
    happened: FINISHED; FAILED on an error, or 'diverged at step S' (raised as RunDiverged); KILLED on
    Ctrl-C or SIGTERM (re-raised). If another worker gave the run up for dead meanwhile, RunLost is
    raised and the run is left as that worker recorded it."""
    try:
        with Heartbeat(store, run_id, heartbeat_seconds) as heartbeat:
            yield heartbeat
    except RunLost:
        raise  # not ours to close: another worker has marked it KILLED
    except Diverged as exc:
        store.add_steps(run_id, exc.steps)  # the steps up to and including the one that diverged
        store.finish_run(run_id, FAILED, f"{DIVERGED_PREFIX} {exc.step}")
        raise RunDiverged(run_id, exc.step, exc.loss) from None
    except KeyboardInterrupt:
        _close(store, run_id, KILLED, INTERRUPTED)
        raise
    except Terminated:
        _close(store, run_id, KILLED, TERMINATED)
        raise
    except BaseException as exc:
        _close(store, run_id, FAILED, describe_failure(exc))
        raise
    if not store.finish_run(run_id, FINISHED):
        raise RunLost(run_id)


def _close(store: Store, run_id: int, status: str, error: str) -> None:
    """Record how a run ended, on the way out of an error. If even that write fails (the disk is full, the
    server is gone), say so and let the original error go on: the run stays RUNNING, its heartbeat stops,
    and a sweep worker marks it KILLED once --stale-after passes."""
    try:
        store.finish_run(run_id, status, error)
        return
    except Exception:  # noqa: BLE001 - whatever stops this write, the first error is the one to raise
        pass
    try:
        store.make_room()  # a full disk: the space the store kept in reserve for this write
        store.finish_run(run_id, status, error)
    except Exception as exc:  # noqa: BLE001
        print(f"accumbench: could not record run {run_id} as {status} ({first_line(exc)}); it stays RUNNING "
              "until its heartbeat goes stale and another worker marks it KILLED", file=sys.stderr)


def fit(run_id: int, prepared: Prepared, backend: Backend, store: Store, reporter: Optional[Reporter],
        checkpoints: Path, heartbeat: Optional[Heartbeat] = None) -> TrainResult:
    """Train a recorded run epoch by epoch, recording as it goes (inside recorded_run)."""
    reporter = reporter or Reporter()
    sizes = {name: len(split) for name, split in prepared.splits.items()}
    reporter.run_started(run_id, prepared.config, sizes, _device_name(backend.device), backend.world_size,
                         epochs=prepared.epochs, total_steps=prepared.total_steps)
    return _fit(run_id, prepared, backend, store, reporter, checkpoints, heartbeat)


class Heartbeat:
    """A daemon thread that sets the run's heartbeat_at every `seconds` while it trains.

    A killed process (SIGKILL, OOM, a lost machine) stops beating, which is how a sweep tells its
    run from a live one. If the store says the run is no longer RUNNING, another worker has
    given it up for dead: `lost` is set and the training loop stops at its next step."""

    def __init__(self, store: Store, run_id: int, seconds: float) -> None:
        self.store, self.run_id, self.seconds = store, run_id, seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                alive = self.store.heartbeat(self.run_id)
            except Exception:  # e.g. the database busy for longer than busy_timeout: try again next beat
                continue
            if not alive:
                self.lost = True
                return

    def raise_if_lost(self) -> None:
        if self.lost:
            raise RunLost(self.run_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _fit(run_id: Optional[int], prepared: Prepared, backend: Backend, store: Any, reporter: Reporter,
         checkpoints: Path, heartbeat: Optional[Heartbeat] = None) -> TrainResult:
    config = prepared.config
    train_split = prepared.splits["train"]
    batch_for = lambda indices: data.collate(train_split, indices, prepared.pad_token_id)  # noqa: E731

    def on_step(samples_done: int, loss: float) -> None:
        if heartbeat is not None:
            heartbeat.raise_if_lost()
        reporter.step(samples_done, loss)

    tracker = None
    if config.log_with:  # after the backend: Accelerate's trackers need its process state
        from accumbench.tracking import RunTracker

        tracker = RunTracker(config.log_with, f"run-{run_id}", checkpoints.parent / "tracking", config.to_dict())
    try:
        return _epochs(run_id, prepared, backend, store, reporter, checkpoints, on_step, batch_for, tracker)
    finally:
        if tracker is not None:
            tracker.finish()


def _epochs(run_id: Optional[int], prepared: Prepared, backend: Backend, store: Any, reporter: Reporter,
            checkpoints: Path, on_step: Any, batch_for: Any, tracker: Any) -> TrainResult:
    config, splits = prepared.config, prepared.splits
    train_split, device = splits["train"], backend.device
    rows: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    checkpoint_path: Optional[str] = None
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
        real_tokens, padded_tokens = data.token_counts((mb.indices for g in groups for mb in g.micro_batches),
                                                       train_split.lengths)
        reporter.epoch_started(epoch, sum(len(g) for g in groups))
        evals: list[dict[str, Any]] = []
        eval_seconds_between = 0.0

        def after_step(step: int, samples: int, epoch: int = epoch) -> None:
            nonlocal eval_seconds_between
            # --eval-every: validation between epochs' ends, for steps-to-target (the epoch's last
            # step is evaluated with the epoch, below). Its time is not training time.
            if config.eval_every is None or step % config.eval_every or step == optimizer_steps + len(groups):
                return
            _sync(device)  # the training queued so far is training time, not evaluation time
            started = time.perf_counter()
            result = evaluate(backend, splits["validation"], prepared.pad_token_id, config.micro_batch_size)
            evals.append(dict(step=step, epoch=epoch, samples_seen=samples, val_loss=result.loss,
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
        eval_seconds = time.perf_counter() - eval_start + eval_seconds_between

        optimizer_steps += stats.optimizer_steps
        samples_seen += stats.samples
        row = dict(
            epoch=epoch, train_loss=stats.loss, train_accuracy=stats.accuracy,
            val_loss=val_loss, val_accuracy=val_accuracy, test_loss=test_loss, test_accuracy=test_accuracy,
            optimizer_steps=optimizer_steps, samples_seen=samples_seen, skipped_steps=stats.skipped_steps,
            epoch_seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds, eval_seconds=eval_seconds,
            samples_per_second=stats.samples / train_seconds, tokens_per_second=real_tokens / train_seconds,
            padding_fraction=1 - real_tokens / padded_tokens, peak_memory_mb=_peak_memory_mb(device),
            **stats.noise_columns(),
        )
        if best is None or _better(row, best):
            best = row
            store.update_run(run_id, best_epoch=epoch)
            # The best epoch's predictions, for paired tests between runs (pick-best's McNemar tests).
            for name, evaluation in (("validation", val), ("test", test)):
                text_split = getattr(prepared.dataset, name)
                store.save_predictions(run_id, name, epoch, text_split.fingerprint, list(text_split.labels),
                                       evaluation.predicted)
            if config.checkpoint and backend.is_main:
                checkpoint_path = str(_save_checkpoint(backend.unwrapped_model(), prepared, checkpoints / str(run_id), epoch))
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
    assert best is not None
    return TrainResult(run_id=run_id, epochs=rows, best_epoch=best["epoch"], checkpoint_path=checkpoint_path)


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float
    predicted: list[int]  # the predicted class of every example, in split order


@torch.inference_mode()
def evaluate(backend: Backend, split: data.EncodedSplit, pad_token_id: int, batch_size: int) -> Evaluation:
    """Loss, accuracy and predictions over the split. Samples are batched by length only to cut
    padding; with several processes each rank takes every W-th batch and the sums are all-reduced
    (each rank fills in its own examples' predictions, zeros elsewhere, so their sum is all of them)."""
    model, device = backend.unwrapped_model(), backend.device
    model.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    predicted = torch.zeros(len(split), device=device, dtype=torch.float64)  # float64: exact for class ids
    for indices in batches[backend.rank :: backend.world_size]:
        batch = to_device(data.collate(split, indices, pad_token_id), device)
        logits = model(batch["input_ids"], batch["attention_mask"]).double()
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


# Test-only: with this set to a file path, a run writes "<run id> <epoch>" there after recording each epoch
# and waits until the file is removed. Tests that signal or kill a run synchronise on that file (a
# recorded state) instead of racing a tiny model that may finish before the signal lands.
PAUSE_FILE_ENV = "ACCUMBENCH_TEST_PAUSE_FILE"


def pause_for_tests(run_id: int, epoch: int) -> None:
    path = os.environ.get(PAUSE_FILE_ENV)
    if not path:
        return
    Path(path).write_text(f"{run_id} {epoch}")
    while Path(path).exists():
        time.sleep(0.02)  # Ctrl-C and SIGTERM land here as anywhere else in training


def checkpoint_root(url: str, config: Optional[RunConfig] = None) -> Path:
    """--checkpoint-dir, else checkpoints/ beside the SQLite file (./checkpoints for the default ./runs.db),
    else (a database server) in the cwd."""
    if config is not None and config.checkpoint_dir:
        return Path(config.checkpoint_dir).expanduser()
    path = sqlite_path(url)
    return (path.parent if path else Path.cwd()) / "checkpoints"


def require_writable_checkpoints(url: str, config: RunConfig) -> None:
    """A run that keeps checkpoints checks, before anything trains, that it can write them: a read-only
    or missing-and-uncreatable directory is one error line, not a run that fails after its first epoch."""
    if not config.checkpoint:
        return
    root = checkpoint_root(url, config)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=root, prefix=".accumbench-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"checkpoint directory {root} is not writable ({exc.strerror or exc}); make it writable, "
                        "pass --checkpoint-dir DIR, or --no-checkpoint") from None


def describe_failure(exc: BaseException) -> str:
    """A failed run's error, in one line that says what happened: 'disk full while writing ...' for a
    full disk (or a file-size limit), else the exception's type and first line."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f" while writing {exc.filename}" if exc.filename else ""
        return f"disk full{where}: {exc.strerror}"
    return f"{type(exc).__name__}: {first_line(exc)}"


def _save_checkpoint(model: TextClassifier, prepared: Prepared, directory: Path, epoch: int) -> Path:
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    meta = {"epoch": epoch, "label_names": prepared.dataset.label_names, "config": prepared.config.to_dict()}
    # Written aside, then renamed: a reader never sees half a checkpoint, and a write that fails (a full
    # disk) removes its partial file, so the space is back for the database to record the failure.
    for name, write in (("model.safetensors", lambda path: save_model(model, path)),
                        ("accumbench.json", lambda path: Path(path).write_text(json.dumps(meta, indent=2)))):
        partial = directory / f".{name}.partial"
        try:
            write(str(partial))
            os.replace(partial, directory / name)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            # safetensors reports an I/O failure as its own error, "... (os error 28)": as an OSError with
            # that errno and the file, the run's error can say "disk full while writing ...". Any other
            # error is raised as it is.
            found = re.search(r"os error (\d+)", str(exc)) if not isinstance(exc, OSError) else None
            if isinstance(exc, Exception) and found:
                raise OSError(int(found.group(1)), first_line(exc), str(directory / name)) from exc
            raise
    return directory


class _sigterm_as_exception:
    """While training, turn SIGTERM into Terminated so the run is closed as KILLED, not left RUNNING."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated this epoch. CPU: the process's peak resident set size (KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
