"""What both backends share: the epoch loop over the accumulation plan, the micro-batch loss, and
the step log. A backend only says how micro-batches are backpropagated (`accumulated`), how one
optimizer step is taken (`optimizer_step`) and how ranks add up numbers (`all_reduce_sum`).

Keeping the loop here, once, is what keeps the two backends in step: they differ only where
PyTorch and Accelerate really differ.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from accumbench.accumulation import MicroBatch, OptimizerGroup, length_batches
from accumbench.backends.device import BatchFn, to_device
from accumbench.backends.grad_norms import MicroBatchGradNorms
from accumbench.config import BACKENDS
from accumbench.noise_scale import DEFAULT_DECAY, GroupNorms, NoiseScaleEMA
from accumbench.optim_scaling import OptimizerSettings


@dataclass
class EpochStats:
    loss_sum: float  # sum over samples of the per-sample training loss (all ranks)
    correct: int
    samples: int
    optimizer_steps: int
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped (inf/NaN gradients)
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step, for the store
    noise: NoiseScaleEMA | None = None  # the epoch's gradient noise scale, when measured
    epoch: int = 1
    steps_before: int = 0  # optimizer steps and samples of the run's earlier epochs: the step rows count on
    samples_before: int = 0

    def noise_columns(self) -> dict[str, Any]:
        """The epoch row's noise-scale columns: B_simple and its EMA components at the epoch's end."""
        if self.noise is None or not self.noise.steps:
            return {}
        return dict(noise_scale=self.noise.noise_scale, noise_trace=self.noise.trace,
                    noise_grad_sq=self.noise.grad_sq, noise_steps=self.noise.steps)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.samples

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


class Diverged(Exception):
    """The training loss became NaN or infinite: the run is over, and more steps cannot help."""

    def __init__(self, step: int, loss: float, steps: list[dict[str, Any]]) -> None:
        super().__init__(f"diverged at step {step}")
        self.step, self.loss = step, loss
        self.steps = steps  # this epoch's step rows, up to and including the diverged one


def segment_ids(batch: dict[str, Any]) -> dict[str, Any]:
    """{"token_type_ids": ...} for a pair batch of a model with segment embeddings (data.collate adds them),
    else nothing: single texts call the model exactly as before pairs existed."""
    return {"token_type_ids": batch["token_type_ids"]} if batch.get("token_type_ids") is not None else {}


def micro_batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the micro-batch, number correct). The loss is computed in at least
    fp32 even when the forward ran in bf16/fp16, and in fp64 when the model is fp64 (the exactness tests)."""
    logits = model(batch["input_ids"], batch["attention_mask"], **segment_ids(batch))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    loss = F.cross_entropy(logits, batch["labels"])
    return loss, (logits.detach().argmax(dim=-1) == batch["labels"]).sum()


def weighted_rows_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A static-shape micro-batch's loss (static_step.pad_batch): sum_i w_i CE_i over its rows, where a real
    row of n weighs weight/n and a padding row 0, so it equals micro_batch_loss's mean times the weight.
    Also the real rows' CE sum and correct count, on the device (floats)."""
    logits = model(batch["input_ids"], batch["attention_mask"], **segment_ids(batch))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    per_row = F.cross_entropy(logits, batch["labels"], reduction="none")
    real = batch["real"].to(per_row.dtype)
    loss = (per_row * batch["row_weights"].to(per_row.dtype)).sum()
    correct = ((logits.detach().argmax(dim=-1) == batch["labels"]).to(real.dtype) * real).sum()
    return loss, (per_row.detach() * real).sum(), correct


def logits_by_length(model: torch.nn.Module, lengths: Sequence[int], batch_size: int, batch_for: BatchFn,
                     device: torch.device, rank: int = 0, world_size: int = 1
                     ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]:
    """(indices, batch, float64 logits) over a split whose examples have `lengths`, for evaluation and
    prediction: batched by length only to cut padding (padding is masked, so no logit changes); with several
    processes each rank takes every W-th batch."""
    for indices in length_batches(lengths, batch_size)[rank::world_size]:
        batch = to_device(batch_for(indices), device)
        yield indices, batch, model(batch["input_ids"], batch["attention_mask"], **segment_ids(batch)).double()


