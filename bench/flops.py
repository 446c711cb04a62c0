"""FLOPs per training sample and the measured matmul rate they are compared with (MFU).

Shared by the benchmarks: minilm_speed.py (CPU, fp32) and gpu_check.py (CUDA, bf16).
"""

from __future__ import annotations

import time


def training_flops_per_sample(encoder, length: int) -> float:
    """Forward + backward FLOPs of one sample of `length` tokens through the encoder's matmuls.

    6 x (weights of every Linear layer) x tokens: 2 per multiply-add forward, twice that backward.
    Plus attention's two L x L products (QK^T and AV), 4 * L^2 * hidden per layer forward, x3 with
    the backward. Embedding lookups, norms and activations are memory-bound and not counted, as in
    the usual MFU convention (PaLM, nanoGPT)."""
    from torch import nn

    # BERT's pooler is a Linear too, but accumbench's classifier drops it (model.TextClassifier).
    linear_weights = sum(m.weight.numel() for name, m in encoder.named_modules()
                         if isinstance(m, nn.Linear) and not name.startswith("pooler"))
    config = encoder.config
    attention = config.num_hidden_layers * 4 * length * length * config.hidden_size
    return 6 * linear_weights * length + 3 * attention


def matmul_rate(device: str = "cpu", dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matmul on this device and dtype: the ceiling that MFU divides by."""
    import torch

    kind = getattr(torch, dtype)
    a = torch.randn(size, size, device=device, dtype=kind)
    b = torch.randn(size, size, device=device, dtype=kind)
    for _ in range(3):  # warm-up: clocks up, kernels chosen
        torch.mm(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)
