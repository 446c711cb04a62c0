"""`accumbench predict` and `accumbench export` end to end on tiny models: predict on a run's checkpoint gives
the validation accuracy the store recorded for its best epoch; an export predicts as the run does without
the store; sentence pairs; and bad input is one error line, exit 2, with nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app as main_app
from accumbench.cli.inference import export, predict
from accumbench.config import RunConfig
from accumbench.runtime.preparation import load_dataset

# The commands as cli/app.py registers them.
app = typer.Typer()
app.command("predict")(predict)
app.command("export")(export)


def _invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(*args) -> object:
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _train(model: str, db: Path, dataset: str, *extra) -> int:
    args = ["train", "--model", model, "--dataset", dataset, "--max-train-samples", "64", "--max-eval-samples", "48",
            "--max-length", "32", "--effective-batch-size", "16", "--micro-batch-size", "16", "--lr", "1e-3",
            "--pooling", "mean", "--db", str(db), *extra]
    result = CliRunner().invoke(main_app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return query(db, "SELECT max(id) FROM runs")[0][0]


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory) -> dict:
    """A checkpointed run of two epochs, and one without a checkpoint, in one store."""
    db = tmp_path_factory.mktemp("store") / "runs.db"
    kept = _train(tiny_bert, db, "demo", "--epochs", "2", "--checkpoint")
    unkept = _train(tiny_bert, db, "demo", "--epochs", "1", "--no-checkpoint")
    return dict(db=db, kept=kept, unkept=unkept)


def _validation_csv(db: Path, run_id: int, path: Path) -> tuple[list, float]:
    """The run's validation split as training saw it, labels by name (as `label`: predict keeps it as
    input_label), and the validation accuracy recorded at the run's best epoch."""
    (run,) = query(db, "SELECT config_json, best_epoch, checkpoint_path FROM runs WHERE id = ?", run_id)
    meta = json.loads((Path(run["checkpoint_path"]) / "accumbench.json").read_text())
    assert meta["epoch"] == run["best_epoch"]  # the checkpoint is the best epoch's
    dataset = load_dataset(RunConfig.from_dict(json.loads(run["config_json"])), {})
    split = dataset.validation
    columns = dataset.columns
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *columns, "label"])
        for i in range(len(split)):
            texts = (split.texts[i], split.pairs[i]) if dataset.is_pair else (split.texts[i],)
            writer.writerow([i, *texts, dataset.label_names[split.labels[i]]])
    (epoch,) = query(db, "SELECT val_accuracy FROM epochs WHERE run_id = ? AND epoch = ?", run_id, run["best_epoch"])
    return dataset.label_names, epoch["val_accuracy"]


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _accuracy(rows: list[dict]) -> float:
    return sum(r["label"] == r["input_label"] for r in rows) / len(rows)


def test_predict_on_a_run_gives_its_recorded_validation_accuracy(runs, tmp_path):
    labels, recorded = _validation_csv(runs["db"], runs["kept"], tmp_path / "val.csv")
    result = _ok("predict", "--run", runs["kept"], tmp_path / "val.csv", "-o", tmp_path / "out.csv",
                 "--db", runs["db"], "--batch-size", "5")
    assert "48 rows labelled by run 1 (epoch" in result.output and "input column label written as input_label" in result.output
    rows = _read(tmp_path / "out.csv")
    assert list(rows[0]) == ["id", "text", "input_label", "label", *(f"prob_{name}" for name in labels)]
    assert [int(r["id"]) for r in rows] == list(range(48))  # input order, whatever the batching
    assert _accuracy(rows) == pytest.approx(recorded, abs=1e-12)
    for row in rows:
        probs = [float(row[f"prob_{name}"]) for name in labels]
        assert sum(probs) == pytest.approx(1.0) and labels[probs.index(max(probs))] == row["label"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "val.csv"]  # no partial file left


