"""The gradient-accumulation plan: the one place that decides which samples form each optimizer
step and how much each micro-batch's loss counts.

The plan is plain data, computed once per epoch, and every backend iterates the same plan:

    epoch order (seeded shuffle, independent of the micro-batch size and the number of processes)
      -> optimizer groups of EBS samples (the last one may be short)
        -> (group_by_length) the group's samples sorted longest first
        -> micro-batches of at most micro_batch_size samples, each with weight n_micro / n_group
          -> dealt round-robin to the processes: micro-step s of rank r is micro-batch s * W + r

Why the weight: each micro-batch loss is a *mean* over its n_micro samples. Summing
(n_micro / n_group) * mean_loss_micro over a group gives exactly the mean loss over the n_group
samples, so the accumulated gradient is the full-batch gradient, also for a ragged last group.
The common 1/k rule (Accelerate, nanoGPT) is only right when every micro-batch is full: a group
of 50 split 16/16/16/2 would get 4 * (1/4) weights summing to 1 but over-weight the 2-sample
micro-batch 8x relative to its share.

With W processes, DDP averages the ranks' gradients (divides their sum by W), so each weight is
multiplied by W: the sum over all ranks and micro-steps is again the group's mean loss. A rank
that has no samples left in a ragged group's last micro-step gets an empty micro-batch (weight 0):
it must still take part in the gradient all-reduce, or the other ranks would wait forever.

Why sort inside a group: each micro-batch is padded to its own longest sample, and random
micro-batches of short, varied texts (SST-2) are mostly padding. Sorting the group by length first
puts similar lengths together, which cuts the padding (62% -> 11% on SST-2 at micro-batch 16 in
groups of 256) without changing which samples form the group, so the step's gradient is the same.
Unlike HF's group_by_length, which regroups the whole epoch, the groups stay the random ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from accumbench.ebs_schedule import EbsSchedule


@dataclass(frozen=True)
class MicroBatch:
    indices: tuple[int, ...]
    weight: float  # n_micro / n_group: multiply this micro-batch's mean loss by it before backward

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class OptimizerGroup:
    """The samples of one optimizer step: micro_steps[s][r] is rank r's micro-batch at micro-step s."""

    micro_steps: tuple[tuple[MicroBatch, ...], ...]
    # The EBS in force for this step (its schedule stage's); a ragged last group has fewer samples (len).
    effective_batch_size: int = 0

    @property
    def micro_batches(self) -> tuple[MicroBatch, ...]:
        """Every non-empty micro-batch, in plan order (all ranks)."""
        return tuple(mb for step in self.micro_steps for mb in step if len(mb))

    def for_rank(self, rank: int) -> tuple[MicroBatch, ...]:
        """This rank's micro-batches, one per micro-step; the same count on every rank."""
        return tuple(step[rank] for step in self.micro_steps)

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


def training_length(num_samples: int, effective_batch_size: int, drop_last: bool, epochs: int,
                    train_steps: int | None = None, schedule: EbsSchedule | None = None) -> tuple[int, int]:
    """(epochs, optimizer steps) of a whole run.

    The epochs budget runs `epochs` full epochs. The steps budget (train_steps) runs exactly that
    many optimizer steps at every EBS, so a larger EBS sees more epochs, the last one cut short:
    e.g. 1000 samples at EBS 256 is 4 steps an epoch, and 10 steps is 3 epochs of 4 + 4 + 2.
    An explicit --ebs-schedule counts each epoch's groups; auto's steps are not known in advance, and
    the count at its starting EBS is the most it can take.
    """
    if schedule is not None and not schedule.auto:
        steps = 0
        for epoch in range(1, epochs + 1):
            steps += len(scheduled_sizes(num_samples, schedule, epoch, steps, drop_last))
        return epochs, steps
    per_epoch = groups_per_epoch(num_samples, effective_batch_size, drop_last)
    if train_steps is None:
        return epochs, epochs * per_epoch
    return math.ceil(train_steps / per_epoch), train_steps


