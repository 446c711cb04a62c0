"""Training speed and memory of accumbench's PyTorch backend on the real MiniLM, at fixed length 128.

Every sample is a long text truncated to exactly 128 tokens, so samples/s converts directly
to FLOP/s, compared with this machine's fp32 matmul rate. Runs EBS 32 as 2 x 16 (accumulation) and as 1 x 32, each for one epoch, and reports
samples/s, an estimated GFLOP/s and the peak RSS. Nothing here is asserted: the numbers are for
the issue note and for comparing machines.

    python bench/minilm_speed.py [--samples 96] [--out bench/results/minilm_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def training_flops_per_sample(config, length: int) -> float:
    """~6 x (matmul params) x tokens for forward + backward, plus attention's L^2 terms."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    matmul_params = layers * (4 * h * h + 2 * h * inter)
    attention = layers * 4 * length * length * h  # QK^T and AV, forward
    return 6 * matmul_params * length + 3 * attention


def matmul_ceiling_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate with torch's threads: the ceiling training is compared to."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96, help="training samples per measured epoch")
    parser.add_argument("--out", type=Path, default=Path("bench/results/minilm_speed.json"))
    args = parser.parse_args()

    import torch

    from accumbench.config import RunConfig
    from accumbench.engine import train
    from accumbench.model import load_tokenizer_and_encoder

    ceiling = matmul_ceiling_gflops()
    print(f"fp32 matmul ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    _, encoder = load_tokenizer_and_encoder("minilm")
    flops = training_flops_per_sample(encoder.config, 128)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.csv"
        words = "the film was long and the plot kept turning around itself while the cast tried hard ".split()
        rows = [f'"{" ".join(words[(i + j) % len(words)] for j in range(200))}",{i % 2}' for i in range(args.samples * 2)]
        data.write_text("text,label\n" + "\n".join(rows) + "\n")
        # 8:1:1 split of 2x samples, then cut the train split to exactly --samples.
        for micro in (16, 32, 16, 32):  # interleaved, so drift in machine speed hits both equally
            config = RunConfig(model="minilm", dataset=str(data), epochs=1, effective_batch_size=32,
                               micro_batch_size=micro, max_train_samples=args.samples, max_eval_samples=8,
                               checkpoint=False)
            row = train(config, db=str(Path(tmp) / "bench.db")).epochs[0]
            results.append({"micro_batch_size": micro, "accumulation_steps": 32 // micro,
                            "samples_per_second": row["samples_per_second"],
                            "gflops_per_second": row["samples_per_second"] * flops / 1e9,
                            "fraction_of_matmul_ceiling": row["samples_per_second"] * flops / 1e9 / ceiling,
                            "peak_rss_mb": row["peak_memory_mb"]})
            print(f"EBS 32 = {32 // micro} x {micro}: {row['samples_per_second']:.2f} samples/s, "
                  f"{row['samples_per_second'] * flops / 1e9:.1f} GFLOP/s, peak RSS {row['peak_memory_mb']:.0f} MB",
                  flush=True)

    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "model": "all-MiniLM-L6-v2 (22.7M params)", "max_length": 128,
        "gflop_per_training_sample": flops / 1e9, "matmul_ceiling_gflops": ceiling, "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
