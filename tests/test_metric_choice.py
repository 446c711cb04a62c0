"""Choosing on the metric that matters (--metric val_accuracy|val_loss|val_f1|val_mcc): each run's best epoch
is chosen on the metric, the report leads with its columns, pick-best bounds single seeds by a
bootstrap over the validation predictions, runs recorded before F1 and MCC are refused by name, and a
schema-6 database upgraded in place still answers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench import task_metrics
from accumbench.analysis.runs import best_epochs, load_runs
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url
from accumbench.store.migrations import SCHEMA_VERSION

CHOICES = "choose one of: val_accuracy, val_loss, val_f1, val_mcc"


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def best_on(rows, metric: str) -> dict[int, sqlite3.Row]:
    """Per run, its epoch row with the best `metric`: highest (lowest for the loss), ties to the lower val
    loss, then the earlier epoch. The rule, written out independently of accumbench's."""
    sign = 1 if metric == "val_loss" else -1
    best = {}
    for row in sorted(rows, key=lambda r: (sign * r[metric], r["val_loss"], r["epoch"])):
        best.setdefault(row["run_id"], row)
    return best


def add_run(store: Store, ebs: int, epochs: list[dict], *, seed: int = 1, steps: int = 10, preds=None) -> int:
    """A finished run with the given epochs (recorded best_epoch: the best on validation accuracy) and,
    with `preds` = {split: (labels, predicted)}, its predictions at that epoch."""
    config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42,
                       epochs=len(epochs))
    run_id = store.create_run(**run_columns(config), num_labels=2, num_val_samples=400, num_test_samples=400)
    for number, metrics in enumerate(epochs, start=1):
        store.add_epoch(run_id, epoch=number, train_loss=0.3, train_accuracy=0.9, optimizer_steps=steps * number,
                        samples_seen=100 * number, epoch_seconds=2, train_seconds=1, eval_seconds=1,
                        samples_per_second=100, peak_memory_mb=1.0, **metrics)
    best = max(range(len(epochs)), key=lambda i: epochs[i]["val_accuracy"]) + 1
    store.update_run(run_id, best_epoch=best)
    for split, (labels, predicted) in (preds or {}).items():
        store.save_predictions(run_id, split, best, f"{split}-42", labels, predicted, best=True)
    store.finish_run(run_id, FINISHED)
    return run_id


# --- 1. end to end: a pair sweep of the tiny BERT, reported and picked on F1 and MCC --------------