def cut_group(indices: list[int] | tuple[int, ...], micro_batch_size: int, world_size: int = 1,
              effective_batch_size: int | None = None) -> OptimizerGroup:
    """Cut one optimizer group into micro-batches weighted by their share of the group, and deal
    them round-robin to `world_size` ranks, padding the last micro-step with empty micro-batches.
    `effective_batch_size`: the EBS in force (default: the group's own size)."""
    n_group = len(indices)
    chunks = [tuple(indices[start : start + micro_batch_size]) for start in range(0, n_group, micro_batch_size)]
    micro = [MicroBatch(chunk, weight=world_size * len(chunk) / n_group) for chunk in chunks]
    n_steps = math.ceil(len(micro) / world_size)
    micro += [MicroBatch((), 0.0)] * (n_steps * world_size - len(micro))
    return OptimizerGroup(tuple(tuple(micro[s * world_size : (s + 1) * world_size]) for s in range(n_steps)),
                          effective_batch_size or n_group)


def cut_group_naively(indices: list[int] | tuple[int, ...], micro_batch_size: int, accumulation_steps: int) -> OptimizerGroup:
    """The 1/k rule of Accelerate and most hand-written loops, kept only to show what it gets wrong."""
    group = cut_group(indices, micro_batch_size)
    return OptimizerGroup(tuple((MicroBatch(mb.indices, 1 / accumulation_steps),) for mb in group.micro_batches))


def plan_epoch(
    num_samples: int,
    effective_batch_size: int,
    micro_batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    world_size: int = 1,
    lengths: Sequence[int] | None = None,
    schedule: EbsSchedule | None = None,
    steps_before: int = 0,
) -> list[OptimizerGroup]:
    """Every optimizer group of one (1-based) epoch, in training order. With `lengths` (token
    counts per sample), each group's samples are sorted longest first before they are cut.

    With `schedule` (--ebs-schedule), each group takes the EBS in force where it starts (`steps_before`:
    optimizer steps of the earlier epochs), so a change falls on a group boundary; `effective_batch_size`
    is then unused. Groups are cut from the same epoch order either way."""
    sizes = ([effective_batch_size] * groups_per_epoch(num_samples, effective_batch_size, drop_last) if schedule is None
             else scheduled_sizes(num_samples, schedule, epoch, steps_before, drop_last))
    return cut_groups(epoch_order(num_samples, seed, epoch), sizes, micro_batch_size, world_size, lengths)


def cut_groups(order: Sequence[int], sizes: Sequence[int], micro_batch_size: int, world_size: int = 1,
               lengths: Sequence[int] | None = None) -> list[OptimizerGroup]:
    """`order` cut into consecutive optimizer groups of `sizes` (the EBS in force for each; the last group may run
    short), each sorted longest first when `lengths` are given, then cut into weighted micro-batches: an epoch's
    plan, or a branch's (runtime/branch.py)."""
    groups, start = [], 0
    for size in sizes:
        group = list(order[start : start + size])
        if lengths is not None:
            # Longest first: the first micro-batch is the largest, so a too-large one fails at once.
            # sorted() is stable, so ties keep the shuffled order and the plan stays deterministic.
            group.sort(key=lambda i: -lengths[i])
        groups.append(cut_group(group, micro_batch_size, world_size, size))
        start += size
    return groups


def scheduled_sizes(num_samples: int, schedule: EbsSchedule, epoch: int, steps_before: int,
                    drop_last: bool = False) -> list[int]:
    """The EBS of each group of a (1-based) epoch under `schedule`: each the size in force where the group
    starts, e.g. 100 samples under 16@0,64@1.5 in epoch 2: 16, 16, 16, 16 (to sample 64: half the epoch),
    then 64 (a ragged 36 samples at the end, or dropped with drop_last)."""
    sizes: list[int] = []
    start = 0
    while start < num_samples:
        size = schedule.ebs_at(epoch - 1 + start / num_samples, steps_before + len(sizes))
        if drop_last and num_samples - start < size:
            break
        sizes.append(size)
        start += size
    return sizes


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Example indices in batches of like length, for evaluation and prediction (no gradient, so no plan):
    less padding, and the same predictions, since padding is masked."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
