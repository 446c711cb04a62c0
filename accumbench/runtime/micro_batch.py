"""--micro-batch-size auto: the largest power-of-two micro-batch whose forward and backward at the
full --max-length fit in memory. The effective batch size never changes: the accumulation steps
k = EBS / (processes x micro) grow to make up for a smaller micro-batch, as Composer's automatic
micro-batching does. (HF Trainer's auto_find_batch_size halves the per-device batch and so quietly
halves the effective batch too, which would make a batch-size study measure the wrong thing.)

Probing runs largest first and stops at the first size that fits; a size that runs out of memory
costs one failed forward/backward.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from accumbench.errors import UserError

# On CPU a micro-batch beyond 32 trains no faster (the matmuls are already large enough to keep two
# cores busy), while running out of RAM kills the process instead of raising, so probing stops here.
CPU_MICRO_BATCH_CAP = 32
# Room kept free on a GPU beyond the probe's peak: Adam's two moments (allocated only at the first
# step, so the probe never sees them) come on top, plus this share of the card for fragmentation.
GPU_HEADROOM = 0.05


def candidate_sizes(effective_batch_size: int, world_size: int, cap: int | None = None) -> list[int]:
    """Powers of two that divide each process's share of the EBS, largest first, at most `cap`:
    EBS 1024 on 1 process -> 1024, 512, ..., 1; EBS 96 -> 32, 16, 8, 4, 2, 1."""
    per_process = effective_batch_size // world_size
    sizes = [2**p for p in range(per_process.bit_length()) if per_process % 2**p == 0]
    return sorted((s for s in sizes if cap is None or s <= cap), reverse=True)


def find_micro_batch_size(effective_batch_size: int, world_size: int, fits: Callable[[int], bool],
                          cap: int | None = None) -> int:
    """The first (largest) candidate size for which fits(size) is true."""
    for size in candidate_sizes(effective_batch_size, world_size, cap):
        if fits(size):
            return size
    raise UserError(
        "--micro-batch-size auto: not even a micro-batch of 1 at the full --max-length fits in memory; "
        "lower --max-length or use a smaller model"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a CPU allocation failure (a plain RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def memory_probe(model: torch.nn.Module, device: torch.device, max_length: int, autocast_dtype: torch.dtype | None,
                 loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]) -> Callable[[int], bool]:
    """fits(size): one forward and backward of `size` samples of exactly max_length tokens (the
    worst a micro-batch can be) without running out of memory, with room left for the optimizer."""
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)

    def fits(size: int) -> bool:
        batch = {
            "input_ids": torch.ones((size, max_length), dtype=torch.long, device=device),
            "attention_mask": None,  # no padding, as collate sends a batch of equal lengths
            "labels": torch.zeros(size, dtype=torch.long, device=device),
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(model, batch)
            loss.backward()
            ok = True
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if not is_out_of_memory(exc):
                raise
            ok = False  # leave the except block first, so the traceback's tensors can be freed
        del batch
        model.zero_grad(set_to_none=True)
        if ok and device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            # Adam's two fp32 moments per parameter arrive at the first optimizer step.
            ok = torch.cuda.max_memory_allocated(device) + 2 * parameter_bytes <= (1 - GPU_HEADROOM) * total
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return ok

    return fits


def auto_micro_batch_size(model: torch.nn.Module, device: torch.device, effective_batch_size: int, world_size: int,
                          max_length: int, autocast_dtype: torch.dtype | None,
                          loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]) -> int:
    """Resolve --micro-batch-size auto for this model on this device. The model is left where it was."""
    cap = CPU_MICRO_BATCH_CAP if device.type == "cpu" else None
    training = model.training
    model.train()  # dropout on, as in training
    fits = memory_probe(model, device, max_length, autocast_dtype, loss_fn)
    try:
        return find_micro_batch_size(effective_batch_size, world_size, fits, cap)
    finally:
        model.train(training)
