"""Racing the lr grid on real data, tuned on one task and checked on another: the packaged MiniLM on SST-2 and
on SUBJ (../shared/data/sst2, ../shared/data/subj), on this machine's CPU.

    1. each task's full grid, no racing: EBS 16/64/256 x lr 3e-5, 1e-4, 3e-4, 1e-3 (about 30x) x seeds 42, 43,
       5 epochs, 1,024 training sentences, up to 872 validation sentences (bench/results/race_full_<task>.db)
    2. racing replayed over SST-2's grid (pick-best --replay-race) under each rule in RULES: the defaults
       (vocabulary.RACE_*) are the rule that saves the most there with the same pick, the same best lr per EBS
       and no wrong prune or skip; then over SUBJ's grid at those defaults, unchanged: the held-out check
    3. SST-2's grid trained again with sweep --race at the defaults (bench/results/race_raced_sst2.db)
    4. per grid: the training time saved, the epochs trained, the pick, the best lr per EBS, and the wrong prunes
       and skips (stopped arms that, fully trained in step 1, are not shown worse than their EBS's best by more
       than the margin: racing's own test, on the finished grid with pick-best's evidence)

    python bench/race.py                   # ~5 h on 2 CPU cores (each grid ~1.5-2.5 h); a rerun resumes, and
                                           # analyses again once everything is trained
    python bench/race.py --no-raced        # steps 1, 2 and 4 only
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
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
# (alpha, race after, guard): the rules the defaults are chosen from on SST-2.
RULES = tuple((alpha, after, guard) for guard in ("closing", "none") for after in (1, 2) for alpha in (0.05, 0.01, 1e-3))

from commands import accumbench, machine, sweep_seconds  # noqa: E402


def grid_args(task: str, tiny: str | None) -> list[str]:
    if tiny:  # two small "tasks": the demo data drawn two ways
        return ["--models", tiny, "--dataset", "demo", "--effective-batch-sizes", "8,16", "--micro-batch-size", "8",
                "--lrs", "1e-4,1e-3,1e-2", "--seeds", "42,43", "--epochs", "4", "--max-train-samples", "64",
                "--max-eval-samples", "48", "--max-length", "32", "--data-seed", "42" if task == "sst2" else "43",
                "--no-checkpoint", "--name", f"race-{task}"]
    return ["--models", "minilm", "--dataset", str(DATA / task), "--effective-batch-sizes", "16,64,256",
            "--micro-batch-size", "16", "--lrs", "3e-5,1e-4,3e-4,1e-3", "--seeds", "42,43", "--epochs", "5",
            "--max-train-samples", "1024", "--max-eval-samples", "872", "--max-length", "128", "--data-seed", "42",
            "--no-checkpoint", "--name", f"race-{task}"]


def replay(db: Path, work: Path, alpha: float, after: int, guard: str) -> dict[str, Any]:
    [found] = json.loads(accumbench("pick-best", "--replay-race", "--race-alpha", f"{alpha:g}", "--race-after",
                                    str(after), "--race-guard", guard, "--json", "--db", str(db), cwd=work))["replays"]
    return found


def within(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The stopped arms that, fully trained, pick-best shows as good as their EBS's best: racing removed a contender."""
    arms = {(s["effective_batch_size"], s["lr"]) for s in found["stops"] if s["within"]}
    return [{"effective_batch_size": e, "lr": lr} for e, lr in sorted(arms)]


def preference(found: dict[str, Any]) -> tuple:
    """How the defaults are chosen among the rules that keep the pick and every best lr and remove no contender:
    the fewest wrong stops (arms not ruled out at the end), then the largest saving, then the guard, the later start."""
    return (-len(found["wrong"]), found["saved_share"], found["race_guard"] == "closing", found["race_after"])


