"""The tuned protocol on real data: does tuning the learning rate per effective batch size change which
EBS wins? MiniLM (the packaged all-MiniLM-L6-v2) on SST-2 (../shared/data/sst2), on this machine's CPU.

    accumbench sweep       EBS 16/64/256 x 3 lrs x 2 seeds, on a few thousand training sentences
    accumbench pick-best   the best lr per EBS (validation), the fitted lr scaling exponent alpha, and
                           the pick under each protocol (--compare-protocols)
    then, as pick-best's edge warnings advise, each EBS whose best lr is at an end of the grid gets the
    next rate the warning names (same seeds), and everything is analysed again

Every EBS is trained at the same three rates, as the seed study trained them all at one: so each rate
is also the seed study's protocol (every EBS at one lr), beside pooled and tuned. A first run with a
grid that moved with the EBS by the sqrt rule (1e-4, 2e-4, 4e-4 at EBS 64: EBS 16 at half, EBS 256 at
twice) found the best rate of EBS 64 and 256 at the smallest tried and 8e-4 unstable at EBS 256, so the
rates here are the ones where all three EBS trained well in that run.

    python bench/tuned_study.py                   # ~40 min on 2 CPU cores; rerun: analyses again, trains nothing
    python bench/tuned_study.py --tiny MODEL_DIR  # seconds, on a tiny model: the smoke test

Writes bench/results/tuned_study.json, and the sweep's runs to bench/results/tuned_study.db.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data"  # sst2/, subj/: benchmark data beside the project, never in it
RESULTS = ROOT / "bench" / "results"

from commands import accumbench, machine, sweep_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on the demo data: a smoke run")
    parser.add_argument("--data", default="sst2", help="a task under ../shared/data: sst2 (tuned on) or subj (held out)")
    parser.add_argument("--no-edges", action="store_true", help="the grid only: no round 2 at the edge lrs")
    parser.add_argument("--samples", type=int, default=2048, help="training sentences (the first N of the shuffled split)")
    parser.add_argument("--eval-samples", type=int, default=872, help="validation and test sentences")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ebs", default="16,64,256")
    parser.add_argument("--lrs", default="5e-5,1e-4,2e-4", help="the rates (base rates at EBS 64 with --lr-scaling)")
    parser.add_argument("--lr-scaling", default="none")
    parser.add_argument("--seeds", default="42,43")
    parser.add_argument("--out", type=Path, default=RESULTS / "tuned_study.json")
    parser.add_argument("--fresh", action="store_true", help="delete the sweep's database first and train it all again")
    args = parser.parse_args()
    if args.tiny:
        model, dataset, samples, eval_samples, micro, epochs = args.tiny, "demo", 64, 32, 8, 1
        ebs, max_length = "8,32", "32"
    else:
        if not (DATA / args.data).is_dir():
            raise SystemExit(f"no {args.data} at {DATA / args.data}; this benchmark needs the shared data (or --tiny)")
        model, dataset, samples, eval_samples, micro, epochs = ("minilm", str(DATA / args.data), args.samples,
                                                                 args.eval_samples, 16, args.epochs)
        ebs, max_length = args.ebs, "128"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.tiny else RESULTS
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        stem = "tuned_study" if args.data == "sst2" else f"tuned_study_{args.data}"
        db = work / f"{stem}.db"
        if args.fresh or args.tiny:
            db.unlink(missing_ok=True)
        shared = ["--models", model, "--dataset", dataset, "--lr-scaling", args.lr_scaling, "--base-batch-size", "64",
                  "--seeds", args.seeds, "--micro-batch-size", str(micro), "--epochs", str(epochs),
                  "--max-train-samples", str(samples), "--max-eval-samples", str(eval_samples), "--max-length",
                  max_length, "--data-seed", "42", "--no-checkpoint", "--db", str(db)]
        # Round 1, the grid. A rerun resumes the sweep (trains only what is missing) and analyses it again.
        accumbench("sweep", *shared, "--effective-batch-sizes", ebs, "--lrs", args.lrs, "--name", f"tuned-{args.data}", cwd=work)
        grid = analyse(db, work, f"tuned-{args.data}")
        # Round 2, as pick-best's edge warnings tell a user: each EBS whose best lr is at an end of the grid
        # gets the next rate it names, with the same seeds. Then everything is analysed together.
        edges = [] if args.no_edges else [(b["effective_batch_size"], b["suggested_lr"]) for b in grid["best_lr_per_ebs"]
                                          if b["suggested_lr"]]
        for at, lr in edges:
            # An lr of its own for each EBS: a base rate here, so with a rule the next *rate* is its inverse.
            base = lr / _scale(args.lr_scaling, at)
            accumbench("sweep", *shared, "--effective-batch-sizes", str(at), "--lrs", f"{base:.6g}",
                       "--name", f"tuned-{args.data}-edge-{at}", cwd=work)
        extended = analyse(db, work, None) if edges else None
        seconds = sweep_seconds(db)
    results: dict[str, Any] = {
        "machine": machine(), "model": model, "dataset": args.data if not args.tiny else "demo",
        "train_samples": samples, "eval_samples": eval_samples, "epochs": epochs, "effective_batch_sizes": ebs,
        "lrs": args.lrs, "lr_scaling": args.lr_scaling, "seeds": args.seeds, "sweep_seconds": seconds,
        "grid": grid, "edges_added": [{"effective_batch_size": at, "lr": lr} for at, lr in edges], "extended": extended,
    }
    for name, section in (("the grid", grid), ("with the edges extended", extended)):
        if section is not None:
            print(f"\n=== {name} ===\n{section['report_markdown']}\n{section['pick_best_text']}\n{table(section)}")
    print(f"{results['sweep_seconds'] / 60:.1f} min of training and evaluation on {results['machine']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _scale(rule: str, ebs: int) -> float:
    return {"none": 1.0, "linear": ebs / 64, "sqrt": (ebs / 64) ** 0.5}[rule]


def analyse(db: Path, work: Path, sweep: str | None) -> dict[str, Any]:
    """pick-best (tuned, and every protocol) and report on the sweep's runs (None: all in the database)."""
    only = ["--sweep", sweep] if sweep else []
    tuned = json.loads(accumbench("pick-best", "--json", *only, "--db", str(db), cwd=work))["picks"][0]
    [comparison] = json.loads(accumbench("pick-best", "--compare-protocols", "--json", *only, "--db", str(db),
                                         cwd=work))["comparisons"]
    return {
        "best_lr_per_ebs": tuned["best_lr_per_ebs"], "lr_scaling_fit": tuned["lr_scaling_fit"],
        "tuned_pick": {k: tuned[k] for k in ("pick", "effective_batch_size", "lr", "test_accuracy", "test_accuracy_ci95",
                                              "justification", "warnings")},
        "protocols": comparison,
        "report_markdown": accumbench("report", "--format", "markdown", *only, "--db", str(db), cwd=work),
        "pick_best_text": accumbench("pick-best", *only, "--db", str(db), cwd=work),
    }


