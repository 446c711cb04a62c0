"""The gradient-accumulation plan: the one place that decides which samples form each optimizer
step and how much each micro-batch's loss counts.

The plan is plain data, computed once per epoch, and every backend iterates the same plan:

    epoch order (seeded shuffle, independent of the micro-batch size)
      -> optimizer groups of EBS samples (the last one may be short)
        -> micro-batches of at most micro_batch_size samples, each with weight n_micro / n_group

Why the weight: each micro-batch loss is a *mean* over its n_micro samples. Summing
(n_micro / n_group) * mean_loss_micro over a group gives exactly the mean loss over the n_group
samples, so the accumulated gradient is the full-batch gradient, also for a ragged last group.
The common 1/k rule (Accelerate, nanoGPT) is only right when every micro-batch is full: a group
of 50 split 16/16/16/2 would get 4 * (1/4) weights summing to 1 but over-weight the 2-sample
micro-batch 8x relative to its share.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class MicroBatch:
    indices: tuple[int, ...]
    weight: float  # n_micro / n_group: multiply this micro-batch's mean loss by it before backward

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class OptimizerGroup:
    """The samples of one optimizer step, cut into micro-batches."""

    micro_batches: tuple[MicroBatch, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(i for mb in self.micro_batches for i in mb.indices)

    def __len__(self) -> int:
        return sum(len(mb) for mb in self.micro_batches)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The epoch's sample order. It depends on (seed, epoch) only, never on batch sizes, so runs
    at different micro-batch sizes see the same groups. random.Random with an int seed is stable
    across Python versions and platforms."""
    order = list(range(num_samples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def groups_per_epoch(num_samples: int, effective_batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps per epoch, e.g. 1000 samples at EBS 64: 16 (15 full + one of 40), or 15 with drop_last."""
    if drop_last:
        return num_samples // effective_batch_size
    return math.ceil(num_samples / effective_batch_size)


def cut_group(indices: list[int] | tuple[int, ...], micro_batch_size: int) -> OptimizerGroup:
    """Cut one optimizer group into micro-batches weighted by their share of the group."""
    n_group = len(indices)
    micro_batches = tuple(
        MicroBatch(indices=tuple(indices[start : start + micro_batch_size]),
                   weight=min(micro_batch_size, n_group - start) / n_group)
        for start in range(0, n_group, micro_batch_size)
    )
    return OptimizerGroup(micro_batches)


def plan_epoch(
    num_samples: int,
    effective_batch_size: int,
    micro_batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = False,
) -> list[OptimizerGroup]:
    """Every optimizer group of one (1-based) epoch, in training order."""
    order = epoch_order(num_samples, seed, epoch)
    n_groups = groups_per_epoch(num_samples, effective_batch_size, drop_last)
    return [
        cut_group(order[g * effective_batch_size : (g + 1) * effective_batch_size], micro_batch_size)
        for g in range(n_groups)
    ]
