"""`accumbench report` on a real multi-seed sweep of a tiny BERT (2 EBS x 2 seeds x 2 backends):
the stored predictions agree with the recorded accuracies, every format round-trips, the numbers are
the database's, the backends compare, figures are written, and the database is never touched."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.store import Store, resolve_db_url
from accumbench.sweep.spec import build_spec
from accumbench.sweep.worker import run_sweep

# As few samples as the checks need (the fixture's cost is its forward passes): 104 = 3 x 32 + a ragged 8.
TRAIN_SAMPLES, EVAL_SAMPLES = 104, 48


@pytest.fixture(scope="module")
def swept(tiny_bert, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("report") / "runs.db"
    spec = build_spec(models=tiny_bert, effective_batch_sizes="8,32", seeds="1,2", backends="torch,accelerate",
                      dataset="demo", max_train_samples=TRAIN_SAMPLES, max_eval_samples=EVAL_SAMPLES, max_length=32, epochs=2,
                      micro_batch_size=8, lr=1e-3, checkpoint=False, name="tiny-study")
    assert run_sweep(spec, db=str(db)).ok
    return db


def report(db: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["report", "--db", str(db), *args], env={"COLUMNS": "250"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_stored_predictions_match_the_recorded_accuracies(swept):
    runs = query(swept, "SELECT * FROM runs ORDER BY id")
    with Store.open_readonly(resolve_db_url(str(swept))) as store:
        for split, column in (("validation", "val_accuracy"), ("test", "test_accuracy")):
            predictions = store.predictions([r["id"] for r in runs], split)
            for run in runs:
                p = predictions[run["id"]]
                assert p["epoch"] == run["best_epoch"] and len(p["labels"]) == EVAL_SAMPLES
                accuracy = sum(a == b for a, b in zip(p["labels"], p["predicted"])) / len(p["labels"])
                (recorded,) = query(swept, f"SELECT {column} FROM epochs WHERE run_id = ? AND epoch = ?",
                                    run["id"], run["best_epoch"])
                assert accuracy == pytest.approx(recorded[0], abs=1e-12)
            # The split is seeded by --seed here (no --data-seed): same seed, same examples.
            by_seed = {}
            for run in runs:
                by_seed.setdefault(run["seed"], set()).add(predictions[run["id"]]["split_hash"])
            assert all(len(hashes) == 1 for hashes in by_seed.values()) and by_seed[1] != by_seed[2]


def test_csv_has_one_row_per_cell_with_the_databases_numbers(swept):
    table = pd.read_csv(io.StringIO(report(swept, "--format", "csv").stdout))
    assert len(table) == 4 and set(table["n"]) == {2} and set(table["seeds"]) == {"1,2"}
    assert sorted(zip(table["effective_batch_size"], table["backend"])) == [
        (8, "accelerate"), (8, "torch"), (32, "accelerate"), (32, "torch")]
    for row in table.itertuples():
        at_best = query(swept, "SELECT e.val_accuracy, e.test_accuracy FROM runs r JOIN epochs e ON e.run_id = r.id "
                               "AND e.epoch = r.best_epoch WHERE r.effective_batch_size = ? AND r.backend = ?",
                        row.effective_batch_size, row.backend)
        vals = [r["val_accuracy"] for r in at_best]
        assert row.val_accuracy_mean == pytest.approx(sum(vals) / 2)
        assert row.val_accuracy_std == pytest.approx(pd.Series(vals).std())
        assert row.test_accuracy_mean == pytest.approx(sum(r["test_accuracy"] for r in at_best) / 2)
        assert row.best_test_accuracy_mean >= row.test_accuracy_mean  # the oracle column is never lower
        times = query(swept, "SELECT SUM(e.train_seconds) AS t FROM runs r JOIN epochs e ON e.run_id = r.id "
                             "WHERE r.effective_batch_size = ? AND r.backend = ? GROUP BY r.id",
                      row.effective_batch_size, row.backend)
        assert row.train_seconds_mean == pytest.approx(sum(t["t"] for t in times) / 2)
        assert row.optimizer_steps_mean == 2 * math.ceil(TRAIN_SAMPLES / row.effective_batch_size)


def test_json_and_the_backend_comparison(swept):
    payload = json.loads(report(swept, "--format", "json").stdout)
    assert len(payload["cells"]) == 4
    comparison = payload["backend_comparison"]
    assert sorted(c["effective_batch_size"] for c in comparison) == [8, 32]
    for cell in comparison:
        # On the CPU the two backends train bit for bit alike, dropout included.
        assert cell["pairs"] == 2 and cell["val_accuracy_diff"] == 0 and cell["test_accuracy_diff"] == 0
        assert abs(cell["val_loss_diff"]) < 1e-9 and cell["time_ratio"] > 0


def test_b_simple_per_cell_and_why_it_is_missing(swept):
    """EBS 32 = 4 x 8 measures B_simple; EBS 8 = 1 x 8 cannot (k = 1), and the report says so. The
    cell's numbers are the database's first- and last-epoch values, averaged over the seeds."""
    payload = json.loads(report(swept, "--format", "json").stdout)
    assert payload["noise_scale_notes"] == {"k = 1": "one micro-batch per optimizer step gives one batch size, "
                                                     "and the estimator needs two"}
    def noise(run_id: int, epoch: int):
        (value,) = query(swept, "SELECT noise_scale FROM epochs WHERE run_id = ? AND epoch = ?", run_id, epoch)[0]
        return float(value) if value is not None else None  # 'NaN' (stored as text): beyond resolution

    for cell in payload["cells"]:
        runs = [int(r) for r in cell["run_ids"].split(",")]
        first, last = ([noise(r, epoch) for r in runs] for epoch in (1, 2))
        if cell["effective_batch_size"] == 8:
            assert first == [None, None] and cell["noise_scale_first_mean"] is None
            assert cell["noise_note_first"] == cell["noise_note_last"] == "k = 1"
            continue
        # Measured: B_simple > 0, or NaN where the |G|² average came out <= 0; the cell's mean is over
        # the seeds that resolved it.
        assert all(value > 0 or math.isnan(value) for value in first + last)
        for values, which in ((first, "first"), (last, "last")):
            resolved = [v for v in values if not math.isnan(v)]
            mean = cell[f"noise_scale_{which}_mean"]
            assert mean == (pytest.approx(sum(resolved) / len(resolved)) if resolved else None)
            # The note is the seeds' majority: "beyond resolution" when most did not resolve it.
            assert cell[f"noise_note_{which}"] == ("beyond resolution" if len(resolved) < len(values) / 2 else "")
    # And per run, as recorded.
    per_run = {r["run_id"]: r for r in payload["noise_scale_runs"]}
    assert len(per_run) == 8
    for run_id, row in per_run.items():
        for epoch, key in ((1, "noise_scale_first"), (2, "noise_scale_last")):
            recorded = noise(run_id, epoch)
            assert row[key] == (None if recorded is None or math.isnan(recorded) else pytest.approx(recorded))
        assert (row["noise_note_first"] == "k = 1") == (row["effective_batch_size"] == 8)
        for which in ("first", "last"):
            value = row[f"noise_scale_{which}"]
            assert (row[f"noise_note_{which}"] == "beyond resolution") == (value is None and row["effective_batch_size"] != 8)
    markdown = report(swept, "--format", "markdown", "--wide").stdout
    assert "B_simple epoch 1 | B_simple last epoch |" in markdown and "| - (k = 1) | - (k = 1) |" in markdown
    assert "B_simple k = 1: one micro-batch per optimizer step" in markdown


def test_markdown_has_the_seed_studys_columns_and_wide_has_them_all(swept):
    markdown = report(swept, "--format", "markdown").stdout
    assert "| model | EBS | backend | n | train acc | val acc mean±std | test acc mean±std | train time | optim steps |" in markdown
    assert "## Backends: accelerate against torch" in markdown and markdown.count("\n| ") >= 4 + 2
    wide = report(swept, "--format", "markdown", "--wide").stdout
    assert "| best test acc (picked on test) |" in wide and "| seeds |" in wide and "| B_simple epoch 1 |" in wide


def test_the_terminal_table_fits_80_columns_and_cuts_nothing(swept):
    """Piped (as here), the report is plain text; its default columns fit 80 characters, integers read
    as integers and n is the number of seeds. Every number is the database's, whole."""
    text = report(swept).stdout
    lines = text.splitlines()
    assert lines[0] == "accumbench report: 8 runs in 4 cells" and "…" not in text
    table = lines[1:lines.index(next(line for line in lines if line.startswith("val and test acc at")))]
    assert max(map(len, table)) <= 80, table
    header, rows = table[:2], table[2:]
    assert header[1].split()[:5] == ["model", "EBS", "backend", "n", "acc"] and len(rows) == 4
    cells = pd.read_csv(io.StringIO(report(swept, "--format", "csv").stdout))
    for row, cell in zip(rows, cells.itertuples()):
        fields = row.split()
        assert fields[1] == str(cell.effective_batch_size) and fields[3] == "2"  # n: 2 seeds
        assert fields[5] == f"{cell.val_accuracy_mean:.3f}±{cell.val_accuracy_std:.3f}"
        assert fields[6] == f"{cell.test_accuracy_mean:.3f}±{cell.test_accuracy_std:.3f}"
        assert fields[-1] == str(int(cell.optimizer_steps_mean))  # 14, not 14.0
    # The backend comparison prints whole numbers too, and fits.
    comparison = lines[lines.index("backends: accelerate against torch, same cell and seed") + 1:]
    assert comparison and max(map(len, comparison)) <= 80


