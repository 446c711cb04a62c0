"""The Hugging Face Accelerate backend, in step with the PyTorch loop.

It is stock Accelerate usage (Accelerator(gradient_accumulation_steps=k), prepare() on the model,
optimizer, scheduler and dataloader, `with accelerator.accumulate(model)`), with three corrections
for what stock Accelerate gets wrong:

1. accelerator.backward() divides every micro-batch loss by k. A ragged group's micro-batches
   need n_micro / n_group instead, so we pass loss * weight * k and the division cancels.
2. The dataloader yields the shared accumulation plan (same order, same groups as the PyTorch
   backend), and is prepared, so that Accelerate syncs at the end of the epoch; an unprepared one
   never flushes the short last group. Every boundary Accelerate picks is checked against the plan.
3. A prepared scheduler steps num_processes times per optimizer step; ours is stepped once per
   optimizer step actually taken (step_scheduler_with_optimizer=False).

Several processes: `accelerate launch --multi_gpu --num_processes N -m accumbench train --backend accelerate ...`
(on a CPU-only machine too: the processes then talk over gloo).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from accumbench.accumulation import OptimizerGroup
from accumbench.backends.base import (
    Backend,
    BackendSetup,
    make_optimizer,
    make_scheduler,
    micro_batch_loss,
    rank_inputs,
)
from accumbench.backends.device import AUTOCAST_DTYPES, BatchFn, group_autocast, outside_autocast


class _PlanBatches:
    """A batch sampler that yields the plan's micro-batches, all ranks' in turn per micro-step.

    Accelerate shards a batch sampler round-robin (batch i goes to rank i % W), which is exactly the
    plan's dealing. It has no batch_size attribute on purpose: Accelerate then accepts batches of
    different lengths instead of padding short ones with samples from the epoch's start."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.groups: Sequence[OptimizerGroup] = ()

    def __iter__(self) -> Iterator[list[tuple[int, float, bool]]]:
        for group in self.groups:
            for step in group.micro_steps:
                for micro in step:
                    # (sample, weight, real): a stand-in sample for an empty micro-batch has real=False.
                    yield [(i, micro.weight, bool(len(micro))) for i in rank_inputs(micro, group)]

    def __len__(self) -> int:
        return sum(len(g.micro_steps) * self.world_size for g in self.groups)


class _Keys(torch.utils.data.Dataset):
    """The sampler's keys are the items; collate turns them into a padded batch."""

    def __getitem__(self, key: Any) -> Any:
        return key

    def __len__(self) -> int:  # only for DataLoader's bookkeeping
        return 0


