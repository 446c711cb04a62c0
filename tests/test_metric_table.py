"""One metric, one entry: every list, column, heading, margin and help string derives from metrics.TABLE.

Known answers first (what derives from the table today, spelled out), then the proof of the one hop: a toy
metric appended to the table of a copy of the package shows in that copy's report (a subprocess with PYTHONPATH
at the copy) on a small store written by this accumbench, before any writable open (read as missing) and after
one added its columns by itself (read as recorded, and chosen on).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import accumbench
from accumbench import deficit, metrics, task_metrics, vocabulary
from accumbench.analysis import cells, runs
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.present import tables
from accumbench.store import FINISHED, SCHEMA_VERSION, Store
from accumbench.store.schema import EPOCH_COLUMNS, METRIC_COLUMNS

NAMES = ["val_accuracy", "val_loss", "val_f1", "val_mcc"]


# --- known answers: what derives from the table ------------------------------------------------------------


def test_the_table_names_every_selection_metric_in_order():
    assert [m.name for m in metrics.TABLE] == NAMES
    assert [m.test for m in metrics.TABLE] == ["test_accuracy", "test_loss", "test_f1", "test_mcc"]
    assert metrics.TABLE[0] is metrics.ACCURACY  # the default
    assert [m.name for m in metrics.TABLE if not m.higher_is_better] == ["val_loss"]


def test_the_vocabulary_derives_from_the_table():
    assert vocabulary.METRICS == {"val_accuracy": "validation accuracy", "val_loss": "validation loss",
                                  "val_f1": "validation F1", "val_mcc": "validation MCC"}
    assert vocabulary.METRIC_HEADINGS == {"val_accuracy": "val acc", "val_loss": "val loss", "val_f1": "val F1",
                                          "val_mcc": "val MCC"}
    assert vocabulary.BOOTSTRAPPED == {"val_f1": "f1", "val_mcc": "mcc"}
    assert [vocabulary.higher_is_better(name) for name in NAMES] == [True, False, True, True]
    assert [vocabulary.curve_metric(name)[0] for name in NAMES] == ["val_accuracy", "val_accuracy", "val_f1",
                                                                      "val_mcc"]
    assert [vocabulary.test_metric(m.name) for m in metrics.TABLE] == [m.test for m in metrics.TABLE]


def test_scores_are_the_tables_and_each_epoch_records_those_the_evaluation_does_not():
    scored = {m.key for m in metrics.TABLE if m.score is not None}
    assert scored == {"accuracy", "f1", "mcc"} == set(task_metrics.METRIC_FUNCTIONS)
    assert all(task_metrics.batched_metric(key) is metrics.named(f"val_{key}").score for key in scored)
    assert set(task_metrics.scores([0, 1, 1, 0], [0, 1, 0, 0], 2)) == {"f1", "mcc"}  # accuracy: the evaluation's


def test_the_store_generates_each_scored_metrics_columns_after_the_others():
    assert METRIC_COLUMNS == metrics.scored_columns() == ("val_f1", "val_mcc", "test_f1", "test_mcc")
    assert EPOCH_COLUMNS[-4:] == METRIC_COLUMNS  # appended, as ALTER TABLE ADD COLUMN appends
    assert all(column in EPOCH_COLUMNS for m in metrics.TABLE for column in m.columns)


def test_the_analysis_reads_every_metric_at_the_best_epoch():
    assert runs.AT_BEST_EPOCH == ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "val_f1", "val_mcc",
                                  "test_f1", "test_mcc")
    assert cells.METRICS[:11] == ("best_train_accuracy", "val_accuracy", "best_epoch", "test_accuracy",
                                  "best_test_accuracy", "val_loss", "test_loss", "val_f1", "val_mcc", "test_f1",
                                  "test_mcc")


def test_the_report_has_two_columns_per_metric_and_leads_with_the_chosen_one():
    headings = {name: column.heading for name, column in tables.COLUMNS.items()}
    assert {name: headings[name] for name in ("val_acc", "test_acc", "val_loss", "test_loss", "val_f1", "test_f1",
                                              "val_mcc", "test_mcc")} == {
        "val_acc": "val acc\nmean±std", "test_acc": "test acc\nmean±std", "val_loss": "val\nloss",
        "test_loss": "test\nloss", "val_f1": "val F1\nmean±std", "test_f1": "test F1\nmean±std",
        "val_mcc": "val MCC\nmean±std", "test_mcc": "test MCC\nmean±std"}
    names = list(tables.COLUMNS)
    assert names[names.index("val_acc"):names.index("time")] == [
        "val_acc", "test_acc", "best_epoch", "best_test_acc", "val_loss", "test_loss", "val_f1", "test_f1", "val_mcc",
        "test_mcc"]
    assert tables.LEADING_COLUMNS == {"val_loss": ("val_loss", "test_loss"), "val_f1": ("val_f1", "test_f1"),
                                      "val_mcc": ("val_mcc", "test_mcc")}


def test_margins_and_their_units_are_each_metrics():
    assert [deficit.Margin().of(name) for name in NAMES] == [0.01, 0.02, 0.01, 0.01]
    assert [deficit.Margin().words(name) for name in NAMES] == ["1 point", "2% of the best's loss", "1 point",
                                                                  "1 point"]
    assert [deficit.amount(0.0123, name) for name in NAMES] == ["1.2", "1.2%", "1.2", "1.2"]
    assert [m.unit for m in metrics.TABLE] == ["points", "% of the best's loss", "points", "points"]


def test_the_help_lists_every_metric():
    assert metrics.choices_help() == "val_accuracy, val_loss, val_f1 (positive class; macro with 3+ labels) or val_mcc"
    assert metrics.race_help() == "val_accuracy, val_f1 or val_mcc (not val_loss: not kept per example)"
    assert metrics.margin_help() == ("0.01 (the default) is one point of accuracy, F1 or MCC; for val_loss a share "
                                     "of its loss (0.02)")
    for command in ("report", "pick-best", "sweep"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"}, terminal_width=250).output
        assert all(name in text for name in NAMES), (command, text)


# --- the one hop: a toy metric appended to a copy's table ------------------------------------------------

TOY = '''

def _error_rate(cms, positive):
    return 1.0 - _accuracy(cms, positive)


TABLE = (*TABLE, Metric("toy", "toy error", "toy", False, _error_rate, help="one minus accuracy", bootstrapped=True))
'''


def _copy_with_toy(root: Path) -> Path:
    package = root / "accumbench"
    shutil.copytree(Path(accumbench.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "metrics.py", "a", encoding="utf-8") as table:
        table.write(TOY)
    return root


def _small_store(path: Path) -> None:
    """Two EBS, two seeds each, two epochs each, written by this accumbench (it knows no toy)."""
    store = Store.open(f"sqlite:///{path}")
    for ebs in (16, 32):
        for seed in (1, 2):
            config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, epochs=2)
            run_id = store.create_run(
                config_json=config.to_json(), config_hash=config.config_hash, backend=config.backend, model="m",
                dataset=config.dataset, seed=seed, lr=config.lr, effective_batch_size=ebs, micro_batch_size=8,
                accumulation_steps=ebs // 8, epochs=2, max_length=config.max_length, optimizer=config.optimizer,
                scheduler=config.scheduler, num_labels=2, num_val_samples=100, num_test_samples=100)
            for epoch in (1, 2):
                accuracy = 0.6 + 0.1 * epoch - ebs / 1000 + seed / 100
                store.add_epoch(run_id, epoch=epoch, train_loss=0.5, train_accuracy=0.7, val_loss=1 - accuracy,
                                val_accuracy=accuracy, test_loss=1 - accuracy, test_accuracy=accuracy - 0.01,
                                val_f1=accuracy, val_mcc=accuracy / 2, test_f1=accuracy, test_mcc=accuracy / 2,
                                optimizer_steps=10 * epoch, samples_seen=100 * epoch, epoch_seconds=2.0,
                                train_seconds=1.0, eval_seconds=1.0, samples_per_second=100.0)
            store.update_run(run_id, best_epoch=2)
            store.finish_run(run_id, FINISHED)
    store.close()


def _in_copy(copy: Path, *args: str) -> str:
    """`python -m accumbench ARGS` (or `python -c CODE`) with the copy first on the path: its own table."""
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1", "COLUMNS": "250"}
    command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "accumbench", *args]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _epoch_columns(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(epochs)")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    copy = _copy_with_toy(root / "copy")
    db = root / "runs.db"
    _small_store(db)
    return copy, db


def test_the_copy_is_the_package_imported_and_records_the_toy_every_epoch(toy):
    copy, _ = toy
    out = _in_copy(copy, "-c", "import accumbench, accumbench.task_metrics as t; print(accumbench.__file__); "
                               "print(sorted(t.scores([0, 1, 1, 0], [0, 1, 0, 0], 2)))")
    where, keys = out.splitlines()
    assert Path(where).is_relative_to(copy)
    assert keys == "['f1', 'mcc', 'toy']"  # what the engine records as val_toy and test_toy


def test_a_toy_metric_is_one_entry_in_the_table(toy):
    copy, db = toy
    columns = len(_epoch_columns(db))
    # Read-only, on a store written before the toy was known: its columns are there, empty; nothing is written.
    wide = _in_copy(copy, "report", "--db", str(db), "--wide")
    assert "val toy" in wide and "test toy" in wide
    rows = list(csv.DictReader(io.StringIO(_in_copy(copy, "report", "--db", str(db), "--format", "csv"))))
    assert len(rows) == 2 and all(row["val_toy_mean"] == "" and "test_toy_std" in row for row in rows)
    assert len(_epoch_columns(db)) == columns
    assert "val_toy (one minus accuracy)" in _in_copy(copy, "report", "--help")

    # A writable open adds its columns by itself (no migration written, no schema version); then it is recorded.
    _in_copy(copy, "-c", f"from accumbench.store import Store; Store.open('sqlite:///{db}').close()")
    assert _epoch_columns(db)[columns:] == ["val_toy", "test_toy"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("UPDATE epochs SET val_toy = 1 - val_accuracy + 0.2 * (epoch = 1), test_toy = 1 - test_accuracy")
    out = _in_copy(copy, "report", "--db", str(db), "--metric", "val_toy", "--format", "csv")
    rows = {int(row["effective_batch_size"]): row for row in csv.DictReader(io.StringIO(out))}
    # Lower is better: epoch 2 has the lower error at every EBS, so each run is read there.
    for ebs, row in rows.items():
        errors = [1 - (0.8 - ebs / 1000 + seed / 100) for seed in (1, 2)]
        assert float(row["val_toy_mean"]) == pytest.approx(sum(errors) / 2)
        assert float(row["best_epoch_mean"]) == 2
    table = _in_copy(copy, "report", "--db", str(db), "--metric", "val_toy")
    assert table.index("val toy") < table.index("train") < table.index("val acc")  # it leads the table
    assert "toy error" in _in_copy(copy, "pick-best", "--db", str(db), "--metric", "val_toy")


def test_an_accumbench_without_the_toy_reads_a_store_with_its_columns(tmp_path):
    db = tmp_path / "runs.db"
    _small_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE epochs ADD COLUMN val_toy FLOAT")
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "val_toy" not in result.output and "val_f1_mean" in result.output