@pytest.fixture(scope="module")
def pairs(tiny_bert, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("pairs") / "runs.db"
    cli("sweep", "--models", tiny_bert, "--dataset", "demo-pairs", "--effective-batch-sizes", "16,32",
        "--lrs", "1e-3,3e-3", "--micro-batch-size", "16", "--epochs", "2", "--max-train-samples", "192",
        "--max-eval-samples", "96", "--no-checkpoint", "--db", str(db), "--name", "pairs")
    return db


def test_report_on_f1_leads_with_it_and_reads_each_run_at_its_best_f1_epoch(pairs):
    epochs = query(pairs, "SELECT * FROM epochs")
    assert len(epochs) == 8 and all(r["val_f1"] is not None and r["test_mcc"] is not None for r in epochs)
    best = best_on(epochs, "val_f1")
    cells = json.loads(cli("report", "--db", str(pairs), "--metric", "val_f1", "--format", "json").stdout)["cells"]
    assert len(cells) == 4
    for cell in cells:
        runs = [int(r) for r in cell["run_ids"].split(",")]
        for column in ("val_f1", "test_f1", "val_loss"):
            assert cell[f"{column}_mean"] == pytest.approx(sum(best[r][column] for r in runs) / len(runs))
        assert cell["best_epoch_mean"] == sum(best[r]["epoch"] for r in runs) / len(runs)
    # The predictions of that epoch (epoch_predictions) give the recorded F1 back: 3 labels, macro-F1.
    with Store.open_readonly(resolve_db_url(str(pairs))) as store:
        at = {r: row["epoch"] for r, row in best.items()}
        for run_id, p in store.predictions(list(at), "validation", epochs=at).items():
            assert p["epoch"] == at[run_id]
            assert task_metrics.f1_score(p["labels"], p["predicted"], 3) == pytest.approx(best[run_id]["val_f1"])
    heading = cli("report", "--db", str(pairs), "--metric", "val_f1", "--format", "table").stdout.splitlines()
    header = next(line for line in heading if "val F1" in line)
    assert header.index("val F1") < header.index("test F1") < header.index("train") < header.index("val acc")
    assert "at each run's best epoch on validation F1" in " ".join(heading)


def test_pick_best_on_mcc_bounds_single_seeds_by_mcc_recomputed_on_resampled_examples(pairs):
    best = best_on(query(pairs, "SELECT * FROM epochs"), "val_mcc")
    out = json.loads(cli("pick-best", "--db", str(pairs), "--metric", "val_mcc", "--json",
                         "--protocol", "pooled").stdout)["picks"][0]
    assert out["metric"] == "val_mcc" and len(out["candidates"]) == 4
    for candidate in out["candidates"]:
        [run_id] = candidate["run_ids"]
        assert candidate["metric_mean"] == pytest.approx(best[run_id]["val_mcc"])
    assert out["best_on_validation"] == out["candidates"][0]["label"]
    top = out["candidates"][0]["metric_mean"]
    for other in out["candidates"][1:]:
        bound = other["deficit"]  # MCC from the stored predictions: the recorded values' difference
        assert bound["value"] == pytest.approx(top - other["metric_mean"])
        assert bound["evidence"].startswith("examples (one seed each") and bound["examples"] == 96
        assert bound["upper"] >= bound["value"] and other["as_good_as_best"] == (bound["upper"] < 0.01)
    [chosen] = [c for c in out["candidates"] if c["label"] == out["pick"]]
    assert out["test_metric"]["name"] == "test_mcc"
    assert out["test_metric"]["mean"] == pytest.approx(best[chosen["run_ids"][0]]["test_mcc"])
    assert any("seed-to-seed variation was not measured" in w for w in out["warnings"])


# --- 2. the best epoch on each metric, to a known answer ----------------------------------------


def test_each_metric_chooses_its_own_best_epoch(tmp_path):
    """Accuracy peaks at epoch 1, F1 at 2, the loss is lowest at 3, MCC ties 2 and 3 and 3 has the lower loss."""
    epochs = [dict(val_accuracy=0.90, val_f1=0.70, val_loss=0.50, val_mcc=0.40, test_accuracy=0.81, test_loss=0.6,
                   test_f1=0.61, test_mcc=0.31),
              dict(val_accuracy=0.80, val_f1=0.80, val_loss=0.45, val_mcc=0.60, test_accuracy=0.82, test_loss=0.5,
                   test_f1=0.62, test_mcc=0.32),
              dict(val_accuracy=0.70, val_f1=0.75, val_loss=0.30, val_mcc=0.60, test_accuracy=0.83, test_loss=0.4,
                   test_f1=0.63, test_mcc=0.33)]
    with Store.open(resolve_db_url(str(tmp_path / "runs.db"))) as store:
        run_id = add_run(store, 64, epochs)
        expected = {"val_accuracy": 1, "val_f1": 2, "val_loss": 3, "val_mcc": 3}
        for metric, epoch in expected.items():
            data = load_runs(store, metric=metric)
            run = data.runs.set_index("run_id").loc[run_id]
            assert (data.metric, run["best_epoch"]) == (metric, epoch)
            assert run["test_f1"] == epochs[epoch - 1]["test_f1"] and run[metric] == epochs[epoch - 1][metric]
            if metric != "val_accuracy":  # accuracy is the recorded runs.best_epoch
                assert best_epochs(data.epochs, metric).to_dict() == {run_id: epoch}
    # A full tie (same MCC, same loss) goes to the earlier epoch; a run without the metric has no best epoch.
    frame = pd.DataFrame(dict(run_id=[1, 1, 2], epoch=[1, 2, 1], val_mcc=[0.5, 0.5, None], val_loss=[0.3, 0.3, 0.2]))
    assert best_epochs(frame, "val_mcc").to_dict() == {1: 1}


# --- 3. single seeds: the deficit's bound recomputes F1 (or accuracy) on resampled examples -------------

LABELS = [i % 2 for i in range(400)]


def scored(wrong) -> tuple[dict, list[int]]:
    predicted = [1 - y if wrong(i) else y for i, y in enumerate(LABELS)]
    f1 = task_metrics.f1_score(LABELS, predicted, 2)
    mcc = task_metrics.matthews_corrcoef(LABELS, predicted, 2)
    accuracy = sum(a == b for a, b in zip(LABELS, predicted)) / 400
    return dict(val_accuracy=accuracy, val_f1=f1, val_mcc=mcc, val_loss=1 - accuracy, test_accuracy=accuracy,
                test_f1=f1, test_mcc=mcc, test_loss=1 - accuracy), predicted


def screen_store(db: Path, wrong_a, wrong_b) -> None:
    with Store.open(resolve_db_url(str(db))) as store:
        for ebs, wrong, steps in ((64, wrong_a, 40), (256, wrong_b, 10)):
            metrics, predicted = scored(wrong)
            add_run(store, ebs, [metrics], steps=steps,
                    preds={"validation": (LABELS, predicted), "test": (LABELS, predicted)})


def candidate(db: Path, label: str, *args: str) -> dict:
    out = json.loads(cli("pick-best", "--db", str(db), "--json", *args).stdout)["picks"][0]
    return next(c for c in out["candidates"] if c["label"] == label)


def test_identical_predictions_bound_the_deficit_at_zero(tmp_path):
    db = tmp_path / "runs.db"
    screen_store(db, lambda i: i % 10 == 0, lambda i: i % 10 == 0)
    other = candidate(db, "EBS 256", "--metric", "val_f1")
    assert other["deficit"]["value"] == other["deficit"]["upper"] == 0.0 and other["as_good_as_best"] is True


def test_a_wide_f1_gap_is_bounded_on_f1_and_accuracy_on_accuracy(tmp_path):
    db = tmp_path / "runs.db"
    screen_store(db, lambda i: i % 10 == 0, lambda i: i % 5 < 3)  # 40 errors against 240
    f1_a, f1_b = (scored(wrong)[0]["val_f1"] for wrong in (lambda i: i % 10 == 0, lambda i: i % 5 < 3))
    other = candidate(db, "EBS 256", "--metric", "val_f1")
    assert other["deficit"]["value"] == pytest.approx(f1_a - f1_b) and other["as_good_as_best"] is False
    on_accuracy = candidate(db, "EBS 256", "--metric", "val_accuracy")
    # 64 right and 256 wrong on the 200 examples with i % 5 in {1, 2} (i % 10 == 0 has both wrong); never the
    # reverse: a 50-point deficit whose example bound is 1.645·sqrt(0.5·0.5/400) above it.
    assert on_accuracy["deficit"]["value"] == pytest.approx(0.5)
    assert on_accuracy["deficit"]["upper"] == pytest.approx(0.5 + 1.645 * 0.025, abs=0.004)
    assert on_accuracy["as_good_as_best"] is False


# --- 4. runs recorded before F1 and MCC ----------------------------------------------------------


def old_store(db: Path) -> None:
    """Runs as accumbench recorded them before schema 7: no F1 or MCC on the epochs (NULL)."""
    with Store.open(resolve_db_url(str(db))) as store:
        for ebs, wrong in ((64, 40), (256, 60)):  # the first 40 or 60 examples wrong: 20 discordant pairs
            labels, predicted, accuracy = LABELS, [1 - y if i < wrong else y for i, y in enumerate(LABELS)], 1 - wrong / 400
            add_run(store, ebs, [dict(val_accuracy=accuracy, val_loss=0.3, test_accuracy=accuracy, test_loss=0.3)],
                    preds={"validation": (labels, predicted), "test": (labels, predicted)})


def test_old_runs_refuse_f1_by_name_and_still_report(tmp_path):
    db = tmp_path / "runs.db"
    old_store(db)
    result = cli("pick-best", "--db", str(db), "--metric", "val_f1", code=2)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "validation F1" in line and "--metric val_accuracy" in line
    assert result.stdout == ""
    text = cli("report", "--db", str(db)).stdout
    assert "0.900" in text and "0.850" in text and "F1" not in text  # the default: accuracy, no F1 columns
    rows = [line.split() for line in cli("report", "--db", str(db), "--columns", "model,ebs,val_f1").stdout.splitlines()]
    assert [row[-1] for row in rows if row[:1] == ["m"]] == ["-", "-"]


def test_runs_without_the_metric_are_left_out_with_a_warning(tmp_path):
    db = tmp_path / "runs.db"
    old_store(db)  # two runs without F1, then one with it
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 1024, [dict(val_accuracy=0.8, val_loss=0.4, test_accuracy=0.8, test_loss=0.4, val_f1=0.7,
                                   val_mcc=0.5, test_f1=0.7, test_mcc=0.5)])
    [pick] = json.loads(cli("pick-best", "--db", str(db), "--metric", "val_f1", "--json").stdout)["picks"]
    assert [c["effective_batch_size"] for c in pick["candidates"]] == [1024]
    assert any(w.startswith("2 run(s) left out: recorded before accumbench recorded validation F1") for w in pick["warnings"])


