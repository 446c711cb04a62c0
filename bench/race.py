"""Racing the lr grid on real data: SST-2 (../shared/data/sst2) with the packaged MiniLM, on this machine's CPU.

    1. the full grid, no racing: EBS 16/64/256 x lr 3e-5, 1e-4, 3e-4, 1e-3 (about 30x) x seeds 42, 43, 5 epochs,
       1,024 training sentences, 872 validation sentences (bench/results/race_full.db, sweep race-sst2)
    2. racing replayed over it (pick-best --replay-race) at alphas 1e-2 to 1e-6, from epoch 1, 2 and 3
    3. the same grid trained again with sweep --race at the default alpha (bench/results/race_raced.db)
    4. for the replays and the raced run: training time against the full grid (seconds as recorded, and
       epochs trained: the count no machine load changes), the tuned pick, the best lr per EBS, and the
       wrong prunes (pruned arms that, fully trained in step 1, are not significantly worse than their
       EBS's best under pick-best's own screen)

    python bench/race.py                   # ~100 min on 2 CPU cores; a rerun analyses again, trains nothing
    python bench/race.py --tiny MODEL_DIR  # a minute, on a tiny model and the demo data: the smoke test

Writes bench/results/race.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results"
# (alpha, race after): the grid the defaults are chosen from (the loosest with no wrong prune).
REPLAYS = tuple((alpha, after) for after in (1, 2, 3) for alpha in (1e-2, 1e-3, 1e-4, 1e-6))

from commands import accumbench, machine, sweep_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on the demo data: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "race.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            model, dataset, samples, eval_samples, epochs, ebs, lrs, max_length = (
                args.tiny, "demo", 64, 48, 4, "8,16", "1e-4,1e-3,1e-2", "32")
            work = Path(tmp)
        else:
            if not SST2.is_dir():
                raise SystemExit(f"no SST-2 at {SST2}; this benchmark needs the shared data (or --tiny)")
            model, dataset, samples, eval_samples, epochs, ebs, lrs, max_length = (
                "minilm", str(SST2), 1024, 872, 5, "16,64,256", "3e-5,1e-4,3e-4,1e-3", "128")
            work = RESULTS
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        full_db, raced_db = work / "race_full.db", work / "race_raced.db"
        grid = ["--models", model, "--dataset", dataset, "--effective-batch-sizes", ebs, "--micro-batch-size",
                "8" if args.tiny else "16", "--lrs", lrs, "--seeds", "42,43", "--epochs", str(epochs),
                "--max-train-samples", str(samples), "--max-eval-samples", str(eval_samples), "--max-length",
                max_length, "--data-seed", "42", "--no-checkpoint", "--name", "race-sst2"]
        # 1. The full grid (a rerun resumes it: nothing trains twice).
        accumbench("sweep", *grid, "--db", str(full_db), cwd=work)
        full = summary(full_db, work)
        # 2. Racing replayed over it, in racing's claim order.
        replays = []
        for alpha, after in REPLAYS:
            [replay] = json.loads(accumbench("pick-best", "--replay-race", "--race-alpha", f"{alpha:g}", "--race-after",
                                             str(after), "--json", "--db", str(full_db), cwd=work))["replays"]
            replays.append(replay)
        # 3. The same grid raced for real, at the default alpha.
        accumbench("sweep", *grid, "--race", "--db", str(raced_db), cwd=work)
        raced = summary(raced_db, work)
        raced["wrong_prunes"] = wrong_prunes(full_db, raced_db)
    results = {"machine": machine(), "model": model, "dataset": "sst2" if not args.tiny else "demo",
               "train_samples": samples, "eval_samples": eval_samples, "epochs": epochs, "effective_batch_sizes": ebs,
               "lrs": lrs, "seeds": "42,43", "full": full, "replays": replays, "raced": raced}
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def summary(db: Path, work: Path) -> dict[str, Any]:
    """What one store cost and answered: training time, epochs, wall time, the tuned pick and the best lrs."""
    with sqlite3.connect(db) as con:
        seconds, epochs = con.execute("SELECT SUM(epoch_seconds), COUNT(*) FROM epochs").fetchone()
        pruned = con.execute("SELECT id, effective_batch_size, lr, seed, pruned_epoch, pruned_p FROM runs "
                             "WHERE status = 'PRUNED' ORDER BY id").fetchall()
    [pick] = json.loads(accumbench("pick-best", "--json", "--db", str(db), cwd=work))["picks"]
    return {"seconds": seconds, "epochs": epochs, "wall_seconds": sweep_seconds(db),
            "pick": pick["effective_batch_size"], "pick_lr": pick["lr"], "answer": pick["answer"],
            "best_lr": {str(b["effective_batch_size"]): b["lr"] for b in pick["best_lr_per_ebs"]},
            "pruned": [dict(zip(("run_id", "effective_batch_size", "lr", "seed", "epoch", "p"), row)) for row in pruned]}


def wrong_prunes(full_db: Path, raced_db: Path) -> list[dict[str, Any]]:
    """The raced run's pruned arms that, fully trained in the full grid, are shown within pick-best's margin of their
    EBS's best, or not shown worse by more than it (pick-best's evidence): the same judgement the replay makes."""
    from accumbench.analysis.race_replay import ends_as_good
    from accumbench.analysis.runs import load_predictions, load_runs
    from accumbench.deficit import Margin
    from accumbench.store import Store, resolve_db_url

    with Store.open(resolve_db_url(str(full_db))) as store:  # open (not read-only): upgrades an older schema
        data = load_runs(store)
        predictions = load_predictions(store, data)["validation"]
    with sqlite3.connect(raced_db) as con:
        arms = set(con.execute("SELECT effective_batch_size, lr FROM runs WHERE status = 'PRUNED'").fetchall())
    wrong = []
    for ebs, lr in sorted(arms):
        run = data.runs[(data.runs["effective_batch_size"] == ebs) & (abs(data.runs["lr"] / lr - 1) < 1e-9)].iloc[0]
        as_good, not_ruled_out, bound = ends_as_good(data.runs, run, predictions, data.metric, Margin())
        if as_good or not_ruled_out:
            wrong.append({"effective_batch_size": ebs, "lr": lr, "by_screen": as_good, "not_ruled_out": not_ruled_out,
                          "final_bounds": None if bound is None else [bound.lower, bound.upper]})
    return wrong


def table(results: dict[str, Any]) -> str:
    """docs/racing.md's table: the full grid, each replay, and the raced run."""
    from accumbench.formatting import format_lr, format_seconds
    from accumbench.vocabulary import RACE_AFTER, RACE_ALPHA

    full = results["full"]
    best = lambda lrs: ", ".join(f"{e}: {format_lr(lr)}" for e, lr in lrs.items())  # noqa: E731
    arms = lambda found: ", ".join(f"EBS {a['effective_batch_size']} lr {format_lr(a['lr'])}" for a in found) or "0"  # noqa: E731
    lines = ["| run | alpha | race after | runs pruned | training time (share of full) | epochs trained | pick | "
             "best lr per EBS | wrong prunes: shown within the margin | not ruled out |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---|",
             f"| full grid | - | - | 0 | {format_seconds(full['seconds'])} (100%) | {full['epochs']} | EBS {full['pick']} | "
             f"{best(full['best_lr'])} | - | - |"]
    for r in results["replays"]:
        kept = r["seconds"] - r["saved_seconds"]
        epochs = full["epochs"] - sum(results["epochs"] - p["epoch"] for p in r["prunes"])
        lines.append(f"| replay | {r['race_alpha']:g} | {r['race_after']} | {len(r['prunes'])} | {format_seconds(kept)} "
                     f"({1 - r['saved_share']:.0%}) | {epochs} | EBS {r['pick_raced']} | {best(r['best_lr_raced'])} | "
                     f"{arms(r['wrong_prunes'])} | {arms(r['not_ruled_out'])} |")
    raced = results["raced"]
    lines.append(f"| raced (the defaults) | {RACE_ALPHA:g} | {RACE_AFTER} | {len(raced['pruned'])} | {format_seconds(raced['seconds'])} "
                 f"({raced['seconds'] / full['seconds']:.0%}) | {raced['epochs']} | EBS {raced['pick']} | "
                 f"{best(raced['best_lr'])} | {arms([w for w in raced['wrong_prunes'] if w['by_screen']])} | "
                 f"{arms([w for w in raced['wrong_prunes'] if w['not_ruled_out']])} |")
    return "\n".join(lines) + f"\n\n{results['machine']}; wall time: full {format_seconds(full['wall_seconds'])}, " \
                              f"raced {format_seconds(raced['wall_seconds'])}"


if __name__ == "__main__":
    main()
