"""Errors first: a dataset or model that cannot be used is one `error:` line, with no progress bar or library
log line before it ("Generating train split: 120 examples" was), and nothing written. The libraries are quiet
while they load, and only then (model.quiet_loading, sources.quiet_loading)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# What the suite's conftest quiets for every test: removed here, so that the command is seen as a user sees it.
QUIETED = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY",
           "DATASETS_VERBOSITY", "ACCUMBENCH_DB")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_csv_without_a_text_column_is_one_error_line_and_writes_nothing(tmp_path, command):
    work = tmp_path / "work"
    work.mkdir()
    rows = "".join(f"review number {i},{i % 2}\n" for i in range(120))
    (work / "data.csv").write_text("body,label\n" + rows)
    env = {key: value for key, value in os.environ.items() if key not in QUIETED}
    # A fresh datasets cache: the file is really read (a cached one would skip its progress bar anyway).
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"))
    done = subprocess.run([sys.executable, "-m", "accumbench", command, "--dataset", "data.csv"], cwd=work,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "error: dataset 'data.csv' has no text column (columns: body, label); name one with --text-column"]
    assert done.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == ["data.csv"]  # no runs.db, no reserve beside it


def test_the_model_loads_quietly_and_the_libraries_are_as_they_were_after():
    from transformers.utils import logging as hf_logging

    from accumbench.model import quiet_loading

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        with quiet_loading():
            assert hf_logging.get_verbosity() == hf_logging.ERROR
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled() == bars
    finally:
        hf_logging.set_verbosity(verbosity)


def test_a_dataset_loads_quietly_and_the_libraries_are_as_they_were_after():
    from datasets.utils import logging as datasets_logging
    from huggingface_hub import utils as hub_utils

    from accumbench.data.sources import quiet_loading

    hub_bars, verbosity = hub_utils.are_progress_bars_disabled(), datasets_logging.get_verbosity()
    datasets_logging.set_verbosity_info()
    try:
        with quiet_loading():
            assert datasets_logging.get_verbosity() == datasets_logging.ERROR
            assert hub_utils.are_progress_bars_disabled()
        assert datasets_logging.get_verbosity() == datasets_logging.INFO
        assert hub_utils.are_progress_bars_disabled() == hub_bars
    finally:
        datasets_logging.set_verbosity(verbosity)
