"""What a sweep costs beyond training.

1. Claim throughput: W worker processes drain a sweep of N cells through Store.claim (stale-run
   reaping, reading the sweep's runs, the choice, the insert) and finish each run at once, on
   SQLite and, given a URL, on PostgreSQL. Reports claims/s and checks each cell was claimed once.
2. With --demo: the wall time of `accumbench sweep --preset demo` in a fresh directory (the README's
   main command), and of its rerun, which must train nothing.

Numbers only, no assertions:
    python bench/sweep.py [--cells 300] [--workers 1,2,4] [--postgres URL] [--demo]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _columns(cell: str) -> dict:
    return dict(config_json="{}", config_hash=cell, backend="torch", model="m", dataset="demo", seed=1, lr=1e-3,
                effective_batch_size=8, micro_batch_size=8, accumulation_steps=1, epochs=1, max_length=16,
                optimizer="adam", scheduler="constant")


def _drain(url: str, sweep_id: int, cells: list[str], start, counts) -> None:
    from accumbench.store import FINISHED, RUNNING, Store

    def choose(runs):
        live = {r["config_hash"] for r in runs if r["status"] in (RUNNING, FINISHED)}
        free = next((c for c in cells if c not in live), None)
        return None if free is None else {**_columns(free), "attempt": 1}

    with Store.open(url) as store:
        start.wait()
        claimed = 0
        while True:
            run_id, _ = store.claim(sweep_id, choose, stale_after=600)
            if run_id is None:
                break
            store.finish_run(run_id, FINISHED)
            claimed += 1
    counts.append(claimed)


def claim_throughput(url: str, cells: int, workers: int) -> dict:
    from accumbench.store import Store

    names = [f"cell{i:05d}" for i in range(cells)]
    with Store.open(url) as store:
        sweep_id = store.open_sweep(f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, "{}", cells)["id"]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start, counts = manager.Event(), manager.list()
        procs = [ctx.Process(target=_drain, args=(url, sweep_id, names, start, counts)) for _ in range(workers)]
        for p in procs:
            p.start()
        time.sleep(2.0)  # let every worker import and open the store before the clock starts
        began = time.perf_counter()
        start.set()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - began
        per_worker = list(counts)
    with Store.open(url) as store:
        runs = store.sweep_runs(sweep_id)
    once = len(runs) == cells and len({r["config_hash"] for r in runs}) == cells
    return dict(workers=workers, cells=cells, seconds=round(seconds, 2), claims_per_second=round(cells / seconds, 1),
                per_worker=per_worker, each_cell_once=once)


def demo_wall_time() -> dict:
    exe = [sys.executable, "-m", "accumbench", "sweep", "--preset", "demo"]
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        subprocess.run(exe, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        first = time.perf_counter() - began
        began = time.perf_counter()
        rerun = subprocess.run(exe, cwd=tmp, check=True, capture_output=True, text=True).stdout
        second = time.perf_counter() - began
    return dict(demo_seconds=round(first, 1), rerun_seconds=round(second, 1),
                rerun_trained_nothing="(0 run by this worker)" in rerun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--postgres", default=os.environ.get("ACCUMBENCH_TEST_POSTGRES_URL"),
                        help="a maintenance-database URL; a scratch database is made and dropped")
    parser.add_argument("--demo", action="store_true", help="also time `accumbench sweep --preset demo`")
    args = parser.parse_args()

    results: dict = {"claims": []}
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite", f"sqlite:///{tmp}/bench.db")]
        scratch = None
        if args.postgres:
            from sqlalchemy import create_engine, make_url, text

            scratch = f"accumbench_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{scratch}"'))
            targets.append(("postgresql", make_url(args.postgres).set(database=scratch).render_as_string(False)))
        try:
            for name, url in targets:
                for workers in map(int, args.workers.split(",")):
                    row = {"database": name, **claim_throughput(url, args.cells, workers)}
                    results["claims"].append(row)
                    print(json.dumps(row))
        finally:
            if scratch:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
    if args.demo:
        results["demo"] = demo_wall_time()
        print(json.dumps(results["demo"]))
    out = Path(__file__).parent / "results" / "sweep.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
