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
    AUTOCAST_DTYPES,
    Backend,
    BackendSetup,
    BatchFn,
    group_autocast,
    local_device,
    make_optimizer,
    make_scheduler,
    micro_batch_loss,
    outside_autocast,
    prefetched,
    rank_inputs,
)


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
        self.model: torch.nn.Module = torch.compile(self._module) if setup.compile else self._module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = make_optimizer(self._module, setup.optimizer, setup.lr, setup.weight_decay, setup.betas,
                                        setup.eps)
        self.scheduler = make_scheduler(self.optimizer, setup.scheduler, setup.warmup_ratio, setup.total_steps)
        self.autocast_dtype = AUTOCAST_DTYPES.get(setup.precision)
        # fp16 needs loss scaling; with enabled=False the scaler is a no-op pass-through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=setup.precision == "fp16")

    def unwrapped_model(self) -> torch.nn.Module:
        return self._module

    def accumulated(self, groups: Sequence[OptimizerGroup], batch_for: BatchFn
                    ) -> Iterator[tuple[OptimizerGroup, torch.Tensor, torch.Tensor]]:
        for group in groups:
            yield (group, *self.accumulate(group, batch_for))

    def accumulate(self, group: OptimizerGroup, batch_for: BatchFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave the gradient of the group's mean loss in .grad; return this rank's (loss sum, correct)."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        micro_batches = group.for_rank(self.rank)
        device, dtype = self.device.type, self.autocast_dtype
        batches = prefetched([rank_inputs(micro, group) for micro in micro_batches], batch_for, self.device)
        with group_autocast(device, dtype):  # weights cast once per group: see group_autocast
            for i, (micro, batch) in enumerate(zip(micro_batches, batches)):
                at_boundary = i == len(micro_batches) - 1
                # DDP all-reduces on every backward unless told not to: only the last micro-step syncs.
                sync = contextlib.nullcontext() if at_boundary or self.world_size == 1 else self.model.no_sync()
                if self.noise_norms is not None:
                    self.noise_norms.rows_used(batch["input_ids"])
                with sync:
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

    def grad_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler.is_enabled() else 1.0

    def optimizer_step(self, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
        self.scaler.unscale_(self.optimizer)  # clip and measure true gradients, not scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(self._module.parameters(), grad_clip or float("inf"))
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skips the step when fp16 gradients hold inf/NaN
        self.scaler.update()
        skipped = scale_before is not None and self.scaler.get_scale() < scale_before
        if not skipped:
            self.scheduler.step()  # schedules count optimizer steps actually taken
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, skipped

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
