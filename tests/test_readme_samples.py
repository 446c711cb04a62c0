"""The README's sample outputs are real: every line it shows for `make demo`, `accumbench report` and
`accumbench pick-best` is what the tool prints on the demo store, timings and paths masked.

The demo takes minutes, so this runs where one has been trained: `.ci/run` runs it right after `make demo`
with ACCUMBENCH_DEMO_DB (the store) and ACCUMBENCH_DEMO_LOG (what `make demo` printed). Elsewhere it is
skipped; the masking itself is tested always."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_DB, DEMO_LOG = os.environ.get("ACCUMBENCH_DEMO_DB"), os.environ.get("ACCUMBENCH_DEMO_LOG")
needs_demo = pytest.mark.skipif(not DEMO_DB, reason="no demo store: .ci/run sets ACCUMBENCH_DEMO_DB after make demo")


def sample(name: str) -> list[str]:
    """The lines of the code block after `<!-- sample: NAME -->` in the README."""
    text = README.read_text()
    start = text.index(f"<!-- sample: {name} -->")
    block = text[text.index("```\n", start) + 4:]
    return block[: block.index("```")].splitlines()


def mask(text: str) -> str:
    """Timings and paths out, whitespace folded: a terminal wraps and pads where a pipe does not."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"\b\d+(\.\d+)? samples/s", "<rate> samples/s", text)
    text = re.sub(r"\b\d+h\d\dm\b|\b\d+m\d\ds\b|\b\d+s\b", "<t>", text)
    text = re.sub(r"\S*/runs\.db\b", "<dir>/runs.db", text)
    text = re.sub(r"─+", "─", text)  # a rule fills the line: its length follows the ETA's before it
    return " ".join(text.split())


def assert_shown_in_order(shown: list[str], printed: str) -> None:
    """Each line shown (but '...', the cut) is in what was printed, in the same order."""
    printed, at = mask(printed), 0
    for line in shown:
        if line.strip() in ("", "..."):
            continue
        found = printed.find(mask(line), at)
        assert found >= 0, f"the README shows {line!r}, which the tool did not print (after position {at})"
        at = found + len(mask(line))


def test_masking_folds_wraps_and_hides_timings_and_paths():
    printed = ("[1/3 done] EBS 32 · ETA 13m27s ────────\n"
               "EBS 16 = 1 x 16, lr 1e-4, torch backend on cpu (x86_64, 2 \nthreads)\nepoch 1/2  8.3 samples/s  62s\n"
               "minilm  16  1m44s\nrecorded in /tmp/x/runs.db as sweep 'demo'")
    assert_shown_in_order(["[1/3 done] EBS 32 · ETA 3m40s ─────────",
                           "EBS 16 = 1 x 16, lr 1e-4, torch backend on cpu (x86_64, 2 threads)", "...",
                           "epoch 1/2  15.7 samples/s  33s", "minilm  16  1m22s",
                           "recorded in /home/you/accumbench/runs.db as sweep 'demo'"], printed)
    with pytest.raises(AssertionError, match="lr 0.0001"):
        assert_shown_in_order(["EBS 16 = 1 x 16, lr 0.0001"], printed)
    with pytest.raises(AssertionError):  # the right lines in the wrong order
        assert_shown_in_order(["minilm  16  1m44s", "epoch 1/2  8.3 samples/s  62s"], printed)


@needs_demo
def test_the_make_demo_sample_is_what_make_demo_printed():
    assert DEMO_LOG, "ACCUMBENCH_DEMO_LOG: the output of make demo"
    assert_shown_in_order(sample("make demo"), Path(DEMO_LOG).read_text())


@needs_demo
@pytest.mark.parametrize("command", ["report", "pick-best"])
def test_the_report_and_pick_best_samples_are_what_they_print_on_the_demo(command):
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    printed = subprocess.run([sys.executable, "-m", "accumbench", command, "--db", DEMO_DB], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert_shown_in_order(sample(command), printed)
