"""Which EBS, and when, on real data: EBS schedules against the best fixed EBS, and the critical batch size
measured along training beside B_simple. The packaged MiniLM on SST-2 and on SUBJ (../shared/data/sst2, subj),
on this machine's CPU.

    1. per task, the fixed arms are race.py's full grid (bench/results/race_full_<task>.db, copied to
       bench/results/schedule_<task>.db): EBS 16/64/256 x lr 3e-5, 1e-4, 3e-4, 1e-3 x seeds 42, 43, 5 epochs,
       1,024 training sentences, 872 validation sentences, micro-batch 16
    2. two schedule arms on the same data, seeds and epochs, each from EBS 16's tuned lr (3e-5) under the sqrt
       rule (base EBS 16): the explicit 16@0,64@1,256@3 and auto:32-256 (doubling on the measured B_simple;
       it starts at 32 so that its steps hold 2 micro-batches of 16 to measure it from), with --save-states 0,1,2,3
    3. accumbench branch from the auto run of seed 42: at each saved state, 512 samples at EBS 16..256, branch
       seeds 1 and 2: the critical batch size along training, beside B_simple
    4. per arm: optimizer steps and samples to the target (the best arm's mean best validation accuracy less the
       margin, 1 point), the best validation accuracy, the optimizer steps of the whole run, and pick-best's
       verdict over every arm of the store (each fixed EBS at its tuned lr; seeds and validation examples)

    python bench/ebs_schedule.py                   # ~1.5 h on 2 CPU cores after race.py's grids; resumes
    OMP_NUM_THREADS=1 python bench/ebs_schedule.py --task sst2 --no-tables &   # the two tasks side by side
    python bench/ebs_schedule.py --tiny MODEL_DIR  # a few minutes, on a tiny model and the demo data: the smoke test

Writes bench/results/ebs_schedule.json.
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
TASKS = ("sst2", "subj")
SCHEDULES = {"16@0,64@1,256@3": "grow 16→64@1→256@3", "auto:32-256": "auto 32→256"}
MARGIN = 0.01

from commands import accumbench, machine  # noqa: E402


def data_args(task: str, tiny: str | None) -> list[str]:
    if tiny:
        return ["--models", tiny, "--dataset", "demo", "--max-train-samples", "128", "--max-eval-samples", "64",
                "--max-length", "32", "--data-seed", "42", "--micro-batch-size", "8", "--epochs", "4",
                "--no-checkpoint"]
    return ["--models", "minilm", "--dataset", str(DATA / task), "--max-train-samples", "1024",
            "--max-eval-samples", "872", "--max-length", "128", "--data-seed", "42", "--micro-batch-size", "16",
            "--epochs", "5", "--no-checkpoint"]


def schedules(tiny: str | None) -> dict[str, str]:
    return {"8@0,16@1,32@2": "grow 8→16@1→32@2", "auto:16-32": "auto 16→32"} if tiny else SCHEDULES


def fixed_grid(task: str, db: Path, work: Path, tiny: str | None) -> None:
    """The fixed arms: race.py's grid copied (the same runs), or for the smoke test a small grid trained here."""
    if db.exists():
        return
    if tiny:
        accumbench("sweep", *data_args(task, tiny), "--effective-batch-sizes", "8,32", "--lrs", "1e-4,1e-3",
                   "--seeds", "42,43", "--name", f"fixed-{task}", "--db", str(db), cwd=work)
        return
    grid = RESULTS / f"race_full_{task}.db"
    if not grid.exists():
        raise SystemExit(f"no {grid}: run python bench/race.py --no-raced first (it trains the fixed grids)")
    with sqlite3.connect(grid) as source, sqlite3.connect(db) as copy:
        source.backup(copy)


def train_schedules(task: str, db: Path, work: Path, tiny: str | None) -> None:
    """Each schedule arm at seeds 42 and 43, unless the store has it finished already (a rerun resumes)."""
    args = data_args(task, tiny)
    model, rest = args[1], args[2:]
    base = ["--model", model, *rest, "--lr", "1e-3" if tiny else "3e-5", "--lr-scaling", "sqrt", "--base-batch-size",
            "8" if tiny else "16", "--save-states", "0,1,2,3"]
    for schedule in schedules(tiny):
        for seed in (42, 43):
            if not _finished(db, schedule, seed):
                accumbench("train", *base, "--ebs-schedule", schedule, "--seed", str(seed), "--db", str(db), cwd=work)


