"""`accumbench report --format html`: one self-contained study page, opened in a real headless Chromium.

The page is built from a real sweep of a tiny BERT (2 EBS x 2 lrs x 2 seeds on torch, and one lr on
accelerate too, with evaluations along the way), so every section has something to show: the pick,
the table, the curves, accuracy against time, the noise scale with B_crit, the lr x EBS grid, the
backend comparison and the runs' configurations."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import browser
import pytest
from conftest import wait_for
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.store import Store, resolve_db_url
from accumbench.sweep.spec import build_spec
from accumbench.sweep.worker import run_sweep

SECTIONS = ("picks", "table", "curves", "efficiency", "noise", "lr-grid", "backends", "runs")


@pytest.fixture(scope="module")
def study_db(tiny_bert, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("study") / "runs.db"
    common = dict(models=tiny_bert, effective_batch_sizes="8,16", seeds="1,2", dataset="demo", max_train_samples=64,
                  max_eval_samples=32, max_length=32, epochs=2, micro_batch_size=8, checkpoint=False, eval_every=2)
    assert run_sweep(build_spec(**common, lrs="1e-3,1e-2", backends="torch", name="grid"), db=str(db)).ok
    assert run_sweep(build_spec(**common, lr=1e-3, backends="accelerate", name="accelerate"), db=str(db)).ok
    return db


def write_page(db: Path, out: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["report", "--format", "html", "-o", str(out), "--db", str(db), *args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_the_page_is_self_contained_and_has_every_section(study_db, tmp_path):
    out = tmp_path / "study.html"
    assert f"wrote {out} (html)" in write_page(study_db, out).stdout
    page = out.read_text()
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page, section
    # Nothing from the network: no script, no external source or link, figures are PNG data.
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    images = re.findall(r"<img src='data:image/png;base64,([^']+)'", page)
    # The headline first, then validation, train loss, time, noise scale and lr grid.
    assert len(images) == len(re.findall("<img", page)) == 6
    assert re.search(r"<img src='data:image/png;base64,[^']+' alt='([^']+)'", page).group(1).endswith("-headline.png")
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    # The answer first: a pick per backend (both ran), each with its words, before the table.
    picks = re.findall(r"<p class='answer'>([^<]+)</p>", page)
    assert len(picks) == 2 and all(": pick EBS " in p for p in picks)
    assert page.index("class='answer'") < page.index("<section id='table'>")
    assert "Chosen on validation (tuned protocol" in page and "reported, never used to choose" in page
    # Each answer is one sentence, e.g. 'EBS 16 at lr 1e-3: as good as the best, EBS 8 (p = 0.5), with 2.0x fewer
    # optimizer steps'; the justification with its p-values is folded under "why".
    assert all(re.search(r": pick EBS (8|16) at lr [0-9.e-]+: (the best on validation|as good as the best)", p)
               for p in picks), picks
    assert page.count("<details class='why'><summary>why</summary>") == 2
    # The full table and each run's configuration are a click away.
    assert page.count("<details>") == 2 + 12 and "all columns" in page and "best test acc<br>(picked on test)" in page
    assert '"noise_scale_decay": 0.99' in page and "torch 2." in page


def test_the_page_names_no_path_of_this_machine(study_db, tiny_bert, tmp_path):
    """A page is handed to others: the database by its file name, local models and data by their last
    component; no directory of the machine that wrote it."""
    out = tmp_path / "study.html"
    write_page(study_db, out)
    page = out.read_text()
    assert "from runs.db, written " in page
    for private in (str(study_db.parent), str(Path(tiny_bert).parent), str(tmp_path), os.getcwd(), str(Path.home())):
        assert private not in page, private
    assert '"model": "' + Path(tiny_bert).name + '"' in page  # the model directory's name, in each configuration


def test_the_page_in_a_real_browser(study_db, tmp_path):
    if not browser.available():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs chromium and chromium-driver")
        pytest.skip("no Chromium: apt-get install chromium chromium-driver, and pip install selenium")
    out = tmp_path / "study.html"
    write_page(study_db, out)
    view = browser.view(out)
    (tmp_path / "study.png").write_bytes(view.screenshot)
    assert view.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(view.screenshot) > 50_000
    assert len(view.images) == 6 and view.images[0]["alt"].endswith("-headline.png")  # the answer at a glance first
    assert all(image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0 for image in view.images)
    assert view.errors == [], view.console
    assert view.title.startswith("accumbench study: 12 runs in 6 cells")
    # The pick is visible text; the runs' configurations stay folded until clicked.
    assert re.search(r"tiny-bert\w*, torch: pick EBS (8|16)", view.visible_text)
    assert "Chosen on validation" in view.visible_text and "noise_scale_decay" not in view.visible_text
    # The one-sentence answer shows without scrolling on a 1280x800 screen.
    laptop = browser.view(out, height=800)
    assert 0 < laptop.answer_bottom <= laptop.viewport_height, (laptop.answer_bottom, laptop.viewport_height)
    # The evidence behind each pick (p-values, the noise scale in words) is folded under "why" until opened.
    assert "why" in view.visible_text and "B_simple, the gradient noise scale, is" not in view.visible_text


def test_no_finished_run_gives_a_page_that_says_so(tmp_path):
    db = tmp_path / "runs.db"
    Store.open(resolve_db_url(str(db))).close()
    out = tmp_path / "study.html"
    write_page(db, out)
    page = out.read_text()
    assert "No finished run to show yet: no runs match (status FINISHED)" in page and "Traceback" not in page


@pytest.mark.parametrize("target, fragment", [
    ("dir", "is a directory; give a file name"),
    ("/proc/accumbench-study.html", "cannot write /proc/accumbench-study.html"),
    ("/no/such/dir/study.html", "directory /no/such/dir does not exist"),
])
def test_an_unwritable_output_is_one_line_exit_2_and_nothing_written(study_db, tmp_path, target, fragment):
    out = tmp_path / "dir" if target == "dir" else Path(target)
    (tmp_path / "dir").mkdir()
    before = study_db.read_bytes()
    result = write_page(study_db, out, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list((tmp_path / "dir").iterdir()) == [] and not Path("/proc/accumbench-study.html").exists()
    assert study_db.read_bytes() == before


def test_watch_rewrites_the_page_until_ctrl_c(study_db, tmp_path):
    out = tmp_path / "study.html"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    watcher = subprocess.Popen([sys.executable, "-m", "accumbench", "report", "--format", "html", "-o", str(out),
                                "--watch", "0.2", "--db", str(study_db)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        first = wait_for(lambda: out.exists() and out.stat().st_mtime_ns, "the first page")
        assert "<meta http-equiv='refresh' content='1'>" in out.read_text()
        wait_for(lambda: out.stat().st_mtime_ns != first, "the page to be rewritten")
        assert "rewritten every 1 s" in out.read_text()
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            stdout, stderr = watcher.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            watcher.kill()  # a watcher left behind would rewrite its page, and load the machine, for ever
            raise
    assert watcher.returncode == 0, stderr
    assert f"watching: writing {out} every 0.2 s" in stdout and f"stopped watching; {out} holds the last page" in stdout
    assert not list(tmp_path.glob(".study.html.*.partial"))  # every write was renamed into place


@pytest.mark.parametrize("args, fragment", [
    (["--watch", "5"], "--watch rewrites a study page: add --format html -o study.html"),
    (["--format", "html", "-o", "PAGE", "--watch", "0"], "--watch takes a positive number of seconds, got 0"),
])
def test_bad_watch_input_is_one_line_and_exit_2(study_db, tmp_path, args, fragment):
    args = [str(tmp_path / "p.html") if a == "PAGE" else a for a in args]
    result = CliRunner().invoke(app, ["report", "--db", str(study_db), *args])
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.html").exists()


def test_captions_say_only_what_their_figure_draws():
    import pandas as pd

    from accumbench.present.study_page import _caption

    one_seed = pd.DataFrame({"cell": ["a", "b"], "seed": [1, 1]})
    two_seeds = pd.DataFrame({"cell": ["a", "a", "b"], "seed": [1, 2, 1]})
    assert _caption("validation", one_seed, None).endswith("(one seed per series: no band)")
    assert _caption("validation", two_seeds, None).endswith("; the band spans the seeds")
    assert "mean over seeds" not in _caption("train-loss", one_seed, None)
    assert _caption("train-loss", two_seeds, None).endswith(", mean over seeds")
    assert _caption("noise-scale", one_seed, None).endswith("(no critical batch size was fitted)")
    assert _caption("noise-scale", one_seed, 181.7).endswith("and B_crit ≈ 182 (red)")