def test_export_then_predict_from_the_directory_matches_the_run(runs, tmp_path, monkeypatch):
    labels, _ = _validation_csv(runs["db"], runs["kept"], tmp_path / "val.csv")
    _ok("predict", "--run", runs["kept"], tmp_path / "val.csv", "-o", tmp_path / "from-run.csv", "--db", runs["db"])
    (tmp_path / "exported").mkdir()  # an empty directory is fine
    result = _ok("export", "--run", runs["kept"], tmp_path / "exported", "--db", runs["db"])
    assert "wrote" in result.output and "labels 0, 1" in result.output

    files = {p.name for p in (tmp_path / "exported").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "head.safetensors", "classifier.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    spec = json.loads((tmp_path / "exported" / "classifier.json").read_text())
    assert spec["labels"] == labels and spec["head"]["in_features"] == 32 and spec["head"]["out_features"] == 2
    assert (spec["pooling"], spec["max_length"], spec["text_columns"]) == ("mean", 32, ["text"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial directory left

    # No store: another working directory, and $ACCUMBENCH_DB pointing nowhere.
    monkeypatch.chdir(tmp_path / "exported")
    monkeypatch.setenv("ACCUMBENCH_DB", str(tmp_path / "missing.db"))
    _ok("predict", "--model", tmp_path / "exported", tmp_path / "val.csv", "-o", tmp_path / "from-export.csv")
    from_run, from_export = _read(tmp_path / "from-run.csv"), _read(tmp_path / "from-export.csv")
    assert [r["label"] for r in from_export] == [r["label"] for r in from_run]
    for a, b in zip(from_run, from_export):
        for name in labels:
            assert float(b[f"prob_{name}"]) == pytest.approx(float(a[f"prob_{name}"]), abs=1e-6)


def test_a_pair_run_predicts_from_both_columns(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    run_id = _train(tiny_bert, db, "demo-pairs", "--epochs", "1", "--checkpoint")
    labels, recorded = _validation_csv(db, run_id, tmp_path / "pairs.csv")
    assert len(labels) == 3
    _ok("predict", "--run", run_id, tmp_path / "pairs.csv", "-o", tmp_path / "out.csv", "--db", db)
    rows = _read(tmp_path / "out.csv")
    assert list(rows[0])[:4] == ["id", "premise", "hypothesis", "input_label"]
    assert _accuracy(rows) == pytest.approx(recorded, abs=1e-12)

    # Other names for the pair: detected as training detects them (sentence1/sentence2), or named.
    for header, flags in ((["id", "sentence1", "sentence2", "label"], ()),
                          (["id", "first", "second", "label"], ("--text-column", "first", "--text-pair-column", "second"))):
        lines = (tmp_path / "pairs.csv").read_text().splitlines()
        (tmp_path / "renamed.csv").write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
        _ok("predict", "--run", run_id, tmp_path / "renamed.csv", "-o", tmp_path / "renamed-out.csv", "--db", db, *flags)
        assert [r["label"] for r in _read(tmp_path / "renamed-out.csv")] == [r["label"] for r in rows]

    # One text for a pair model: refused, naming the columns and the flags.
    (tmp_path / "single.csv").write_text("text\na cat\n")
    result = _invoke("predict", "--run", run_id, tmp_path / "single.csv", "-o", tmp_path / "x.csv", "--db", db)
    assert result.exit_code == 2 and "trained on pairs (premise + hypothesis)" in result.stderr
    assert "--text-pair-column" in result.stderr and not (tmp_path / "x.csv").exists()


def _not_an_export(work: Path, runs: dict) -> list:
    (work / "plain").mkdir()
    (work / "plain" / "config.json").write_text("{}")
    return ["predict", "--model", work / "plain", work / "in.csv", "-o", work / "out.csv"]


def _non_empty_dir(work: Path, runs: dict) -> list:
    (work / "taken").mkdir()
    (work / "taken" / "notes.txt").write_text("mine")
    return ["export", "--run", runs["kept"], work / "taken", "--db", runs["db"]]


def _no_text_column(work: Path, runs: dict) -> list:
    (work / "bodies.csv").write_text("id,body\n1,a fine film\n")
    return ["predict", "--run", runs["kept"], work / "bodies.csv", "-o", work / "out.csv", "--db", runs["db"]]


BAD = {
    "no-checkpoint": (lambda w, r: ["predict", "--run", r["unkept"], w / "in.csv", "-o", w / "out.csv", "--db", r["db"]],
                      "train it again with --checkpoint"),
    "unknown-run-predict": (lambda w, r: ["predict", "--run", 99, w / "in.csv", "-o", w / "out.csv", "--db", r["db"]],
                            "no run 99 in"),
    "unknown-run-export": (lambda w, r: ["export", "--run", 99, w / "exported", "--db", r["db"]], "no run 99 in"),
    "no-text-column": (_no_text_column, "no text column (columns: id, body); name one with --text-column"),
    "non-empty-export-dir": (_non_empty_dir, "is not an empty directory"),
    "neither-run-nor-model": (lambda w, r: ["predict", w / "in.csv", "-o", w / "out.csv"], "pass one of --run ID"),
    "both-run-and-model": (lambda w, r: ["predict", "--run", r["kept"], "--model", w, w / "in.csv", "-o",
                                         w / "out.csv", "--db", r["db"]], "pass one of --run ID"),
    "model-not-an-export": (_not_an_export, "is not an accumbench export (no classifier.json"),
    "output-dir-missing": (lambda w, r: ["predict", "--run", r["kept"], w / "in.csv", "-o", w / "nowhere" / "out.csv",
                                         "--db", r["db"]], "does not exist; create it"),
    "input-missing": (lambda w, r: ["predict", "--run", r["kept"], w / "absent.csv", "-o", w / "out.csv",
                                    "--db", r["db"]], "input"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(runs, tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.csv").write_text("text,label\na fine film,1\n")
    make_args, fragment = BAD[case]
    args = make_args(work, runs)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = _invoke(*args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no OUT, no export, no partial file