def test_columns_and_wide_and_a_split_wide_table(swept):
    picked = report(swept, "--columns", "model,ebs,val_acc,best_epoch").stdout.splitlines()
    assert picked[1].split() == ["val", "acc", "best"] and picked[2].split() == ["model", "EBS", "mean±std", "epoch"]
    assert all(line.split()[-1] in ("1", "2", "1.5±0.7") for line in picked[3:7])  # an integer mean prints as one
    wide = report(swept, "--wide").stdout.splitlines()
    assert max(map(len, wide)) > 150  # piped: one block, lines as long as they need
    from accumbench.analysis.cells import backend_comparison, cell_table
    from accumbench.analysis.runs import load_runs
    from accumbench.present.tables import COLUMNS, text_report
    from accumbench.store import Store, resolve_db_url

    with Store.open_readonly(resolve_db_url(str(swept))) as store:
        data = load_runs(store)
    cells = cell_table(data)
    split = text_report(cells, backend_comparison(data), "t", list(COLUMNS), width=80)
    blocks = [line for line in split.split("val and test acc at")[0].split("\n")[1:] if line]
    assert max(map(len, blocks)) <= 80
    headers = [line for line in blocks if line.startswith("model")]
    assert len(headers) >= 3 and all(line.split()[:3] == ["model", "EBS", "backend"] for line in headers)
    for name, column in COLUMNS.items():  # every column's values appear whole in some block
        for value in column.text(cells):
            assert value in split, (name, value)


