"""What the benchmark scripts share: accumbench commands run the way a user runs them, and the machine
named the same way in every result file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def accumbench(*args: str, cwd: Path) -> str:
    """One accumbench command in its own process, offline, as a user runs it; its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-m", "accumbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"accumbench {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def sweep_seconds(db: Path) -> float:
    """A store's wall time of training from its runs: first start to last finish (the same on a resumed rerun)."""
    import sqlite3
    from datetime import datetime

    with sqlite3.connect(db) as con:
        start, end = con.execute("SELECT MIN(started_at), MAX(finished_at) FROM runs").fetchone()
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def machine() -> str:
    import platform

    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
