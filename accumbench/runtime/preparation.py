"""Everything a run needs, loaded and validated before anything is written: the data (loaded once per
sweep, tokenized once per tokenizer), the model, the micro-batch size and the training loop, and the
run's columns as the store records them.

    prepare(config) -> Prepared: dataset, tokenized splits, model, planned epochs and steps
    make_backend(prepared) -> the loop config.BACKENDS names (torch, accelerate), over the same accumulation plan
    run_columns / loaded_columns -> what the runs table records before and after loading

Every UserError (bad input) is raised here, before the run store is written.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch

from accumbench import accumulation
from accumbench.backends.base import Backend, BackendSetup, build_backend, micro_batch_loss
from accumbench.backends.device import (
    AUTOCAST_DTYPES,
    local_device,
    require_supported_precision,
    resolve_precision,
    use_fast_cuda_math,
)
from accumbench.backends.static_step import resolve_cuda_graphs
from accumbench.config import RunConfig
from accumbench.data import pipeline, token_cache
from accumbench.errors import UserError
from accumbench.model import TextClassifier, embeds_segments, load_tokenizer_and_encoder
from accumbench.noise_scale import measurable


@dataclass
class Prepared:
    """Everything a run needs, loaded and validated before anything is written."""

    config: RunConfig  # as the run trains it: --micro-batch-size auto and --precision auto resolved
    dataset: pipeline.TextDataset
    splits: dict[str, pipeline.EncodedSplit]
    model: TextClassifier
    pad_token_id: int
    epochs: int  # planned, from the budget: config.epochs, or enough for config.train_steps
    total_steps: int  # optimizer steps of the whole run
    tokenize_seconds: float  # spent tokenizing, or reading the tokens back from the cache
    tokens_cached: bool  # whether the tokenized splits came from a cache (disk, or a sweep's memory)
    positive: int = 1  # the label id whose F1 a two-label task reports (positive_class)


def world_size() -> int:
    """Processes in this run: set by torchrun and accelerate launch, 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare(config: RunConfig, cache: dict[Any, Any] | None = None) -> Prepared:
    """Load data and model and tokenize once. Raises UserError on bad input; writes nothing.

    `cache` (a sweep passes one dict for all its cells) keeps loaded datasets and tokenized splits,
    so cells that share them load and tokenize once; tokenized splits are also cached on disk
    (token_cache.TokenCache), so a second run of the same data and tokenizer skips tokenization. The
    model is always loaded afresh."""
    cache = {} if cache is None else cache
    config.accumulation_steps_for(world_size())  # checks EBS = world x micro x k before any loading
    for size in config.schedule.sizes if config.schedule is not None else ():  # and each stage's (auto doubles)
        dataclasses.replace(config, ebs_schedule=None, effective_batch_size=size).accumulation_steps_for(world_size())
    if config.auto_micro_batch and world_size() > 1:
        raise UserError("--micro-batch-size auto needs a single process (each would probe on its own); "
                        "pass a number with torchrun or accelerate launch")
    require_supported_precision(config.precision)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision))
    config = dataclasses.replace(config, cuda_graphs=resolve_cuda_graphs(config.cuda_graphs, config.precision,
                                                                         config.backend, world_size()))
    use_fast_cuda_math()  # before the auto micro-batch probe, which must run the training's own math
    dataset = load_dataset(config, cache)
    tokenizer, encoder = load_tokenizer_and_encoder(config.model)
    token_key = (data_key(config), config.model, config.max_length)
    started, tokens_cached = time.perf_counter(), True
    if token_key not in cache:
        cache[token_key], tokens_cached = token_cache.TokenCache().load_or_tokenize(dataset, tokenizer, config.max_length,
                                                                             segment_ids=embeds_segments(encoder))
    splits = cache[token_key]
    tokenize_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)  # the head's init depends on the seed only
    model = TextClassifier(encoder, dataset.num_labels, config.dropout, config.pooling)
    if config.auto_micro_batch:
        config = config.with_micro_batch_size(_probe_micro_batch_size(model, config))
    epochs, total_steps = accumulation.training_length(
        len(splits["train"]), config.effective_batch_size, config.drop_last, config.epochs,
        config.train_steps if config.budget == "steps" else None, config.schedule)
    return Prepared(config, dataset, splits, model, tokenizer.pad_token_id, epochs, total_steps, tokenize_seconds,
                    tokens_cached, positive_class(dataset, config))


def _probe_micro_batch_size(model: TextClassifier, config: RunConfig) -> int:
    """--micro-batch-size auto, probed on the device the run will train on."""
    from accumbench.runtime.micro_batch import auto_micro_batch_size

    device = local_device()
    model.to(device)
    return auto_micro_batch_size(model, device, config.effective_batch_size, world_size(), config.max_length,
                                 AUTOCAST_DTYPES.get(config.precision), lambda m, batch: micro_batch_loss(m, batch)[0])


def data_key(config: RunConfig) -> tuple[Any, ...]:
    """Everything that decides which examples a run gets: runs with equal keys share a loaded dataset."""
    return (config.dataset, config.dataset_config, config.split_seed, config.text_column, config.text_pair_column,
            config.label_column, config.max_train_samples, config.max_eval_samples)


def load_dataset(config: RunConfig, cache: dict[Any, Any]) -> pipeline.TextDataset:
    """The run's dataset, loaded once per `cache`, and checked against the batch plan (UserError)."""
    key = data_key(config)
    if key not in cache:
        cache[key] = pipeline.load_text_dataset(
            config.dataset, seed=config.split_seed, text_column=config.text_column,
            label_column=config.label_column, max_train_samples=config.max_train_samples,
            max_eval_samples=config.max_eval_samples, text_pair_column=config.text_pair_column,
            dataset_config=config.dataset_config,
        )
    dataset = cache[key]
    positive_class(dataset, config)  # a --positive-label that is not a label: before anything loads
    if config.drop_last and len(dataset.train) < config.effective_batch_size:
        raise UserError(
            f"--drop-last with {len(dataset.train)} training samples and effective batch size "
            f"{config.effective_batch_size} leaves no optimizer step; lower --effective-batch-size or use --keep-last"
        )
    return dataset


