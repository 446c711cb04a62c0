"""The gradient noise scale on real data: what it costs, what it measures, and how far length-sorted
micro-batches move it. Runs on MiniLM (the packaged all-MiniLM-L6-v2) on this machine's CPU.

  overhead   `accumbench train` with --noise-scale and --no-noise-scale, interleaved, each run in its
             own process (peak RSS is per process): samples/s, peak memory and B_simple, on the demo
             data and on SST-2 (../shared/data/sst2, when present)
  hooks      seconds per micro-batch backward with no hooks, with the norm in each hook (the CPU's
             way; the token embedding's used rows only, or all of them) and with one batched norm
             after the backward (CUDA's way)
  partition  at fixed weights, in eval mode (no dropout: the gradient is deterministic), the same
             optimizer groups cut two ways: length-sorted micro-batches (--group-by-length) and
             random ones. Random micro-batches are what the estimator assumes; sorted ones are
             length strata, whose spread between strata counts as noise
  sweep      an SST-2 sweep over EBS at equal optimizer steps with --eval-every, then `accumbench
             pick-best`: the empirical pick beside the noise-scale recommendation and the fitted
             critical batch size

    python bench/noise_scale.py                      # all four (~30 min here)
    python bench/noise_scale.py --only partition     # one of them
    python bench/noise_scale.py --tiny MODEL_DIR     # seconds, on a tiny model: the smoke test

Writes bench/results/noise_scale.json, and the sweep's runs to bench/results/noise_scale_sweep.db.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import accumbench, machine  # noqa: E402


def overhead(model: str, dataset: str, name: str, samples: int, ebs: int, micro: int, max_length: int,
             repeats: int, workdir: Path) -> dict[str, Any]:
    """Median samples/s and peak RSS with the noise scale on and off, runs interleaved (on off on off...)."""
    rows: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for repeat in range(repeats):
        for variant in ("on", "off"):
            db = workdir / f"overhead-{name}-{variant}-{repeat}.db"
            accumbench("train", "--model", model, "--dataset", dataset, "--max-train-samples", str(samples),
                       "--max-eval-samples", "16", "--max-length", str(max_length), "--effective-batch-size",
                       str(ebs), "--micro-batch-size", str(micro), "--epochs", "1", "--data-seed", "42",
                       "--no-checkpoint", "--noise-scale" if variant == "on" else "--no-noise-scale", "--db", str(db),
                       cwd=workdir)
            con = sqlite3.connect(db)
            con.row_factory = sqlite3.Row
            rows[variant].append(dict(con.execute("SELECT * FROM epochs").fetchone()))
            con.close()
    speed = {v: statistics.median(r["samples_per_second"] for r in rows[v]) for v in rows}
    memory = {v: statistics.median(r["peak_memory_mb"] for r in rows[v]) for v in rows}
    noise = [r["noise_scale"] for r in rows["on"]]
    result = dict(dataset=name, samples=samples, ebs=ebs, micro=micro, k=ebs // micro, repeats=repeats,
                  samples_per_second_on=speed["on"], samples_per_second_off=speed["off"],
                  runs_on=[r["samples_per_second"] for r in rows["on"]], runs_off=[r["samples_per_second"] for r in rows["off"]],
                  time_overhead=speed["off"] / speed["on"] - 1,
                  peak_rss_mb_on=memory["on"], peak_rss_mb_off=memory["off"],
                  memory_overhead_mb=memory["on"] - memory["off"],
                  b_simple_epoch_1=noise, all_off_runs_unmeasured=all(r["noise_scale"] is None for r in rows["off"]))
    print(f"overhead {name}: EBS {ebs} = {ebs // micro} x {micro}, {samples} samples, median of {repeats}: "
          f"{speed['on']:.2f} samples/s on, {speed['off']:.2f} off ({result['time_overhead']:+.1%}); "
          f"peak RSS {memory['on']:.0f} MB on, {memory['off']:.0f} MB off; B_simple {', '.join(f'{n:.1f}' for n in noise)}")
    return result


def partition(model: str, dataset: str, name: str, groups: int, ebs: int, micro: int, max_length: int,
              warmup_steps: int) -> dict[str, Any]:
    """The same groups, cut as length strata and at random: B_simple and its components for each."""
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import micro_batch_loss
    from accumbench.backends.grad_norms import MicroBatchGradNorms
    from accumbench.config import RunConfig
    from accumbench.data import pipeline
    from accumbench.noise_scale import GroupNorms
    from accumbench.runtime import preparation

    config = RunConfig(model=model, dataset=dataset, max_train_samples=ebs * (groups + warmup_steps),
                       max_eval_samples=16, max_length=max_length, effective_batch_size=ebs, micro_batch_size=micro,
                       epochs=1, data_seed=42, checkpoint=False, precision="no")
    prepared = preparation.prepare(config)
    split, pad = prepared.splits["train"], prepared.pad_token_id
    model_ = prepared.model
    # A short fine-tune first, so the weights are those of a run under way rather than a random head.
    backend = preparation.make_backend(prepared)
    warm = accumulation.plan_epoch(len(split), ebs, micro, seed=0, epoch=1)[:warmup_steps]
    backend.train_epoch(warm, lambda i: pipeline.collate(split, i, pad), 1, None, 0, 0)
    backend.close()
    model_.eval()  # no dropout: both cuts see one deterministic gradient per sample
    norms = MicroBatchGradNorms(model_.parameters(), torch.device("cpu"))
    sums = {cut: {"grad_sq": 0.0, "trace": 0.0} for cut in ("random", "sorted")}
    differences = []  # per group: tr(Σ) estimate of the sorted cut minus the random cut's (same |G_big|²)
    order = accumulation.epoch_order(len(split), seed=1, epoch=1)
    started = time.perf_counter()
    for g in range(groups):
        members = order[g * ebs : (g + 1) * ebs]
        cuts = {"random": members, "sorted": sorted(members, key=lambda i: -split.lengths[i])}
        for cut, indices in cuts.items():
            group = accumulation.cut_group(indices, micro)
            model_.zero_grad(set_to_none=True)
            for mb in group.micro_batches:
                loss, _ = micro_batch_loss(model_, pipeline.collate(split, mb.indices, pad))
                (loss * mb.weight).backward()
                norms.micro_batch_done(len(mb), mb.weight)
            micro_sq, inverse_sum, k = norms.take()
            group_sq = sum(float(p.grad.double().pow(2).sum()) for p in model_.parameters() if p.grad is not None)
            grad_sq, trace = GroupNorms(float(micro_sq), inverse_sum, k, len(indices), group_sq).estimates()
            sums[cut]["grad_sq"] += grad_sq
            sums[cut]["trace"] += trace
            differences.append(trace if cut == "sorted" else -trace)
    norms.close()
    # Means over the groups (an EMA with decay -> 1): the ratio of the mean components.
    result: dict[str, Any] = dict(dataset=name, groups=groups, ebs=ebs, micro=micro, warmup_steps=warmup_steps,
                                  seconds=time.perf_counter() - started)
    for cut, total in sums.items():
        grad_sq, trace = total["grad_sq"] / groups, total["trace"] / groups
        result[cut] = dict(grad_sq=grad_sq, trace=trace, b_simple=trace / grad_sq if grad_sq > 0 else math.nan)
    result["sorted_over_random"] = result["sorted"]["b_simple"] / result["random"]["b_simple"]
    # The paired difference of the two cuts' tr(Σ) estimates over the same groups, with its standard
    # error: length strata inflate tr(Σ) by the spread between them (and |G|² by the same amount / B).
    paired = [differences[i] + differences[i + 1] for i in range(0, len(differences), 2)]
    result["trace_sorted_minus_random"] = statistics.mean(paired)
    result["trace_difference_se"] = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else math.nan
    print(f"partition {name}: {groups} groups of {ebs} in micro-batches of {micro} after {warmup_steps} steps: "
          f"B_simple random {result['random']['b_simple']:.1f}, length-sorted {result['sorted']['b_simple']:.1f} "
          f"(x{result['sorted_over_random']:.2f}); tr(Σ) {result['random']['trace']:.2f} vs "
          f"{result['sorted']['trace']:.2f} (paired difference {result['trace_sorted_minus_random']:+.2f} ± "
          f"{result['trace_difference_se']:.2f} SE), |G|² {result['random']['grad_sq']:.4f} vs {result['sorted']['grad_sq']:.4f}")
    return result


def hooks(model: str, dataset: str, name: str, micro: int, batches: int, repeats: int) -> dict[str, Any]:
    """Seconds per micro-batch forward + backward with no noise-scale hooks, with the norm taken in
    each hook (the CPU's way) and with the gradients kept for one batched norm after the backward
    (CUDA's way): interleaved, median of `repeats` rounds over the same length-sorted micro-batches."""
    import torch

    from accumbench.backends.base import micro_batch_loss, unshared_token_embedding
    from accumbench.backends.grad_norms import MicroBatchGradNorms
    from accumbench.config import RunConfig
    from accumbench.data import pipeline
    from accumbench.runtime import preparation

    config = RunConfig(model=model, dataset=dataset, max_train_samples=micro * batches, max_eval_samples=16,
                       data_seed=42, checkpoint=False, precision="no")
    prepared = preparation.prepare(config)
    split, pad, model_ = prepared.splits["train"], prepared.pad_token_id, prepared.model.train()
    order = sorted(range(len(split)), key=lambda i: -split.lengths[i])
    micro_batches = [pipeline.collate(split, order[i : i + micro], pad) for i in range(0, len(order), micro)]
    seconds: dict[str, list[float]] = {"none": [], "norm in hook": [], "norm in hook, all embedding rows": [],
                                       "batched norm": []}
    embedding = unshared_token_embedding(model_)
    for _ in range(repeats):
        for variant in seconds:
            norms = None if variant == "none" else MicroBatchGradNorms(
                model_.parameters(), torch.device("cpu"), batched=variant == "batched norm",
                token_embedding=embedding if variant == "norm in hook" else None)
            model_.zero_grad(set_to_none=True)
            started = time.perf_counter()
            for batch in micro_batches:
                if norms is not None:
                    norms.rows_used(batch["input_ids"])
                loss, _ = micro_batch_loss(model_, batch)
                (loss / len(micro_batches)).backward()
                if norms is not None:
                    norms.micro_batch_done(micro, 1 / len(micro_batches))
            seconds[variant].append((time.perf_counter() - started) / len(micro_batches))
            if norms is not None:
                norms.close()
    medians = {variant: statistics.median(times) for variant, times in seconds.items()}
    print(f"hooks {name}: {len(micro_batches)} micro-batches of {micro}, median of {repeats}: " + ", ".join(
        f"{v} {m * 1000:.1f} ms ({m / medians['none'] - 1:+.1%})" for v, m in medians.items()))
    return dict(dataset=name, micro=micro, batches=len(micro_batches), repeats=repeats,
                ms_per_micro_batch={v: m * 1000 for v, m in medians.items()})


def sweep(model: str, dataset: str, samples: int, ebs: list[int], micro: int, steps: int, eval_every: int,
          max_eval: int, db: Path, group_by_length: bool) -> dict[str, Any]:
    """An EBS sweep at equal optimizer steps (--budget steps) with evaluations every few steps, then
    the pick with its noise and B_crit lines."""
    args = ["--models", model, "--dataset", dataset, "--effective-batch-sizes", ",".join(map(str, ebs)),
            "--micro-batch-size", str(micro), "--budget", "steps", "--train-steps", str(steps),
            "--max-train-samples", str(samples),
            "--max-eval-samples", str(max_eval), "--max-length", "128", "--data-seed", "42", "--no-checkpoint",
            "--eval-every", str(eval_every), "--db", str(db),
            "--group-by-length" if group_by_length else "--no-group-by-length"]
    started = time.perf_counter()
    accumbench("sweep", *args, cwd=db.parent)
    seconds = time.perf_counter() - started
    picked = json.loads(accumbench("pick-best", "--json", "--db", str(db), cwd=db.parent))["picks"][0]
    report = accumbench("report", "--format", "markdown", "--db", str(db), cwd=db.parent)
    print(report)
    for line in (f"pick: {picked['pick']}: {picked['justification']}", picked["noise_scale"]["text"],
                 *(c["text"] for c in picked["critical_batch_size"])):
        print(line)
    return dict(seconds=seconds, pick=picked["pick"], justification=picked["justification"],
                noise_scale=picked["noise_scale"], critical_batch_size=picked["critical_batch_size"], report=report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["overhead", "hooks", "partition", "sweep"], action="append")
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory: a seconds-long smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="overhead runs per variant (median)")
    parser.add_argument("--groups", type=int, default=64, help="SST-2 groups cut both ways in the partition experiment")
    parser.add_argument("--out", type=Path, default=RESULTS / "noise_scale.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    only = set(args.only or ["overhead", "hooks", "partition", "sweep"])
    model = args.tiny or "minilm"
    sst2 = str(SST2) if SST2.is_dir() and not args.tiny else None
    scale = 0.05 if args.tiny else 1.0
    results: dict[str, Any] = {"model": model, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(work / "cache"))
        if "overhead" in only:
            results["overhead"] = [overhead(model, "demo", "demo", max(32, int(256 * scale)), 64, 16, 128,
                                            1 if args.tiny else args.repeats, work)]
            if sst2:
                results["overhead"].append(overhead(model, sst2, "sst2", 2048, 256, 16, 128, args.repeats, work))
        if "hooks" in only:
            results["hooks"] = [hooks(model, sst2 or "demo", "sst2" if sst2 else "demo", 16, 2 if args.tiny else 32,
                                      1 if args.tiny else 5)]
        if "partition" in only:
            results["partition"] = [partition(model, "demo", "demo", 2 if args.tiny else 24, 64, 16, 128,
                                              1 if args.tiny else 8)]
            if sst2:
                results["partition"].append(partition(model, sst2, "sst2", args.groups, 128, 16, 128, 16))
        if "sweep" in only:
            RESULTS.mkdir(parents=True, exist_ok=True)
            db = (work if args.tiny else RESULTS) / "noise_scale_sweep.db"
            db.unlink(missing_ok=True)
            dataset = sst2 or "demo"
            results["sweep"] = sweep(model, dataset, 8192 if sst2 else 96, [32, 64, 128, 256] if sst2 else [8, 16, 32],
                                     16 if sst2 else 8, 96 if sst2 else 6, 6 if sst2 else 2, 400 if sst2 else 16, db,
                                     group_by_length=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
