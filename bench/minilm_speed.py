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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import matmul_rate, training_flops_per_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96, help="training samples per measured epoch")
    parser.add_argument("--out", type=Path, default=Path("bench/results/minilm_speed.json"))
    args = parser.parse_args()

    import torch

    from accumbench.config import RunConfig
    from accumbench.model import load_tokenizer_and_encoder
    from accumbench.runtime.engine import train

    ceiling = matmul_rate("cpu", "float32") / 1e9  # GFLOP/s with torch's threads
    print(f"fp32 matmul ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    _, encoder = load_tokenizer_and_encoder("minilm")
    flops = training_flops_per_sample(encoder, 128)
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