# --- 5. bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command, metric", [("pick-best", "val_f2"), ("report", "accuracy")])
def test_an_unknown_metric_is_one_line_listing_the_choices(tmp_path, command, metric):
    db = tmp_path / "runs.db"
    old_store(db)
    before = db.read_bytes()
    output = tmp_path / "out.txt"
    args = ["-o", str(output)] if command == "report" else []
    result = cli(command, "--db", str(db), "--metric", metric, *args, code=2)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: unknown --metric '{metric}'") and CHOICES in line
    assert result.stdout == "" and not output.exists() and db.read_bytes() == before


# --- 6. a schema-6 database, upgraded in place --------------------------------------------------


def test_a_schema_6_database_upgrades_and_picks_on_accuracy_not_f1(tmp_path):
    db = tmp_path / "runs.db"
    old_store(db)  # then take away what schema 7 added
    conn = sqlite3.connect(db)
    for table, columns in (("runs", ("text_columns", "split_source", "dropped_rows", "positive_label",
                                     "positive_class")), ("epochs", ("val_f1", "val_mcc", "test_f1", "test_mcc"))):
        for column in columns:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP TABLE epoch_predictions")
    conn.execute("UPDATE schema_version SET version = 6")
    conn.commit()
    conn.close()
    assert "schema version 6" in cli("pick-best", "--db", str(db), code=2).stderr  # reading never upgrades
    Store.open(resolve_db_url(str(db))).close()  # any train or sweep does
    assert query(db, "SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION >= 7
    assert [tuple(r) for r in query(db, "SELECT val_f1, test_mcc FROM epochs")] == [(None, None)] * 2
    assert query(db, "SELECT COUNT(*) FROM epoch_predictions")[0][0] == 0
    # The checkpoint's predictions (table predictions) still pair the runs at their best epoch: examples resampled.
    other = candidate(db, "EBS 256")
    assert other["deficit"]["evidence"].startswith("examples (one seed each") and other["deficit"]["examples"] > 0
    result = cli("pick-best", "--db", str(db), "--metric", "val_mcc", code=2)
    assert "validation MCC" in result.stderr and len(result.stderr.strip().splitlines()) == 1