def positive_class(dataset: pipeline.TextDataset, config: RunConfig) -> int:
    """The label id whose F1 a two-label task reports: --positive-label's, else id 1 (the second label in
    sorted order, e.g. 1 of 0/1, 'pos' of neg/pos). UserError for a label the data does not have, or for
    --positive-label on a task of more labels, whose F1 is the macro average over all of them."""
    positive_label = config.positive_label
    if positive_label is None:
        return 1
    names = ", ".join(dataset.label_names)
    if dataset.num_labels != 2:
        raise UserError(f"--positive-label applies to two-label tasks; this dataset has {dataset.num_labels} labels "
                        f"({names}), whose F1 is the macro average: drop --positive-label")
    if str(positive_label) not in dataset.label_names:
        raise UserError(f"--positive-label {positive_label!r} is not a label of dataset '{config.dataset}' "
                        f"(labels: {names}); pass one of those")
    return dataset.label_names.index(str(positive_label))


def make_backend(prepared: Prepared) -> Backend:
    """The training loop the config names (config.BACKENDS), set up for this process (and its process group)."""
    config = prepared.config
    backend = build_backend(config.backend, prepared.model, backend_setup(config, prepared.total_steps))
    schedule = config.schedule
    largest = max(schedule.sizes) if schedule is not None and not schedule.auto else config.effective_batch_size
    if config.noise_scale and measurable(largest, config.micro_batch_size):
        backend.measure_noise_scale(config.noise_scale_decay, config.noise_scale_every)
    if schedule is not None:
        backend.follow_schedule(config.settings_at, config.effective_batch_size)
    # Both backends start training from the same generator state, whatever their setup drew from it,
    # so that they draw the same dropout masks (the parity test with dropout checks this).
    torch.manual_seed(config.seed + 1)
    return backend


def backend_setup(config: RunConfig, total_steps: int) -> BackendSetup:
    """What the run's backend is built from: each batch-size-dependent optimizer setting scaled under its rule."""
    settings = config.optimizer_settings
    return BackendSetup(optimizer=config.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                        betas=(settings.beta1, settings.beta2), eps=settings.eps, scheduler=config.scheduler,
                        warmup_ratio=config.warmup_ratio, total_steps=total_steps, precision=config.precision,
                        compile=config.compile, accumulation_steps=config.accumulation_steps_for(world_size()),
                        micro_batch_size=config.micro_batch_size, compile_mode=config.compile_mode,
                        static_shapes=config.compile, cuda_graphs=config.cuda_graphs == "on",
                        max_length=config.max_length)


def run_columns(config: RunConfig) -> dict[str, Any]:
    """The run's columns that follow from its configuration alone (known before anything loads)."""
    return dict(
        config_json=config.to_json(), config_hash=config.config_hash, backend=config.backend,
        model=config.model, dataset=config.dataset, seed=config.seed,
        lr=config.scaled_lr, base_lr=config.lr, lr_scaling=config.lr_scaling, base_batch_size=config.base_batch_size,
        **scaling_columns(config),
        budget=config.budget, train_steps=config.train_steps,
        effective_batch_size=config.effective_batch_size,
        # --micro-batch-size auto is probed once the model is loaded: 0 until loaded_columns fills it in.
        micro_batch_size=0 if config.auto_micro_batch else config.micro_batch_size,
        accumulation_steps=config.accumulation_steps or 0, epochs=config.epochs, max_length=config.max_length,
        optimizer=config.optimizer, scheduler=config.scheduler, precision=config.precision,
    )


def scaling_columns(config: RunConfig) -> dict[str, Any]:
    """The optimizer settings the run uses after scaling (lr is recorded beside base_lr), and the rules."""
    settings = config.optimizer_settings
    return dict(beta1=settings.beta1, beta2=settings.beta2, eps=settings.eps, weight_decay=settings.weight_decay,
                beta1_scaling=config.beta1_scaling, beta2_scaling=config.beta2_scaling, eps_scaling=config.eps_scaling,
                weight_decay_scaling=config.weight_decay_scaling, scaling_rule=config.rule_bundle)


def loaded_columns(prepared: Prepared, backend: Backend) -> dict[str, Any]:
    """The run's columns known once data, model and backend are set up."""
    return dict(
        micro_batch_size=prepared.config.micro_batch_size, precision=prepared.config.precision,
        cuda_graphs=prepared.config.cuda_graphs,
        accumulation_steps=prepared.config.accumulation_steps_for(backend.world_size), world_size=backend.world_size,
        tokenize_seconds=prepared.tokenize_seconds, tokens_cached=prepared.tokens_cached,
        epochs=prepared.epochs, train_steps=prepared.total_steps,
        torch_version=_version("torch"), transformers_version=_version("transformers"),
        accelerate_version=_version("accelerate"), device=device_name(backend.device),
        num_train_samples=len(prepared.splits["train"]), num_val_samples=len(prepared.splits["validation"]),
        num_test_samples=len(prepared.splits["test"]), num_labels=prepared.dataset.num_labels,
        text_columns=",".join(prepared.dataset.columns), split_source=prepared.dataset.source,
        dropped_rows=prepared.dataset.dropped,
        positive_label=prepared.dataset.label_names[prepared.positive] if prepared.dataset.num_labels == 2 else None,
        positive_class=prepared.positive if prepared.dataset.num_labels == 2 else None,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
