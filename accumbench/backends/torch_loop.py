"""The plain PyTorch backend: for each optimizer group of the plan, backward every micro-batch's
weighted loss, clip once, then take exactly one optimizer step and one scheduler step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from accumbench.accumulation import OptimizerGroup

BatchFn = Callable[[Sequence[int]], dict[str, torch.Tensor]]


@dataclass
class EpochStats:
    loss_sum: float  # sum over samples of the per-sample training loss
    correct: int
    samples: int
    optimizer_steps: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.samples

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


def accumulate_group(model: torch.nn.Module, group: OptimizerGroup, batch_for: BatchFn,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward the group's micro-batches so that .grad holds the gradient of the group's mean loss.

    Returns (sum of per-sample losses, number correct) as tensors, so the GPU is not synced per micro-batch.
    """
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for micro in group.micro_batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch_for(micro.indices).items()}
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])  # mean over this micro-batch
        # weight = n_micro / n_group: the weighted sum over the group is the group's mean loss.
        (loss * micro.weight).backward()
        loss_sum += loss.detach().double() * len(micro)
        correct += (logits.detach().argmax(dim=-1) == batch["labels"]).sum()
    return loss_sum, correct


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    groups: Sequence[OptimizerGroup],
    batch_for: BatchFn,
    device: torch.device,
    grad_clip: Optional[float],
    on_step: Callable[[int, float], None] = lambda samples_done, loss: None,
) -> EpochStats:
    model.train()
    loss_total = torch.zeros((), device=device, dtype=torch.float64)
    correct_total = torch.zeros((), device=device, dtype=torch.long)
    samples = 0
    for group in groups:
        loss_sum, correct = accumulate_group(model, group, batch_for, device)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # once, on the accumulated gradient
        optimizer.step()
        scheduler.step()  # schedulers are sized in optimizer steps
        optimizer.zero_grad(set_to_none=True)
        loss_total += loss_sum
        correct_total += correct
        samples += len(group)
        on_step(samples, loss_sum.item() / len(group))
    return EpochStats(loss_sum=loss_total.item(), correct=int(correct_total.item()), samples=samples,
                      optimizer_steps=len(groups))