@pytest.mark.parametrize("args, fragment", [
    (["--columns", "model,speed"], "unknown --columns 'speed'; choose from: model, ebs, backend"),
    (["--columns", "model", "--wide"], "--columns picks columns and --wide shows them all"),
])
def test_bad_columns_are_one_line_and_exit_2(swept, args, fragment):
    result = report(swept, *args, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_filters_and_plots(swept, tmp_path):
    torch_only = pd.read_csv(io.StringIO(report(swept, "--format", "csv", "--backend", "torch",
                                                "--sweep", "tiny-study").stdout))
    assert set(torch_only["backend"]) == {"torch"} and len(torch_only) == 2
    result = report(swept, "--format", "csv", "--plot", str(tmp_path / "figures"))
    written = sorted((tmp_path / "figures").iterdir())
    assert [p.name for p in written] == ["tiny-bert0-headline.png", "tiny-bert0-noise-scale.png", "tiny-bert0-time.png",
                                         "tiny-bert0-train-loss.png", "tiny-bert0-validation.png"]
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"wrote {png}" in result.stdout


def test_the_database_is_opened_read_only(swept):
    before = {p.name: p.read_bytes() for p in swept.parent.iterdir()}
    report(swept, "--format", "json")
    CliRunner().invoke(app, ["pick-best", "--db", str(swept)])
    assert {p.name: p.read_bytes() for p in swept.parent.iterdir()} == before


@pytest.mark.parametrize("args, fragment", [
    (["--sweep", "nope"], "no runs match (status FINISHED, sweep nope)"),
    (["--format", "pdf"], "unknown --format 'pdf'; choose one of: table, markdown, csv, json, html"),
    (["--status", "DONE"], "unknown --status 'DONE'"),
    (["-o", "/no/such/dir/r.md"], "directory /no/such/dir does not exist"),
])
def test_bad_report_input_is_one_line_and_exit_2(swept, args, fragment):
    result = report(swept, *args, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if "nope" in args:
        assert "sweeps there: tiny-study" in result.stderr


def test_missing_and_empty_databases_say_so(tmp_path):
    missing = tmp_path / "missing.db"
    result = report(missing, code=2)
    assert "no run database at" in result.stderr and not missing.exists()
    empty = tmp_path / "empty.db"
    Store.open(resolve_db_url(str(empty))).close()
    result = report(empty, code=2)
    assert "no runs match (status FINISHED)" in result.stderr and "sweeps there: none" in result.stderr
