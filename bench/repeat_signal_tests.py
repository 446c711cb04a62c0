"""Every test that signals or kills a process, run N times, each round in a fresh pytest: how often
each passed. A test that races the clock shows up here as 19/20 long before it fails someone's CI.

    python bench/repeat_signal_tests.py                   # 20 rounds (~40 min on 2 CPU cores)
    python bench/repeat_signal_tests.py --count 5 -k sigterm

Each round gives the random-SIGKILL test another seed (ACCUMBENCH_FAULTS_SEED), so the kills land at
other moments. Set ACCUMBENCH_TEST_POSTGRES_URL to run the PostgreSQL variants too. Writes
bench/results/repeat_signal_tests.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from commands import machine  # noqa: E402

# Every test that sends a signal to, or SIGKILLs, a real process.
SIGNAL_TESTS = [
    "tests/test_sweep.py::test_sigkill_mid_run_then_resume_finishes_every_cell_once",
    "tests/test_sweep.py::test_ctrl_c_marks_the_run_killed_exits_130_and_resume_does_not_count_it",
    "tests/test_train.py::test_sigterm_marks_the_run_killed",
    "tests/test_study_page.py::test_watch_rewrites_the_page_until_ctrl_c",
    "tests/test_faults.py::test_random_sigkills_of_two_workers_leave_every_cell_finished_once",
    "tests/test_faults.py::test_ctrl_c_reaches_every_local_worker_and_each_records_its_run_killed",
]


def one_round(round_number: int, select: str | None, work: Path) -> dict[str, str]:
    """One fresh pytest over the signal tests: each test id (with its parameters) -> passed/failed/skipped."""
    report = work / f"round-{round_number}.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *SIGNAL_TESTS]
    if select:
        command += ["-k", select]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCUMBENCH_FAULTS_SEED": str(round_number)}
    subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("-k", dest="select", help="only the tests pytest -k selects")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "repeat_signal_tests.json")
    args = parser.parse_args()
    tally: dict[str, dict[str, int]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="accumbench-repeat-") as tmp:
        for round_number in range(1, args.count + 1):
            for name, outcome in one_round(round_number, args.select, Path(tmp)).items():
                tally.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})[outcome] += 1
            failed = sum(t["failed"] for t in tally.values())
            print(f"round {round_number}/{args.count}: {failed} failures so far, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    lines = ["| test | passed | failed | skipped |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {t['passed']}/{args.count} | {t['failed']} | {t['skipped']} |" for name, t in tally.items()]
    print("\n".join(lines))
    result = {"machine": machine(), "rounds": args.count, "seconds": round(time.monotonic() - started),
              "tests": tally}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if any(t["failed"] for t in tally.values()) or not tally:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