def table(results: dict[str, Any]) -> str:
    """docs/benchmarks.md's tables of one analysis: the best lr per EBS, the fitted exponent, and the pick under
    each protocol."""
    from accumbench.formatting import format_lr

    lines = ["| EBS | lrs tried | best lr (val acc, mean ± std over seeds) | refined lr* |", "|---:|---|---|---:|"]
    for b in results["best_lr_per_ebs"]:
        tried = ", ".join(format_lr(t["lr"]) for t in b["lrs_tried"])
        refined = format_lr(b["refined_lr"]) if b["refined"] else ("at the edge" if b["edge"] else "-")
        spread = f" ± {b['metric_std']:.4f}" if b["metric_std"] is not None else ""
        lines.append(f"| {b['effective_batch_size']} | {tried} | {format_lr(b['lr'])} ({b['metric_mean']:.4f}{spread}) "
                     f"| {refined} |")
    lines += ["", *(f["text"] for f in results["lr_scaling_fit"]), "",
              "| protocol | pick | val acc | test acc [95% CI] |", "|---|---|---|---|"]
    for row in results["protocols"]["protocols"]:
        low, high = row["test_accuracy_ci95"]
        spread = f" ± {row['metric_std']:.4f}" if row["metric_std"] is not None else ""
        lines.append(f"| {row['name']} | {row['pick']} | {row['metric_mean']:.4f}{spread} | "
                     f"{row['test_accuracy']:.4f} [{low:.4f}, {high:.4f}] |")
    lines += ["", results["protocols"]["text"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
