"""Where and in what precision a backend computes: its device, the copies of batches onto it, and autocast.
Both backends and the runtime (the micro-batch probe, check-ga, predict) take these from here."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

BatchFn = Callable[[Sequence[int]], dict[str, torch.Tensor]]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def group_autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """One autocast region around a whole optimizer group's micro-batches. Autocast caches the low-precision
    copy of each fp32 weight until its outermost region ends, so a group of k micro-batches casts every
    weight once per optimizer step instead of k times, and recasts after the step has changed them. The
    casts are the same, so every loss and gradient is bit-identical to a region per micro-batch.
    Backward runs inside `outside_autocast`, as it ran outside the region before. fp32: no region at all."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def outside_autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast off inside a group's region (for the backward): a nested region keeps the outer one's
    cast cache, where leaving the outer region would clear it (torch.autocast counts nesting)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def require_supported_precision(precision: str) -> None:
    """fp16 needs loss scaling, which Accelerate only does on GPUs; refuse it on CPU in both backends."""
    if precision == "fp16" and not torch.cuda.is_available():
        from accumbench.errors import UserError

        raise UserError("--precision fp16 needs a CUDA GPU (loss scaling); on CPU use --precision bf16 or no")


def local_device() -> torch.device:
    """This process's device: its local GPU (LOCAL_RANK, set by torchrun and accelerate launch) or the CPU. The
    torch loop trains on it, the micro-batch probe and check-ga run on it, predict classifies on it. (The
    Accelerate loop trains where its Accelerator puts it: the same device.)"""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a collated batch to the device. On CUDA through pinned memory, so the copy is
    asynchronous and overlaps the GPU's work instead of stalling the host."""
    if device.type != "cuda":
        return batch
    return {k: v if v is None else v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def prefetched(inputs: Sequence[Sequence[int]], batch_for: BatchFn, device: torch.device
               ) -> Iterator[dict[str, torch.Tensor]]:
    """Each micro-batch's device batch, with the next one's collation and copy already under way. On a GPU the
    copy runs on a side stream while the current micro-batch computes, and the compute stream waits only for
    the copy of the batch it is about to use (an event, not a host wait). On the CPU: each batch in turn."""
    if device.type != "cuda":
        yield from (batch_for(indices) for indices in inputs)
        return
    compute, copier = torch.cuda.current_stream(device), _copy_stream(device)

    def start(indices: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event]:
        host = batch_for(indices)
        with torch.cuda.stream(copier):
            batch = {k: v if v is None else v.pin_memory().to(device, non_blocking=True) for k, v in host.items()}
            ready = torch.cuda.Event()
            ready.record(copier)
        return batch, ready

    pending = start(inputs[0]) if inputs else None
    for i in range(len(inputs)):
        batch, ready = pending  # type: ignore[misc]
        if i + 1 < len(inputs):
            pending = start(inputs[i + 1])  # the next copy is queued before this batch's work
        compute.wait_event(ready)
        for tensor in batch.values():
            if tensor is not None:  # made on the copy stream, used on the compute stream: keep it until then
                tensor.record_stream(compute)
        yield batch


@functools.cache
def _copy_stream(device: torch.device) -> Any:
    """One side stream per GPU for host-to-device copies, made once."""
    return torch.cuda.Stream(device)


def resolve_precision(precision: str) -> str:
    """--precision auto: bf16 autocast on a GPU that supports it (Ampere and later), else fp32 ("no").
    On CPU bf16 autocast is slower than fp32 on most processors, so auto stays fp32 there."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def use_fast_cuda_math() -> None:
    """TF32 for the fp32 matmuls left outside autocast (the head, the optimizer's norm): Ampere and
    later run them on tensor cores at ~8x the fp32 rate, with a 10-bit mantissa, as HF's --tf32 does."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