def _finished(db: Path, schedule: str, seed: int) -> int | None:
    with sqlite3.connect(db) as con:
        for run_id, config in con.execute("SELECT id, config_json FROM runs WHERE status = 'FINISHED' AND seed = ?",
                                          (seed,)):
            if json.loads(config).get("ebs_schedule") == schedule:
                return run_id
    return None


def branch(db: Path, work: Path, tiny: str | None) -> int:
    """The critical batch size along the auto run of seed 42 (once: a rerun finds its branches)."""
    auto = next(s for s in schedules(tiny) if s.startswith("auto"))
    run_id = _finished(db, auto, 42)
    with sqlite3.connect(db) as con:
        done = con.execute("SELECT COUNT(*) FROM branches WHERE run_id = ?", (run_id,)).fetchone()[0]
    if not done:
        sizes, samples = ("8,16,32", "64") if tiny else ("16,32,64,128,256", "512")
        accumbench("branch", "--run", str(run_id), "--ebs", sizes, "--samples", samples, "--seeds", "1,2",
                   "--tolerance", "0.01", "--db", str(db), cwd=work)
    return run_id


def arms(db: Path, work: Path, tiny: str | None) -> dict[str, Any]:
    """Per arm (fixed EBS 16 and the largest at their tuned lr, each schedule): steps and samples to the target,
    the best validation accuracy, steps in all, and pick-best's verdict."""
    [pick] = json.loads(accumbench("pick-best", "--json", "--db", str(db), cwd=work))["picks"]
    best_lr = {int(b["effective_batch_size"]): b["lr"] for b in pick["best_lr_per_ebs"]}
    sizes = sorted(best_lr)
    by_runs = {frozenset(c["run_ids"]): c for c in pick["candidates"]}
    chosen = [(f"EBS {sizes[0]}", sizes[0], None), (f"EBS {sizes[-1]}", sizes[-1], None),
              *((label, None, schedule) for schedule, label in schedules(tiny).items())]
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        runs = [dict(r) for r in con.execute("SELECT id, seed, lr, effective_batch_size, config_json FROM runs "
                                              "WHERE status = 'FINISHED'")]
        epochs = [dict(r) for r in con.execute("SELECT run_id, epoch, val_accuracy, optimizer_steps, samples_seen "
                                               "FROM epochs ORDER BY run_id, epoch")]
    rows = {}
    for label, size, schedule in chosen:
        ids = [r["id"] for r in runs if (json.loads(r["config_json"]).get("ebs_schedule") == schedule) and (
            schedule is not None or (r["effective_batch_size"] == size and abs(r["lr"] - best_lr[size]) < 1e-12))]
        own = {run: [e for e in epochs if e["run_id"] == run] for run in ids}
        rows[label] = dict(run_ids=ids, lr=None if schedule else best_lr[size], schedule=schedule,
                           best_val=sum(max(e["val_accuracy"] for e in own[r]) for r in ids) / len(ids),
                           steps=sum(own[r][-1]["optimizer_steps"] for r in ids) / len(ids),
                           verdict=_verdict(by_runs.get(frozenset(ids)), pick))
    target = max(row["best_val"] for row in rows.values()) - MARGIN
    for row in rows.values():
        reached = [next((e for e in epochs if e["run_id"] == run and e["val_accuracy"] >= target), None)
                   for run in row["run_ids"]]
        row["to_target"] = None if any(r is None for r in reached) else dict(
            steps=sum(r["optimizer_steps"] for r in reached) / len(reached),
            samples=sum(r["samples_seen"] for r in reached) / len(reached),
            epochs=sum(r["epoch"] for r in reached) / len(reached))
    return dict(target=target, pick=pick["pick"], answer=pick["answer"], arms=rows)


def _verdict(candidate: dict[str, Any] | None, pick: dict[str, Any]) -> str:
    if candidate is None:
        return "not a candidate"
    if candidate["label"] == pick["pick"]:
        return "the pick"
    deficit = candidate["deficit"]
    if deficit is None:
        return "the best"
    bound = f"deficit {100 * deficit['value']:.1f}, 95% bound {100 * deficit['upper']:.1f} points"
    return ("as good as the best" if candidate["as_good_as_best"] else "not shown as good") + f" ({bound})"


