"""The two backends side by side on the real MiniLM, and 2 processes against 1.

1. Same config (fixed length 128, EBS 32 = 2 x 16, fp32), torch and accelerate interleaved
   A B A B, each one epoch of --samples: samples/s and the ratio accelerate/torch.
2. Wall time of the same run (tiny workload, --backend torch and accelerate) as 1 process and as
   2 processes on this machine's cores (gloo), launched the way users launch them.

Numbers only, no assertions:  python bench/backends.py [--samples 96]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _long_texts(path: Path, n: int) -> None:
    words = "the film was long and the plot kept turning around itself while the cast tried hard ".split()
    rows = [f'"{" ".join(words[(i + j) % len(words)] for j in range(200))}",{i % 2}' for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("bench/results/backends.json"))
    args = parser.parse_args()

    from accumbench.config import RunConfig
    from accumbench.runtime.engine import train

    results: dict = {"side_by_side": {}, "processes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.csv"
        _long_texts(data, args.samples * 2)
        rates: dict[str, list[float]] = {"torch": [], "accelerate": []}
        for backend in ("torch", "accelerate", "torch", "accelerate"):
            config = RunConfig(model="minilm", dataset=str(data), backend=backend, epochs=1, effective_batch_size=32,
                               micro_batch_size=16, max_train_samples=args.samples, max_eval_samples=8,
                               checkpoint=False)
            rate = train(config, db=str(Path(tmp) / "bench.db")).epochs[0]["samples_per_second"]
            rates[backend].append(rate)
            print(f"MiniLM, len 128, EBS 32 = 2 x 16, {backend:>10}: {rate:.2f} samples/s", flush=True)
        results["side_by_side"] = {b: {"samples_per_second": r, "median": statistics.median(r)} for b, r in rates.items()}
        ratio = statistics.median(rates["accelerate"]) / statistics.median(rates["torch"])
        results["side_by_side"]["accelerate_over_torch"] = ratio
        print(f"accelerate / torch: {ratio:.3f}")

        # 1 vs 2 processes: whole commands, start-up included, as a user would time them.
        tiny = ["--model", "minilm", "--dataset", str(data), "--max-train-samples", str(args.samples),
                "--max-eval-samples", "8", "--epochs", "1", "--effective-batch-size", "32", "--micro-batch-size", "8",
                "--max-length", "128", "--no-checkpoint", "--db", str(Path(tmp) / "procs.db")]
        env = {**os.environ}
        for backend in ("torch", "accelerate"):
            one = _timed([sys.executable, "-m", "accumbench", "train", *tiny, "--backend", backend], env)
            if backend == "torch":
                launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port()]
            else:
                launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", _port()]
            two = _timed([*launch, "-m", "accumbench", "train", *tiny, "--backend", backend],
                         {**env, "OMP_NUM_THREADS": "1"})
            results["processes"][backend] = {"one_process_s": one, "two_processes_s": two}
            print(f"{backend:>10}: 1 process {one:.1f}s, 2 processes {two:.1f}s (whole command, {args.samples} samples)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