def main() -> None:
    from accumbench.vocabulary import RACE_AFTER, RACE_ALPHA, RACE_GUARD

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on the demo data: a smoke run")
    parser.add_argument("--no-raced", action="store_true", help="skip step 3, the raced run")
    parser.add_argument("--out", type=Path, default=RESULTS / "race.json")
    args = parser.parse_args()
    defaults = (RACE_ALPHA, RACE_AFTER, RACE_GUARD)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.tiny and not all((DATA / task).is_dir() for task in ("sst2", "subj")):
            raise SystemExit(f"no SST-2 or SUBJ under {DATA}; this benchmark needs the shared data (or --tiny)")
        work = Path(tmp) if args.tiny else RESULTS
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        grids = {}
        for task in ("sst2", "subj"):  # 1. the full grids (a rerun resumes them: nothing trains twice)
            db = work / f"race_full_{task}.db"
            accumbench("sweep", *grid_args(task, args.tiny), "--db", str(db), cwd=work)
            grids[task] = {"db": db, "full": summary(db, work)}
        # 2. The rules replayed on SST-2; the defaults replayed on SUBJ, and every rule there too, for the record.
        rules = RULES[:1] + RULES[-1:] if args.tiny else RULES  # the smoke test: two rules and the defaults
        for grid in grids.values():
            grid["replays"] = [replay(grid["db"], work, *rule) for rule in rules]
            if defaults not in rules:
                grid["replays"].append(replay(grid["db"], work, *defaults))
        tuned = [r for r in grids["sst2"]["replays"] if r["same_answer"] and not within(r)]
        best_rule = max(tuned, key=preference, default=None)
        # 3. SST-2 raced for real, at the defaults.
        raced = None
        if not args.no_raced:
            raced_db = work / "race_raced_sst2.db"
            accumbench("sweep", *grid_args("sst2", args.tiny), "--race", "--db", str(raced_db), cwd=work)
            raced = summary(raced_db, work)
            raced["wrong"] = wrong_stops(grids["sst2"]["db"], raced_db)
    results = {"machine": machine(), "model": "minilm" if not args.tiny else args.tiny, "tiny": bool(args.tiny),
               "defaults": {"race_alpha": defaults[0], "race_after": defaults[1], "race_guard": defaults[2]},
               "best_rule_on_sst2": None if best_rule is None else {k: best_rule[k] for k in (
                   "race_alpha", "race_after", "race_guard", "saved_share", "wrong")},
               "grids": {task: {k: v for k, v in grid.items() if k != "db"} for task, grid in grids.items()},
               "raced": raced}
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def summary(db: Path, work: Path) -> dict[str, Any]:
    """What one store cost and answered: training time, epochs, wall time, the tuned pick and the best lrs."""
    with sqlite3.connect(db) as con:
        seconds, epochs = con.execute("SELECT SUM(epoch_seconds), COUNT(*) FROM epochs").fetchone()
        stopped = con.execute("SELECT id, status, effective_batch_size, lr, seed, pruned_epoch, error FROM runs "
                              "WHERE status IN ('PRUNED', 'SKIPPED') ORDER BY id").fetchall()
    [pick] = json.loads(accumbench("pick-best", "--json", "--db", str(db), cwd=work))["picks"]
    return {"seconds": seconds, "epochs": epochs, "wall_seconds": sweep_seconds(db),
            "pick": pick["effective_batch_size"], "pick_lr": pick["lr"], "answer": pick["answer"],
            "best_lr": {str(b["effective_batch_size"]): b["lr"] for b in pick["best_lr_per_ebs"]},
            "stops": [dict(zip(("run_id", "status", "effective_batch_size", "lr", "seed", "epoch", "why"), row))
                      for row in stopped]}


def wrong_stops(full_db: Path, raced_db: Path) -> list[dict[str, Any]]:
    """The raced run's pruned and skipped arms that, fully trained in the full grid, are not shown worse than their
    EBS's best by more than racing's margin: the same judgement the replay makes."""
    from accumbench.analysis.race_replay import ends_as_good
    from accumbench.analysis.runs import load_predictions, load_runs
    from accumbench.deficit import Margin
    from accumbench.store import Store, resolve_db_url

    with Store.open(resolve_db_url(str(full_db))) as store:  # open (not read-only): upgrades an older schema
        data = load_runs(store)
        predictions = load_predictions(store, data)["validation"]
    with sqlite3.connect(raced_db) as con:
        arms = set(con.execute("SELECT effective_batch_size, lr FROM runs WHERE status IN ('PRUNED', 'SKIPPED')").fetchall())
    wrong = []
    for ebs, lr in sorted(arms):
        run = data.runs[(data.runs["effective_batch_size"] == ebs) & (abs(data.runs["lr"] / lr - 1) < 1e-9)].iloc[0]
        # Racing's default margin (the metric's), at pick-best's confidence: as the replay judges.
        within, not_ruled_out, bound = ends_as_good(data.runs, run, predictions, data.metric, Margin())
        if not_ruled_out:
            wrong.append({"effective_batch_size": ebs, "lr": lr, "within": within,
                          "final_bounds": None if bound is None else [bound.lower, bound.upper]})
    return wrong