class AccelerateBackend(Backend):
    name = "accelerate"
    _batch_for: BatchFn  # the epoch's, set by accumulated() before its dataloader collates

    def __init__(self, model: torch.nn.Module, setup: BackendSetup) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

        # Accelerate keeps process-wide singletons; a second run in the same process (tests, sweeps)
        # must not inherit the first one's accumulation steps or precision. The process group stays.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = Accelerator(
            # Without CUDA, cpu=True is what makes a multi-process launch use gloo over the CPU
            # (otherwise each process would quietly train alone).
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=setup.accumulation_steps, mixed_precision=setup.precision,
            step_scheduler_with_optimizer=False,
            # non_blocking: batches come from pinned memory (pin_memory below), so copies overlap compute.
            dataloader_config=DataLoaderConfiguration(even_batches=False, non_blocking=True),
            dynamo_plugin=TorchDynamoPlugin(backend="inductor" if setup.compile else "no",
                                            mode=None if setup.compile_mode == "default" else setup.compile_mode),
        )
        self.autocast_dtype = AUTOCAST_DTYPES.get(setup.precision)  # Accelerate's own, for the group's region
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self._plan = _PlanBatches(self.world_size)
        self.micro_batch_size, self._group_ebs = setup.micro_batch_size, 0
        # Its own generator: iterating a DataLoader draws a worker base seed, by default from torch's global
        # generator, which would shift the dropout masks away from the PyTorch backend's every epoch.
        loader = torch.utils.data.DataLoader(_Keys(), batch_sampler=self._plan, collate_fn=self._collate_keys,
                                             generator=torch.Generator(), pin_memory=self.device.type == "cuda")
        # On the device before the optimizer is made, so that it can pick its fused CUDA kernel.
        model.to(self.device)
        opt = make_optimizer(model, setup.optimizer, setup.lr, setup.weight_decay, setup.betas, setup.eps)
        sched = make_scheduler(opt, setup.scheduler, setup.warmup_ratio, setup.total_steps)
        self._module = model
        self.model, self.optimizer, self.scheduler, self.loader = self.accelerator.prepare(model, opt, sched, loader)

    def unwrapped_model(self) -> torch.nn.Module:
        return self._module

    def _collate_keys(self, keys: list[tuple[int, float, bool]]) -> dict[str, Any]:
        """The dataloader's collate: the epoch's batch_for over the keys' samples, with their weight."""
        batch: dict[str, Any] = dict(self._batch_for([k[0] for k in keys]))
        batch["weight"], batch["real"] = keys[0][1], keys[0][2]
        batch["indices"] = [k[0] for k in keys]
        return batch

    def accumulated(self, groups: Sequence[OptimizerGroup], batch_for: BatchFn
                    ) -> Iterator[tuple[OptimizerGroup, torch.Tensor, torch.Tensor]]:
        # The prepared dataloader collates, in this process (no loader workers), with the epoch's batch_for.
        self._plan.groups, self._batch_for = groups, batch_for
        expected = ((g, m, s == len(g.micro_steps) - 1)
                    for g in groups for s, m in enumerate(g.for_rank(self.rank)))
        loss_sum = correct = None
        device, dtype = self.device.type, self.autocast_dtype
        # The group's autocast region (see group_autocast), left before each step; and on an error.
        with contextlib.ExitStack() as region:
            for batch in self.loader:
                group, micro, at_boundary = next(expected)
                if self.settings_at is not None and group.effective_batch_size != self._group_ebs:
                    self._accumulate_for(group)
                if loss_sum is None:
                    loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
                    correct = torch.zeros((), device=self.device, dtype=torch.long)
                    # Accelerate's own autocast wraps each forward; inside this region its exit keeps the cast cache.
                    region.enter_context(group_autocast(device, dtype))
                if batch["indices"] != list(micro.indices or group.indices[:1]):
                    raise RuntimeError("Accelerate's dataloader reordered the accumulation plan")
                if self.noise_norms is not None:
                    self.noise_norms.rows_used(batch["input_ids"])
                with self.accelerator.accumulate(self.model):
                    loss, n_correct = micro_batch_loss(self.model, batch)
                    # backward() divides by k; multiplying by k leaves the exact weight n_micro / n_group (x W).
                    with outside_autocast(device, dtype):
                        self.accelerator.backward(loss * batch["weight"] * self.accelerator.gradient_accumulation_steps)
                    if self.noise_norms is not None:
                        self.noise_norms.micro_batch_done(len(micro), batch["weight"])
                    if batch["real"]:
                        loss_sum += loss.detach().double() * len(micro)
                        correct += n_correct
                    if self.accelerator.sync_gradients != at_boundary:
                        raise RuntimeError(
                            f"Accelerate synced gradients at micro-step boundary={self.accelerator.sync_gradients}, "
                            f"but the plan says {at_boundary}: refusing to take a wrong step"
                        )
                    if at_boundary:
                        region.close()
                        yield group, loss_sum, correct
                        loss_sum = correct = None

    def _accumulate_for(self, group: OptimizerGroup) -> None:
        """--ebs-schedule: Accelerate syncs every k-th micro-step, counting from its own step counter, so at a
        change of EBS both move: k to the new groups' micro-steps, and the count back to the boundary's 0."""
        k = -(-group.effective_batch_size // (self.micro_batch_size * self.world_size)) if self.micro_batch_size \
            else self.accelerator.gradient_accumulation_steps
        if k != self.accelerator.gradient_accumulation_steps:
            self.accelerator.gradient_accumulation_steps = k
            self.accelerator.step = 0
        self._group_ebs = group.effective_batch_size

    def grad_scale(self) -> float:
        scaler = self.accelerator.scaler  # fp16 only
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0

    def optimizer_step(self, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
        # Only reached when sync_gradients is true. clip_grad_norm_ unscales fp16 gradients first.
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), grad_clip or float("inf"))
        self.optimizer.step()
        skipped = self.optimizer.step_was_skipped
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, skipped

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.world_size > 1 else tensor

    def close(self) -> None:
        super().close()
        # As in TorchBackend.close: free the DDP wrapper while the process group is alive.
        self.accelerator.wait_for_everyone()
        self.model = self._module
        self.accelerator.free_memory()
        gc.collect()
        self.accelerator.end_training()
