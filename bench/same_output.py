"""Does a change alter what accumbench prints? The read-only commands run by two versions of the code on
one run database, their outputs compared.

    python bench/same_output.py --before 923056d --db runs.db            # that commit against the tree
    python bench/same_output.py --before 923056d --db runs.db --mask-timings --db-after other.db

Each version runs in its own process: the working tree as it is, and `--before` checked out into a
temporary git worktree (put first on PYTHONPATH, so it is the accumbench imported). On one database the
outputs should be identical byte for byte apart from the study page's 'written <time>' stamp, which is
always masked. `--db-after` gives the second version another database (a demo trained again): then
timings differ run to run, and `--mask-timings` blanks them (training times, samples/s, the seconds a
pick quotes, and the figures, which draw them). Prints a unified diff per command; exit 1 if any differs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "report": ["report"],
    "report-wide": ["report", "--wide"],
    "report-csv": ["report", "--format", "csv"],
    "report-json": ["report", "--format", "json"],
    "pick-best": ["pick-best"],
    "pick-best-json": ["pick-best", "--json"],
    "pick-best-protocols": ["pick-best", "--compare-protocols"],
    "report-html": ["report", "--format", "html"],
}
# JSON and CSV fields that hold a measured duration or a rate (they vary run to run) or a moment.
TIMED_FIELD = re.compile(r"(seconds|per_second|time_ratio|_at$|peak_memory)")


def run_all(python_path: str | None, db: Path, out: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    if python_path:
        env["PYTHONPATH"] = python_path
    texts = {}
    for name, args in COMMANDS.items():
        done = subprocess.run([sys.executable, "-m", "accumbench", *args, "--db", str(db)], env=env,
                              capture_output=True, text=True, cwd=out)
        texts[name] = f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    return texts


def mask(name: str, text: str, timings: bool, dbs: tuple[str, ...] = ()) -> str:
    text = re.sub(r"written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "written <time>", text)
    if not timings:
        return text
    for db in dbs:
        text = text.replace(db, "<db>")
    text = re.sub(r"\(\d+ s of\s+training\)", "(<t> s of training)", text)  # the terminal may wrap it
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,<figure>", text)
    text = re.sub(r"started [^,]+, finished [^<]+<", "started <time>, finished <time><", text)
    text = re.sub(r"<table>.*?</table>", _mask_timed_html_columns, text, flags=re.DOTALL)
    if name.endswith("json"):
        head, _, body = text.partition("\n")
        return head + "\n" + json.dumps(_drop_timed(json.loads(body)), indent=1, sort_keys=True)
    if name.endswith("csv"):
        lines = text.splitlines()
        header = lines[1].split(",")
        keep = [i for i, column in enumerate(header) if not TIMED_FIELD.search(column)]
        # The CSV has no quoted commas in the timed columns' neighbours that matter here: the check is coarse.
        return "\n".join([lines[0]] + [",".join(c for i, c in enumerate(line.split(",")) if i in keep)
                                       for line in lines[1:]])
    text = re.sub(r"\b\d+h\d\dm\b|\b\d+m\d\ds\b|\b\d+s\b", "<time>", text)
    # --wide's samples/s and peak MB (one decimal; so is B_simple, which the CSV and JSON compare exactly)
    return re.sub(r"\b\d[\d,]*\.\d\b", "<x.x>", text) if name == "report-wide" else text


def _mask_timed_html_columns(table: re.Match) -> str:
    """The study page's tables: the cells under a heading that names a time, a rate or memory."""
    html = table.group(0)
    headings = re.findall(r"<th[^>]*>(.*?)</th>", html)
    timed = {i for i, h in enumerate(headings) if re.search(r"time|per s|peak", h)}

    def row(match: re.Match) -> str:
        cells = re.findall(r"<td[^>]*>.*?</td>", match.group(0))
        return "<tr>" + "".join("<td>&lt;t&gt;</td>" if i in timed else c for i, c in enumerate(cells)) + "</tr>"

    return re.sub(r"<tr>(?:<td.*?</td>)+</tr>", row, html)


def _drop_timed(value):
    if isinstance(value, dict):
        return {k: _drop_timed(v) for k, v in value.items() if not TIMED_FIELD.search(k)}
    if isinstance(value, list):
        return [_drop_timed(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the version to compare against")
    parser.add_argument("--db", type=Path, required=True, help="run database both versions read")
    parser.add_argument("--db-after", type=Path, help="the working tree reads this one instead")
    parser.add_argument("--mask-timings", action="store_true", help="blank measured times (another training)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="accumbench-same-output-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)
        try:
            work = Path(tmp) / "cwd"
            work.mkdir()
            before = run_all(str(tree), args.db.resolve(), work)
            after = run_all(None, (args.db_after or args.db).resolve(), work)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    differ = 0
    for name in COMMANDS:
        dbs = tuple(str(db.resolve()) for db in (args.db, args.db_after) if db is not None)
        old, new = (mask(name, t[name], args.mask_timings, dbs) for t in (before, after))
        diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"before/{name}", f"after/{name}",
                                         lineterm=""))
        print(f"{name}: {'same' if not diff else f'{len(diff)} diff lines'} ({len(new.splitlines())} lines)")
        if diff:
            differ += 1
            print("\n".join(diff[:80]))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