def unshared_token_embedding(model: torch.nn.Module) -> torch.nn.Parameter | None:
    """The encoder's token-embedding matrix, if nothing else in the model uses it (not tied)."""
    encoder = getattr(model, "encoder", None)
    embeddings = encoder.get_input_embeddings() if hasattr(encoder, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if not isinstance(embeddings, torch.nn.Embedding) or weight is None:
        return None
    uses = sum(p is weight for _, p in model.named_parameters(remove_duplicate=False))
    return weight if uses == 1 else None


def rank_inputs(micro: MicroBatch, group: OptimizerGroup) -> tuple[int, ...]:
    """The samples a rank feeds forward: its micro-batch, or for an empty one (weight 0) a stand-in
    sample, so that the rank still joins the gradient all-reduce at the group's boundary."""
    return micro.indices or group.indices[:1]


def make_optimizer(model: torch.nn.Module, optimizer: str, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam or AdamW with the run's (scaled) settings; the defaults are torch's own."""
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    # On CUDA the fused kernel updates every parameter in a few launches instead of several per tensor.
    fused = all(p.is_cuda for p in model.parameters())
    return cls(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, scheduler: str, warmup_ratio: float, total_steps: int) -> Any:
    """transformers' schedules, as HF Trainer users know them, counted in optimizer steps."""
    from transformers import get_scheduler

    warmup_steps = math.ceil(warmup_ratio * total_steps)
    name = "constant_with_warmup" if scheduler == "constant" else scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


@dataclass(frozen=True)
class BackendSetup:
    """What every backend is built from, Class(model, setup): the optimizer with the run's (scaled) settings,
    its schedule in optimizer steps, the precision, torch.compile or not."""

    optimizer: str
    lr: float
    weight_decay: float
    scheduler: str
    warmup_ratio: float
    total_steps: int
    betas: tuple[float, float] = (0.9, 0.999)  # torch's defaults
    eps: float = 1e-8
    precision: str = "no"
    compile: bool = False
    compile_mode: str = "default"
    # Static shapes (static_step.py): micro-batches padded to micro_batch_size rows and lengths in steps of 32 up to
    # max_length, for --compile; cuda_graphs records them as CUDA graphs (one process). The torch loop reads
    # both; Accelerate compiles through its own dynamo plugin and runs eagerly.
    static_shapes: bool = False
    cuda_graphs: bool = False
    max_length: int = 0
    # Micro-steps per optimizer step (world x micro x k = EBS): Accelerate's gradient_accumulation_steps. The
    # torch loop reads each group's micro-batches from the plan instead.
    accumulation_steps: int = 1
    micro_batch_size: int = 0  # per process; with --ebs-schedule Accelerate's k follows EBS / (world x micro)


def build_backend(name: str, model: torch.nn.Module, setup: BackendSetup) -> Backend:
    """The backend config.BACKENDS names, set up for this process; only its own module is imported."""
    module, _, class_name = BACKENDS[name].loop.partition(":")
    backend: Backend = getattr(importlib.import_module(module), class_name)(model, setup)
    return backend


class Backend:
    """One training process's view of a run, built as Class(model, BackendSetup): TorchBackend,
    AccelerateBackend (config.BACKENDS names them)."""

    name: str
    rank: int = 0
    world_size: int = 1
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch's LambdaLR (transformers' schedules), or Accelerate's wrapper of it
    autocast_dtype: torch.dtype | None = None  # bf16 or fp16 autocast (device.AUTOCAST_DTYPES), None in fp32
    # Set by measure_noise_scale(): the micro-batch gradient norms, and how to average and log them.
    noise_norms: MicroBatchGradNorms | None = None
    noise_decay: float = DEFAULT_DECAY
    noise_every: int = 1
    # --ebs-schedule: the optimizer settings at an EBS (the run's rules), and the EBS the optimizer is set for.
    settings_at: Callable[[int], OptimizerSettings] | None = None
    settings_ebs: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def measure_noise_scale(self, decay: float = DEFAULT_DECAY, every: int = 1) -> None:
        """Measure the gradient noise scale from the micro-batches (see noise_scale.py): each
        micro-batch's gradient norm is read in its backward pass, and B_simple is averaged over each
        epoch with EMA `decay`; steps rows carry it every `every` steps."""
        model = self.unwrapped_model()
        self.noise_norms = MicroBatchGradNorms(model.parameters(), self.device,
                                               token_embedding=unshared_token_embedding(model))
        self.noise_decay, self.noise_every = decay, every

    def grad_scale(self) -> float:
        """The fp16 loss scale the group's backward passes ran at (1 without loss scaling)."""
        return 1.0

    def unwrapped_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def accumulated(self, groups: Sequence[OptimizerGroup], batch_for: BatchFn
                    ) -> Iterator[tuple[OptimizerGroup, torch.Tensor, torch.Tensor]]:
        """Backpropagate every micro-batch of each group; yield (group, loss sum, correct) for this
        rank at each group boundary, when .grad holds the whole group's (all-reduced) gradient."""
        raise NotImplementedError

    def optimizer_step(self, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
        """Unscale, measure (and clip) the gradient norm, step, zero the gradients.
        Returns (gradient norm before clipping, still on the device; whether the step was skipped)."""
        raise NotImplementedError

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def close(self) -> None:
        if self.noise_norms is not None:
            self.noise_norms.close()

    def train_epoch(self, groups: Sequence[OptimizerGroup], batch_for: BatchFn, epoch: int, grad_clip: float | None,
                    steps_before: int, samples_before: int,
                    on_step: Callable[[int, float], None] = lambda samples_done, loss: None,
                    after_step: Callable[[int, int], None] = lambda step, samples_seen: None) -> EpochStats:
        """Train one epoch's groups, one optimizer step per group. on_step(samples done this epoch, loss) is
        called for each step once its numbers are read (one step late); after_step(step, samples seen) right
        after each optimizer step, with the model as that step left it (for evaluations between epochs' ends)."""
        self.unwrapped_model().train()
        stats = EpochStats(loss_sum=0.0, correct=0, samples=0, optimizer_steps=0, epoch=epoch,
                           steps_before=steps_before, samples_before=samples_before,
                           noise=NoiseScaleEMA(self.noise_decay) if self.noise_norms is not None else None)
        # A step's numbers are read only after the next step's work is queued: reading them at once
        # would make the host wait for the GPU to drain, and the GPU then idles while the host
        # collates and launches the next micro-batch. (Divergence is therefore seen one step late.)
        pending = None
        taken = taken_samples = 0
        # accumulated() backpropagates a group's micro-batches and stops at its boundary, .grad whole.
        for group, loss_sum, correct in self.accumulated(groups, batch_for):
            if self.settings_at is not None and group.effective_batch_size != self.settings_ebs:
                self.use_settings(self.settings_at(group.effective_batch_size), group.effective_batch_size)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            numbers, counts = self._step_numbers(loss_sum, correct)  # before the step: see _step_numbers
            grad_norm, skipped = self.optimizer_step(grad_clip)
            # One small all-reduce per step: the group's loss and accuracy (and micro-batch norms) over every rank;
            # the gradient norm (already the same on every rank) joins them after it, to be read with them.
            totals = self.all_reduce_sum(torch.stack(numbers))
            totals = torch.cat([totals, grad_norm.detach().reshape(1).to(totals.dtype)])
            taken, taken_samples = taken + 1, taken_samples + len(group)
            after_step(steps_before + taken, samples_before + taken_samples)
            if pending is not None:
                self._record_step(stats, *pending, on_step)
            pending = (group, lr, totals, counts, skipped)
        if pending is not None:
            self._record_step(stats, *pending, on_step)
        return stats

    def follow_schedule(self, settings_at: Callable[[int], OptimizerSettings], start: int) -> None:
        """--ebs-schedule: before the first step of each new EBS, set the optimizer to `settings_at(EBS)`."""
        self.settings_at, self.settings_ebs = settings_at, start

    def use_settings(self, settings: OptimizerSettings, effective_batch_size: int) -> None:
        """The optimizer's lr, betas, eps and weight decay for a new EBS. The lr schedule's base rate moves with
        the lr, so a warmup or decay goes on from where it was, at the new peak; Adam's moments are kept."""
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)  # Accelerate wraps the torch scheduler
        ratio = settings.lr / scheduler.base_lrs[0]
        scheduler.base_lrs = [base * ratio for base in scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group.update(lr=group["lr"] * ratio, betas=(settings.beta1, settings.beta2), eps=settings.eps,
                         weight_decay=settings.weight_decay)
            if "initial_lr" in group:  # the schedule's record of its base, as a resumed scheduler reads it
                group["initial_lr"] *= ratio
        self.settings_ebs = effective_batch_size

    def _step_numbers(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
        """A group's numbers: on the device, loss sum, correct and (when measuring) the micro-batch norms' sum;
        on the host, the micro-batch counts the norms need. Taken before the optimizer step: its unscaling leaves
        .grad, not the hooks' sums, divided by the scale. The counts go to the device only to be summed over
        ranks: a copy from pageable host memory would make the host wait."""
        numbers, counts = [loss_sum, correct.to(loss_sum.dtype)], []
        if self.noise_norms is not None:
            micro_sq_sum, inverse_size_sum, micro_batches = self.noise_norms.take()
            numbers.append(micro_sq_sum / self.grad_scale() ** 2)
            counts = [inverse_size_sum, float(micro_batches)]
            if self.world_size > 1:
                numbers += list(torch.tensor(counts, dtype=loss_sum.dtype, device=loss_sum.device))
                counts = []
        return numbers, counts

    def _record_step(self, stats: EpochStats, group: OptimizerGroup, lr: float, totals: torch.Tensor,
                     counts: list[float], skipped: bool, on_step: Callable[[int, float], None]) -> None:
        """Add one step to the epoch's numbers and step rows; Diverged when its loss is NaN or infinite."""
        # The one read from the device per optimizer step, a step late: loss, correct, (when measuring) the
        # micro-batch norms' sum and the gradient norm, all in one tensor.
        *numbers, grad_norm = totals.tolist()
        loss_sum, correct, *micro = numbers + counts
        stats.loss_sum += loss_sum
        stats.correct += round(correct)
        stats.samples += len(group)
        stats.optimizer_steps += 1
        stats.skipped_steps += int(skipped)
        row = dict(step=stats.steps_before + stats.optimizer_steps, epoch=stats.epoch,
                   samples_seen=stats.samples_before + stats.samples, loss=loss_sum / len(group),
                   grad_norm=grad_norm, lr=lr, effective_batch_size=group.effective_batch_size)
        if micro and not skipped:
            row.update(self._noise_update(stats.noise, GroupNorms(
                micro_sq_sum=micro[0], inverse_size_sum=micro[1], micro_batches=round(micro[2]),
                group_size=len(group), group_sq=row["grad_norm"] ** 2), row["step"]))
        stats.steps.append(row)
        if not math.isfinite(loss_sum):  # every rank sees the same all-reduced loss, so all stop together
            raise Diverged(stats.steps[-1]["step"], loss_sum / len(group), stats.steps)
        on_step(stats.samples, loss_sum / len(group))

    def _noise_update(self, ema: NoiseScaleEMA, norms: GroupNorms, step: int) -> dict[str, Any]:
        """Feed one group's norms to the epoch's EMAs; the step row's noise columns (every noise_every steps)."""
        if not norms.usable:
            return {}
        grad_sq, trace = norms.estimates()
        ema.update(grad_sq, trace)
        if step % self.noise_every:
            return {}
        return dict(micro_grad_sq=norms.micro_sq_sum / norms.micro_batches, noise_grad_sq=grad_sq,
                    noise_trace=trace, noise_scale=ema.noise_scale)