def curve(db: Path, run_id: int) -> list[dict[str, Any]]:
    from accumbench.analysis.critical_batch import curves_of
    from accumbench.store import Store

    with Store.open_readonly(f"sqlite:///{db}") as store:
        [found] = curves_of(store, [run_id])
        ebs = {row["step"]: row["effective_batch_size"] for row in store.steps_of([run_id])}
    points = [p.to_json() for p in found.points]
    for point in points:  # the EBS auto trained at after the state (the next step's)
        point["ebs_in_force"] = ebs.get(point["step"] + 1)
    return points


def goal(task: dict[str, Any]) -> dict[str, Any]:
    """Is a schedule as good as the best fixed EBS, with >= 30% fewer optimizer steps than that EBS?"""
    arms_ = task["arms"]
    fixed = {label: row for label, row in arms_.items() if row["schedule"] is None}
    best_fixed = max(fixed, key=lambda label: fixed[label]["best_val"])
    out = {"best_fixed": best_fixed, "met_by": []}
    for label, row in arms_.items():
        if row["schedule"] is None:
            continue
        good = row["verdict"] in ("the pick", "the best") or row["verdict"].startswith("as good")
        fewer = 1 - row["steps"] / fixed[best_fixed]["steps"]
        out[label] = dict(as_good=good, fewer_steps=fewer)
        if good and fewer >= 0.30:
            out["met_by"].append(label)
    return out


def tables(results: dict[str, Any]) -> str:
    lines = ["| task | arm | lr | best val acc (mean of 2 seeds) | optimizer steps, whole run | steps to target | "
             "samples to target | pick-best's verdict |", "|---|---|---|---:|---:|---:|---:|---|"]
    for name, task in results["tasks"].items():
        for label, row in task["arms"].items():
            reach = row["to_target"]
            lr = f"{row['lr']:g}" if row["lr"] else results["schedule_lr"]
            steps, samples = ("-", "-") if reach is None else (f"{reach['steps']:.0f}", f"{reach['samples']:.0f}")
            lines.append(f"| {name} | {label} | {lr} | {row['best_val']:.4f} | {row['steps']:.0f} | {steps} | "
                         f"{samples} | {row['verdict']} |")
    lines += ["", "| task | state (epochs trained) | EBS in force after it (auto) | loss per branch EBS (16 / 32 / 64 / "
              "128 / 256) | B_crit | B_simple |", "|---|---:|---:|---|---:|---:|"]
    for name, task in results["tasks"].items():
        for point in task["curve"]:
            losses = " / ".join(f"{v:.4f}" for _, v in sorted(point["losses"].items(), key=lambda kv: int(kv[0])))
            b_simple = "-" if point["b_simple"] is None else f"{point['b_simple']:.0f}"
            lines.append(f"| {name} | {point['epoch']:g} | {point['ebs_in_force'] or '-'} | {losses} | "
                         f"{point['critical_batch_size']} | {b_simple} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, help="train one task only")
    parser.add_argument("--no-tables", action="store_true", help="train only")
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on the demo data: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "ebs_schedule.json")
    parser.add_argument("--work", type=Path, help="where the stores go (default: bench/results; --tiny: a temporary one)")
    args = parser.parse_args()
    tasks = (args.task,) if args.task else TASKS
    with tempfile.TemporaryDirectory() as tmp:
        if not args.tiny and not all((DATA / task).is_dir() for task in tasks):
            raise SystemExit(f"no SST-2 or SUBJ under {DATA}; this benchmark needs the shared data (or --tiny)")
        work = args.work or (Path(tmp) if args.tiny else RESULTS)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        results: dict[str, Any] = {"machine": machine(), "model": args.tiny or "minilm", "tiny": bool(args.tiny),
                                   "schedule_lr": "1e-3 at 8, sqrt" if args.tiny else "3e-5 at 16, sqrt", "tasks": {}}
        for task in tasks:
            db = work / f"schedule_{task}.db"
            fixed_grid(task, db, work, args.tiny)
            train_schedules(task, db, work, args.tiny)
            branched = branch(db, work, args.tiny)
            if args.no_tables:
                continue
            found = arms(db, work, args.tiny)
            found["curve"] = curve(db, branched)
            found["goal"] = goal(found)
            results["tasks"][task] = found
    if args.no_tables:
        return
    print(tables(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
