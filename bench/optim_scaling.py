"""Scaling Adam's batch-size-dependent settings with the EBS, on real data: SST-2 (../shared/data/sst2) with the
packaged MiniLM, on this machine's CPU.

Two rule bundles over the same lr grid (3e-5, 1e-4, 3e-4, 1e-3, tuned per EBS), EBS 16, 64 and 256 (base 16),
seeds 42 and 43, 5 epochs, 1,024 training and 872 validation sentences:

    lr only     the lr tuned on the grid, every other setting at Adam's defaults: bench/race.py's full grid
                (bench/results/race_full_sst2.db), copied in rather than trained again
    sde β, ε    the same, with the SDE bundle's other rules: β1 and β2 half-life (β^kappa), ε sqrt (ε/sqrt(kappa)),
                kappa = EBS/16. Its lr rule (sqrt) is left out on purpose: with the lr tuned on one grid of actual
                rates, the two bundles meet the same lrs, so what differs is β and ε alone. At EBS 16 (kappa 1)
                every rule is the identity: those runs are the lr-only ones (one config hash), not trained twice.
                Trained with sweep --race (the default alpha), as a user saving compute would.

Per bundle: the best lr per EBS, the fitted alpha (lr* ∝ EBS^alpha), validation accuracy at each EBS's best
lr, the tuned pick, and the large-EBS penalty (best EBS's accuracy minus EBS 256's).

    python bench/optim_scaling.py                   # ~60 min on 2 CPU cores (the lr-only grid is reused)
    python bench/optim_scaling.py --tiny MODEL_DIR  # a minute, on a tiny model and the demo data: the smoke test

Writes bench/results/optim_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results"
BUNDLE_FLAGS = ["--beta1-scaling", "half-life", "--beta2-scaling", "half-life", "--eps-scaling", "sqrt",
                "--base-batch-size"]

from commands import accumbench, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on the demo data: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "optim_scaling.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        if args.tiny:
            model, dataset, samples, eval_samples, epochs, ebs, lrs, max_length, micro = (
                args.tiny, "demo", 64, 48, 3, ("8", "16", "32"), "1e-3,1e-2", "32", "8")
            work = Path(tmp)
        else:
            if not SST2.is_dir():
                raise SystemExit(f"no SST-2 at {SST2}; this benchmark needs the shared data (or --tiny)")
            model, dataset, samples, eval_samples, epochs, ebs, lrs, max_length, micro = (
                "minilm", str(SST2), 1024, 872, 5, ("16", "64", "256"), "3e-5,1e-4,3e-4,1e-3", "128", "16")
            work = RESULTS
        db = work / "optim_scaling.db"
        grid = ["--models", model, "--dataset", dataset, "--micro-batch-size", micro, "--lrs", lrs, "--seeds", "42,43",
                "--epochs", str(epochs), "--max-train-samples", str(samples), "--max-eval-samples", str(eval_samples),
                "--max-length", max_length, "--data-seed", "42", "--no-checkpoint", "--db", str(db)]
        # 1. lr only: race.py's full grid where it exists (the same grid, the same names), else trained here.
        full = RESULTS / "race_full_sst2.db"
        if not db.exists() and not args.tiny and full.exists():
            shutil.copyfile(full, db)
        accumbench("sweep", *grid, "--effective-batch-sizes", ",".join(ebs), "--name", "race-sst2", cwd=work)
        # 2. sde β, ε: the larger EBS only (at the base EBS the rules change nothing), raced.
        accumbench("sweep", *grid, "--effective-batch-sizes", ",".join(ebs[1:]), *BUNDLE_FLAGS, ebs[0],
                   "--race", "--name", "optim-scaling-sde", cwd=work)
        comparison = json.loads(accumbench("pick-best", "--compare-protocols", "--json", "--db", str(db), cwd=work))
    results = {"machine": machine(), "model": model, "dataset": "sst2" if not args.tiny else "demo",
               "train_samples": samples, "eval_samples": eval_samples, "epochs": epochs,
               "effective_batch_sizes": ",".join(ebs), "lrs": lrs, "seeds": "42,43",
               "bundles": bundles(comparison), "comparison": comparison["comparisons"]}
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def bundles(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rule bundle (pick-best --compare-protocols' 'tuned, rules ...' rows): the tuned pick, and per EBS
    its best lr and the validation accuracy there (mean over seeds), the fitted alpha, the large-EBS penalty."""
    [group] = comparison["comparisons"]
    out = []
    for row in group["protocols"]:
        if row["protocol"] != "rule bundle":
            continue
        best = {b["effective_batch_size"]: b for b in row["best_lr_per_ebs"]}
        accuracy = {ebs: b["metric_mean"] for ebs, b in sorted(best.items())}
        out.append({"bundle": row["name"].removeprefix("tuned, rules "), "pick": row["effective_batch_size"],
                    "best_lr": {ebs: b["lr"] for ebs, b in sorted(best.items())}, "val_accuracy": accuracy,
                    "alpha": [f["alpha"] for f in row["lr_scaling_fit"]],
                    "large_ebs_penalty": max(accuracy.values()) - accuracy[max(accuracy)],
                    "pruned_runs": sum(t["pruned"] for b in best.values() for t in b["lrs_tried"])})
    return out


def table(results: dict[str, Any]) -> str:
    lines = [f"{results['model']} on {results['dataset']}, {results['train_samples']} training sentences, "
             f"{results['epochs']} epochs, lrs {results['lrs']}, seeds {results['seeds']} ({results['machine']})", "",
             "| bundle | best lr per EBS | val accuracy at it | fitted alpha | tuned pick | penalty at the largest EBS |",
             "|---|---|---|---|---|---|"]
    for b in results["bundles"]:
        lrs = ", ".join(f"{ebs}: {lr:.0e}" for ebs, lr in b["best_lr"].items())
        accs = ", ".join(f"{ebs}: {acc:.4f}" for ebs, acc in b["val_accuracy"].items())
        alpha = ", ".join("-" if a is None else f"{a:.2f}" for a in b["alpha"]) or "-"
        lines.append(f"| {b['bundle']} | {lrs} | {accs} | {alpha} | EBS {b['pick']} | {b['large_ebs_penalty']:+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
