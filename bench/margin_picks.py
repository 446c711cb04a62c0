"""The picks of a store before and after "as good as the best" meant "shown within a margin": every protocol
of `pick-best --compare-protocols`, with the bound beside each pick.

    before   an older checkout's pick-best (--before DIR, e.g. a git worktree of 2f7565f, which screened by
             "not significantly worse": Welch across seeds, else a paired test), on the same store
    after    this checkout's pick-best: the deficit's 95% upper bound below --margin (default one point)

    git worktree add /tmp/before 2f7565f
    python bench/margin_picks.py bench/results/tuned_study_subj.db --before /tmp/before
    python bench/margin_picks.py bench/results/tuned_study.db --margin 0.02

Prints a markdown table, and writes it beside the store as <store>.margin.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pick_best(db: Path, checkout: Path, *args: str) -> dict[str, Any]:
    """`accumbench pick-best --json ARGS` as the checkout at `checkout` answers it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-m", "accumbench", "pick-best", "--json", "--db", str(db), *args],
                          env=env, capture_output=True, text=True, cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"pick-best {' '.join(args)} in {checkout} failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout)


def _bound(row: dict[str, Any]) -> str:
    found = row.get("deficit")
    if row["pick"] == row.get("best_on_validation") or found is None:
        return "the best"
    upper = "unbounded" if found["upper"] is None else f"{found['upper'] * 100:.1f}"
    return f"deficit {found['value'] * 100:.1f}, bound {upper}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path)
    parser.add_argument("--before", type=Path, help="an older checkout whose pick-best is 'before'")
    parser.add_argument("--margin", default=None, help="pick-best --margin (default: the metric's, one point)")
    args = parser.parse_args()
    args.db = args.db.resolve()  # each checkout's pick-best runs in its own directory
    margin = ["--margin", args.margin] if args.margin else []
    after = pick_best(args.db, ROOT, "--compare-protocols", *margin)["comparisons"]
    before = pick_best(args.db, args.before, "--compare-protocols")["comparisons"] if args.before else None
    tuned = pick_best(args.db, ROOT, *margin)["picks"]
    lines = ["| protocol | before: pick (val acc) | after: pick (val acc) | after: the pick's deficit and 95% bound, "
             "points |", "|---|---|---|---|"]
    for index, comparison in enumerate(after):
        old = {row["name"]: row for row in before[index]["protocols"]} if before else {}
        for row in comparison["protocols"]:
            was = old.get(row["name"])
            shown = f"{was['pick']} ({was['metric_mean']:.4f})" if was else "-"
            lines.append(f"| {row['name']} | {shown} | {row['pick']} ({row['metric_mean']:.4f}) | {_bound(row)} |")
    lines += [""] + [f"{p['group']}: pick {p['answer']}" for p in tuned]
    lines += [f"  {line}" for p in tuned for line in p["bounds"]]
    lines += [f"warning: {w}" for p in tuned for w in p["warnings"]]
    print("\n".join(lines))
    args.db.with_suffix(".margin.json").write_text(json.dumps(
        {"after": after, "before": before, "tuned": tuned, "table": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
