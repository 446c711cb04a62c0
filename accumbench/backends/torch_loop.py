"""The plain PyTorch backend. For each optimizer group of the plan: backward every micro-batch's
weighted loss (under DDP's no_sync() except at the group's last micro-step), then unscale, clip
once, take exactly one optimizer step and one scheduler step.

Several processes: `torchrun --nproc_per_node N -m accumbench train --backend torch ...`.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from accumbench.accumulation import OptimizerGroup
from accumbench.backends.base import (
    Backend,
    BackendSetup,
    make_optimizer,
    make_scheduler,
    micro_batch_loss,
    rank_inputs,
    weighted_rows_loss,
)
from accumbench.backends.device import (
    AUTOCAST_DTYPES,
    BatchFn,
    group_autocast,
    local_device,
    outside_autocast,
    prefetched,
    to_device,
)
from accumbench.backends.static_step import CudaGraphs, EagerGraphs, StepGraphs, compiled, pad_batch, static_length
from accumbench.optim_scaling import OptimizerSettings


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: torch.nn.Module, setup: BackendSetup) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = local_device()
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self._module = model.to(self.device)
        # torch.compile wraps the module; parameters, state dict and evaluation stay the plain module's.
        self.model: torch.nn.Module = compiled(self._module, setup) if setup.compile else self._module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = make_optimizer(self._module, setup.optimizer, setup.lr, setup.weight_decay, setup.betas,
                                        setup.eps)
        self.scheduler = make_scheduler(self.optimizer, setup.scheduler, setup.warmup_ratio, setup.total_steps)
        self.autocast_dtype = AUTOCAST_DTYPES.get(setup.precision)
        # fp16 needs loss scaling; with enabled=False the scaler is a no-op pass-through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=setup.precision == "fp16")
        # Static shapes for --compile and CUDA graphs (static_step.py); graphs only where resolve_cuda_graphs allows.
        self.static_shapes, self.max_length = setup.static_shapes or setup.cuda_graphs, setup.max_length
        self.micro_batch_size = setup.micro_batch_size
        self.step_graphs: StepGraphs | None = None
        if setup.cuda_graphs:  # on the CPU (the tests), the eager stand-in for a graph
            recorder = CudaGraphs() if self.device.type == "cuda" else EagerGraphs()
            self.step_graphs = StepGraphs(recorder, [p for p in self._module.parameters() if p.requires_grad])
        self._stepped = False  # the optimizer step is recorded once Adam's state exists

    def unwrapped_model(self) -> torch.nn.Module:
        return self._module

    def accumulated(self, groups: Sequence[OptimizerGroup], batch_for: BatchFn
                    ) -> Iterator[tuple[OptimizerGroup, torch.Tensor, torch.Tensor]]:
        for group in groups:
            yield (group, *self.accumulate(group, batch_for))

    def accumulate(self, group: OptimizerGroup, batch_for: BatchFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave the gradient of the group's mean loss in .grad; return this rank's (loss sum, correct)."""
        if self.static_shapes:
            return self._accumulate_static(group, batch_for)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        micro_batches = group.for_rank(self.rank)
        device, dtype = self.device.type, self.autocast_dtype
        batches = prefetched([rank_inputs(micro, group) for micro in micro_batches], batch_for, self.device)
        with group_autocast(device, dtype):  # weights cast once per group: see group_autocast
            for i, (micro, batch) in enumerate(zip(micro_batches, batches)):
                if self.noise_norms is not None:
                    self.noise_norms.rows_used(batch["input_ids"])
                with self._ddp_sync(at_boundary=i == len(micro_batches) - 1):
                    loss, n_correct = micro_batch_loss(self.model, batch)
                    # weight = world_size * n_micro / n_group (0 for a stand-in): see accumulation.py.
                    with outside_autocast(device, dtype):
                        self.scaler.scale(loss * micro.weight).backward()
                if self.noise_norms is not None:
                    self.noise_norms.micro_batch_done(len(micro), micro.weight)
                if len(micro):
                    loss_sum += loss.detach().double() * len(micro)
                    correct += n_correct
        return loss_sum, correct

    def _accumulate_static(self, group: OptimizerGroup, batch_for: BatchFn) -> tuple[torch.Tensor, torch.Tensor]:
        """accumulate() at static shapes (static_step.py): each micro-batch padded, weighted by rows, and replayed
        from its shape's CUDA graph when graphs are on."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        micro_batches = group.for_rank(self.rank)
        rows = self.micro_batch_size or max(len(m) for m in micro_batches)
        # Graphs cast their own weights: a cast cached across captures would leave one graph reading another's.
        region = group_autocast(self.device.type, self.autocast_dtype) if self.step_graphs is None else contextlib.nullcontext()
        with region:
            for i, micro in enumerate(micro_batches):
                collated = batch_for(rank_inputs(micro, group))
                length = static_length(collated["input_ids"].shape[1], self.max_length or collated["input_ids"].shape[1])
                batch = pad_batch(collated, rows, length, micro.weight, len(micro))
                if self.noise_norms is not None:
                    self.noise_norms.rows_used(batch["input_ids"])
                if self.step_graphs is not None:
                    numbers = self.step_graphs.micro_step(batch, self.device, self._forward_backward)
                else:
                    with self._ddp_sync(at_boundary=i == len(micro_batches) - 1):
                        numbers = self._forward_backward(to_device(batch, self.device))
                if self.noise_norms is not None:
                    self.noise_norms.count(len(micro))
                loss_sum += numbers[0].double()
                correct += numbers[1].double()
        return loss_sum, correct

    def _ddp_sync(self, at_boundary: bool) -> contextlib.AbstractContextManager[object]:
        """DDP all-reduces on every backward unless told not to: only a group's last micro-step syncs."""
        return contextlib.nullcontext() if at_boundary or self.world_size == 1 else self.model.no_sync()

    def _forward_backward(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One static micro-batch's forward and backward, what a CUDA graph records: (loss sum, correct)."""
        device, dtype = self.device.type, self.autocast_dtype
        # Inside the group's region (eager) this nested one keeps its cast cache; alone (a graph) it is the region.
        with group_autocast(device, dtype):
            loss, loss_sum, correct = weighted_rows_loss(self.model, batch)
            with outside_autocast(device, dtype):
                self.scaler.scale(loss).backward()
        if self.noise_norms is not None:
            self.noise_norms.add_weighted(batch["weight"])
        return [loss_sum, correct]

    def grad_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler.is_enabled() else 1.0

    def optimizer_step(self, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
        if self.step_graphs is not None and self._stepped:  # bf16: no loss scale, no skipped steps
            grad_norm = self.step_graphs.optimizer_step(self.optimizer, lambda: self._clip_step_zero(grad_clip))
            self.scheduler.step()
            return grad_norm, False
        self._stepped = True
        self.scaler.unscale_(self.optimizer)  # clip and measure true gradients, not scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(self._module.parameters(), grad_clip or float("inf"))
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skips the step when fp16 gradients hold inf/NaN
        self.scaler.update()
        skipped = scale_before is not None and self.scaler.get_scale() < scale_before
        if not skipped:
            self.scheduler.step()  # schedules count optimizer steps actually taken
        # Graphs keep .grad as the same tensors from step to step (StepGraphs.static_grads).
        self.optimizer.zero_grad(set_to_none=self.step_graphs is None)
        return grad_norm, skipped

    def _clip_step_zero(self, grad_clip: float | None) -> torch.Tensor:
        """The optimizer step a CUDA graph records: clip (or only measure), Adam, .grad zeroed in place."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self._module.parameters(), grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return grad_norm

    def use_settings(self, settings: OptimizerSettings, effective_batch_size: int) -> None:
        super().use_settings(settings, effective_batch_size)
        if self.step_graphs is not None:
            self.step_graphs.settings_changed()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        super().close()
        if self.world_size > 1 and dist.is_initialized():
            # Free DDP's reducer while its process group is still alive: freed after
            # destroy_process_group(), gloo's destructor waits forever on its worker threads.
            self.model = self._module
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