def table(results: dict[str, Any]) -> str:
    """The README's and docs/racing.md's tables: per grid, the full grid and racing at the defaults (replayed, and
    raced for real on SST-2); then every rule replayed on both grids."""
    from accumbench.formatting import format_lr, format_seconds

    best = lambda lrs: ", ".join(f"{e}: {format_lr(lr)}" for e, lr in lrs.items())  # noqa: E731
    arms = lambda found: ", ".join(f"EBS {a['effective_batch_size']} lr {format_lr(a['lr'])}" for a in found) or "0"  # noqa: E731
    d = results["defaults"]
    is_default = lambda r: (r["race_alpha"], r["race_after"], r["race_guard"]) == (  # noqa: E731
        d["race_alpha"], d["race_after"], d["race_guard"])
    lines = ["| grid | run | training time (share of full) | saved | the most a safe rule saves | epochs trained | "
             "runs pruned / skipped | pick | best lr per EBS | stopped, yet as good as the best | wrong: stopped, "
             "not ruled out at the end |", "|---|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    for task, grid in results["grids"].items():
        full = grid["full"]
        lines.append(f"| {task} | full grid | {format_seconds(full['seconds'])} (100%) | - | - | {full['epochs']} | - | "
                     f"EBS {full['pick']} | {best(full['best_lr'])} | - | - |")
        r = next(r for r in grid["replays"] if is_default(r))
        pruned = sum(not s["skipped"] for s in r["stops"])
        lines.append(f"| {task} | replay at the defaults{' (tuned here)' if task == 'sst2' else ' (held out)'} | "
                     f"{format_seconds(r['seconds'] - r['saved_seconds'])} ({1 - r['saved_share']:.0%}) | "
                     f"{r['saved_share']:.0%} | {r['ceiling_share']:.0%} | {r['epochs_trained']} | "
                     f"{pruned} / {len(r['stops']) - pruned} | "
                     f"EBS {r['pick_raced']} | {best(r['best_lr_raced'])} | {arms(within(r))} | {arms(r['wrong'])} |")
        raced = results.get("raced")
        if task == "sst2" and raced:
            pruned = sum(s["status"] == "PRUNED" for s in raced["stops"])
            lines.append(f"| {task} | raced for real at the defaults | {format_seconds(raced['seconds'])} "
                         f"({raced['seconds'] / full['seconds']:.0%}) | {1 - raced['seconds'] / full['seconds']:.0%} | - | "
                         f"{raced['epochs']} | {pruned} / {len(raced['stops']) - pruned} | EBS {raced['pick']} | "
                         f"{best(raced['best_lr'])} | {arms([w for w in raced['wrong'] if w['within']])} | "
                         f"{arms(raced['wrong'])} |")
    lines += ["", "| rule (alpha, after, guard) | " + " | ".join(
        f"{task}: saved, epochs, same answer, as good as the best, wrong" for task in results["grids"]) + " |",
        "|---|" + "---|" * len(results["grids"])]
    rules = [(r["race_alpha"], r["race_after"], r["race_guard"]) for r in results["grids"]["sst2"]["replays"]]
    for rule in rules:
        cells = []
        for grid in results["grids"].values():
            r = next(r for r in grid["replays"] if (r["race_alpha"], r["race_after"], r["race_guard"]) == rule)
            cells.append(f"{r['saved_share']:.0%}, {r['epochs_trained']}, {'yes' if r['same_answer'] else 'no'}, "
                         f"{arms(within(r))}, {arms(r['wrong'])}")
        mark = " (the defaults)" if rule == (d["race_alpha"], d["race_after"], d["race_guard"]) else ""
        lines.append(f"| {rule[0]:g}, {rule[1]}, {rule[2]}{mark} | " + " | ".join(cells) + " |")
    full = results["grids"]["sst2"]["full"]
    raced = results.get("raced")
    return "\n".join(lines) + f"\n\n{results['machine']}; SST-2 wall time: full {format_seconds(full['wall_seconds'])}" + (
        f", raced {format_seconds(raced['wall_seconds'])}" if raced else "")


if __name__ == "__main__":
    main()
