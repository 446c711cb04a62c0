"""Sentence pairs end to end: auto-detected pair columns, pair tokenization (longest_first, segment ids),
the token cache, GLUE-style unlabelled test splits, local hub copies with configurations, dropped rows,
bad input, and what a pair run records (text columns, split source, F1/MCC from every epoch's predictions)."""

from __future__ import annotations

import hashlib

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench import task_metrics
from accumbench.cli.app import app
from accumbench.data import pipeline, token_cache
from accumbench.errors import UserError
from accumbench.store.schema import _unpack

WORDS = ("red", "green", "blue", "small", "large", "quiet", "loud", "warm", "cold", "bright")


def _pairs(n: int, first="sentence1", second="sentence2", label=lambda i: i % 2, tag="") -> list[dict]:
    return [{first: f"{tag}a {WORDS[i % 10]} cat number {i}", second: f"{tag}it is {WORDS[(i * 3) % 10]}",
             "label": label(i)} for i in range(n)]


def _write(path, rows, columns=None):
    """rows as CSV, TSV (by suffix) or parquet; `columns` keeps only those (a test file without labels)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if columns is not None:
        frame = frame[list(columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return str(path)


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# --- 1. detecting pairs, fingerprints -------------------------------------------------------------------

def test_usual_pair_columns_are_detected_and_aligned(tmp_path):
    rows = _pairs(50)
    ds = pipeline.load_text_dataset(_write(tmp_path / "p.csv", rows), seed=0)
    assert ds.columns == ("sentence1", "sentence2") and ds.is_pair
    second_of = {r["sentence1"]: r["sentence2"] for r in rows}
    for split in (ds.train, ds.validation, ds.test):
        assert len(split.pairs) == len(split.texts) == len(split)
        assert all(second_of[t] == p for t, p in zip(split.texts, split.pairs))
    nli = pipeline.load_text_dataset(_write(tmp_path / "nli.csv", _pairs(50, "premise", "hypothesis")), seed=0)
    assert nli.columns == ("premise", "hypothesis") and nli.is_pair


def test_named_text_column_alone_is_single_text_and_pair_column_finds_its_partner(tmp_path):
    path = _write(tmp_path / "nli.csv", [{**r, "text": r["premise"]} for r in _pairs(50, "premise", "hypothesis")])
    single = pipeline.load_text_dataset(path, seed=0, text_column="premise")
    assert single.columns == ("premise",) and not single.is_pair and single.train.pairs is None
    paired = pipeline.load_text_dataset(path, seed=0, text_pair_column="hypothesis")
    assert paired.columns == ("premise", "hypothesis")  # the partner, not the 'text' column


def test_single_text_fingerprint_is_unchanged_and_a_pair_changes_it(tmp_path):
    ds = pipeline.load_text_dataset(_write(tmp_path / "t.csv", [{"text": f"t {i}", "label": i % 2} for i in range(40)]),
                                seed=0)
    assert ds.columns == ("text",) and not ds.is_pair and ds.train.pairs is None
    texts, labels = ["a b", "c"], [1, 0]
    digest = hashlib.sha256(b"".join(f"{y}\t{t}\n".encode() for t, y in zip(texts, labels))).hexdigest()[:16]
    assert pipeline.TextSplit(texts, labels).fingerprint == digest
    assert pipeline.TextSplit(texts, labels, ["x", "y"]).fingerprint != digest


# --- 2-4. tokenization, cache, segment embeddings --------------------------------------------------------

def test_a_pair_tokenizes_as_cls_a_sep_b_sep_with_segment_ids(tiny_bert):
    tok = _tokenizer(tiny_bert)
    split = pipeline.TextSplit(["the cat sat", "a dog"], [0, 1], ["it sat down", "a big dog barked"])
    enc = pipeline.tokenize(split, tok, 64, segment_ids=True)
    for i, (a, b) in enumerate(zip(split.texts, split.pairs)):
        expected = tok(a, b)
        assert enc.input_ids[i] == expected["input_ids"]
        n_a = len(tok(a, add_special_tokens=False)["input_ids"])
        assert enc.input_ids[i][0] == tok.cls_token_id and enc.input_ids[i][n_a + 1] == tok.sep_token_id
        assert enc.token_type_ids[i] == [0] * (n_a + 2) + [1] * (len(expected["input_ids"]) - n_a - 2)
    assert pipeline.tokenize(split, tok, 64, segment_ids=False).token_type_ids is None

    batch = pipeline.collate(enc, [0, 1], tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert batch["token_type_ids"].shape == (2, width)
    for i in range(2):
        types = enc.token_type_ids[i]
        assert batch["token_type_ids"][i].tolist() == types + [0] * (width - len(types))


def test_truncation_is_longest_first_and_keeps_the_hypothesis(tiny_bert):
    tok = _tokenizer(tiny_bert)
    premise, hypothesis = " ".join(["the long premise goes on"] * 20), "a short hypothesis"
    enc = pipeline.tokenize(pipeline.TextSplit([premise], [0], [hypothesis]), tok, 16, segment_ids=True)
    assert enc.input_ids[0] == tok(premise, hypothesis, truncation="longest_first", max_length=16)["input_ids"]
    assert len(enc.input_ids[0]) == 16
    hyp = tok(hypothesis, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[0][-len(hyp) - 1:-1] == hyp and enc.token_type_ids[0].count(1) == len(hyp) + 1


def test_token_cache_keys_segment_ids_and_round_trips_types(tiny_bert, tmp_path):
    tok = _tokenizer(tiny_bert)
    pair = pipeline.load_text_dataset(_write(tmp_path / "p.csv", _pairs(40)), seed=0)
    single = pipeline.load_text_dataset(_write(tmp_path / "t.csv", [{"text": f"t {i}", "label": i % 2}
                                                                for i in range(40)]), seed=0)
    cache = token_cache.TokenCache(tmp_path / "cache")
    assert cache.key(pair, tok, 32, segment_ids=True) != cache.key(pair, tok, 32, segment_ids=False)
    assert cache.key(single, tok, 32, segment_ids=True) == cache.key(single, tok, 32, segment_ids=False)
    first, cached = cache.load_or_tokenize(pair, tok, 32, segment_ids=True)
    assert not cached and first["train"].token_type_ids is not None
    again, cached = token_cache.TokenCache(tmp_path / "cache").load_or_tokenize(pair, tok, 32, segment_ids=True)
    assert cached
    for name in pipeline.SPLITS:
        assert again[name].input_ids == first[name].input_ids
        assert again[name].token_type_ids == first[name].token_type_ids
        assert again[name].labels == first[name].labels
    plain, cached = cache.load_or_tokenize(pair, tok, 32, segment_ids=False)
    assert not cached and plain["train"].token_type_ids is None


def test_embeds_segments_is_true_for_bert_only(tiny_bert, tiny_modernbert):
    from transformers import AutoModel

    from accumbench.model import embeds_segments

    assert embeds_segments(AutoModel.from_pretrained(tiny_bert))
    assert not embeds_segments(AutoModel.from_pretrained(tiny_modernbert))


# --- 5-7. unlabelled test splits, local hub copies, dropped rows -----------------------------------------

@pytest.mark.parametrize("test_columns", [("sentence1", "sentence2", "label"), ("sentence1", "sentence2")])
def test_unlabelled_test_file_uses_validation_as_test(tmp_path, test_columns):
    _write(tmp_path / "train.tsv", _pairs(50))
    dev = _pairs(12, tag="dev ")
    _write(tmp_path / "dev.tsv", dev)
    _write(tmp_path / "test.tsv", _pairs(9, label=lambda i: -1, tag="test "), columns=test_columns)
    ds = pipeline.load_text_dataset(str(tmp_path), seed=0)
    assert ds.source.startswith("test split unlabelled: validation used as test; train split 9:1")
    assert ds.test.texts == [r["sentence1"] for r in dev] and ds.test.pairs == [r["sentence2"] for r in dev]
    assert (len(ds.train), len(ds.validation)) == (45, 5)
    assert not any(t.startswith(("dev", "test")) for t in ds.train.texts + ds.validation.texts)


def test_local_hub_copy_with_configurations(tmp_path):
    # One file format for all configurations: datasets picks a single builder for the whole repository.
    lines, suffix = ["---", "configs:"], "parquet"
    for config in ("mrpc", "rte"):
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, n in (("train", 40), ("validation", 10), ("test", 8)):
            labels = (lambda i: -1) if split == "test" else (lambda i: i % 2)
            _write(tmp_path / config / f"{split}.{suffix}", _pairs(n, label=labels, tag=f"{config} {split} "))
            lines += [f"  - split: {split}", f"    path: {config}/{split}.{suffix}"]
    (tmp_path / "README.md").write_text("\n".join([*lines, "---", "", "# A copy of two GLUE tasks", ""]))
    ds = pipeline.load_text_dataset(str(tmp_path), seed=0, dataset_config="mrpc")
    assert ds.columns == ("sentence1", "sentence2")
    assert ds.source.startswith("test split unlabelled: validation used as test")
    assert ds.test.texts == [r["sentence1"] for r in _pairs(10, tag="mrpc validation ")]
    assert all(t.startswith("mrpc train ") for t in ds.train.texts + ds.validation.texts)
    assert (len(ds.train), len(ds.validation)) == (36, 4)
    rte = pipeline.load_text_dataset(str(tmp_path), seed=0, dataset_config="rte")
    assert all(t.startswith("rte ") for t in rte.train.texts + rte.test.texts)


def test_rows_without_label_or_text_are_dropped_and_counted(tmp_path):
    rows = [{"text": f"text {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    for i in (3, 10, 17):
        rows[i]["label"] = ""
    rows[20]["text"] = ""
    ds = pipeline.load_text_dataset(_write(tmp_path / "d.csv", rows), seed=0)
    assert ds.dropped == "dropped 3 rows with no label and 1 row with no text"
    kept = ds.train.texts + ds.validation.texts + ds.test.texts
    assert len(kept) == 36 and not {"text 3", "text 10", "text 17"} & set(kept) and "" not in kept
    assert ds.label_names == ["neg", "pos"] and ds.dropped in ds.describe()

    mostly_empty = [{"text": f"text {i}", "label": i if i < 2 else ""} for i in range(62)]
    with pytest.raises(UserError, match="dropped 60 rows with no label"):
        pipeline.load_text_dataset(_write(tmp_path / "e.csv", mostly_empty), seed=0)


# --- 8. bad input through the CLI ------------------------------------------------------------------------

@pytest.mark.parametrize("case, fragment", [
    ("missing-pair-column", "has no column 'nope'"),
    ("pair-is-text", "--text-pair-column 'sentence1' is also the"),
    ("config-on-file", "is a local file: drop --dataset-config"),
    ("config-on-demo", "'demo' is built in: drop --dataset-config"),
    ("unknown-positive", "--positive-label 'maybe' is not a label of dataset 'demo' (labels: 0, 1)"),
    ("positive-on-3-classes", "--positive-label applies to two-label tasks; this dataset has 3 labels"),
])
def test_bad_pair_input_is_refused_and_writes_nothing(tmp_path, monkeypatch, tiny_bert, case, fragment):
    csv = _write(tmp_path / "data" / "p.csv", _pairs(40))
    args = {
        "missing-pair-column": ["--dataset", csv, "--text-pair-column", "nope"],
        "pair-is-text": ["--dataset", csv, "--text-column", "sentence1", "--text-pair-column", "sentence1"],
        "config-on-file": ["--dataset", csv, "--dataset-config", "mrpc"],
        "config-on-demo": ["--dataset", "demo", "--dataset-config", "mrpc"],
        "unknown-positive": ["--dataset", "demo", "--positive-label", "maybe"],
        "positive-on-3-classes": ["--dataset", "demo-pairs", "--positive-label", "entailment"],
    }[case]
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert, *args, "--epochs", "1", "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no runs.db, no checkpoints


# --- 9. training on pairs end to end ---------------------------------------------------------------------

def _train(model: str, db, dataset: str, *extra):
    args = ["train", "--model", model, "--dataset", dataset, "--epochs", "1", "--max-train-samples", "128",
            "--max-eval-samples", "64", "--max-length", "64", "--effective-batch-size", "32",
            "--micro-batch-size", "16", "--no-checkpoint", "--db", str(db), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _check_task_metrics(db, run_id: int, num_labels: int, positive: int = 1) -> None:
    """val/test F1 and MCC as recorded equal those recomputed from the stored predictions."""
    (epoch,) = query(db, "SELECT * FROM epochs WHERE run_id = ?", run_id)
    stored = query(db, "SELECT * FROM epoch_predictions WHERE run_id = ? ORDER BY split", run_id)
    assert [(r["split"], r["epoch"]) for r in stored] == [("test", 1), ("validation", 1)]
    for row in stored:
        labels, predicted = _unpack(row["labels"]), _unpack(row["predicted"])
        assert len(labels) == len(predicted) == row["num_examples"] == 64
        prefix = "val" if row["split"] == "validation" else "test"
        assert epoch[f"{prefix}_f1"] == pytest.approx(task_metrics.f1_score(labels, predicted, num_labels, positive))
        assert epoch[f"{prefix}_mcc"] == pytest.approx(task_metrics.matthews_corrcoef(labels, predicted, num_labels))
        accuracy = sum(a == b for a, b in zip(labels, predicted)) / len(labels)
        assert epoch[f"{prefix}_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_modernbert"])
def test_demo_pairs_run_records_columns_source_and_task_metrics(request, tmp_path, model):
    db = tmp_path / "runs.db"
    result = _train(request.getfixturevalue(model), db, "demo-pairs")
    assert "data: pairs of premise + hypothesis; 8:1:1 split of 2400 examples" in result.output
    (run,) = query(db, "SELECT * FROM runs")
    assert run["status"] == "FINISHED" and run["num_labels"] == 3
    assert run["text_columns"] == "premise,hypothesis"
    assert run["split_source"].startswith("8:1:1 split of 2400 examples, seed")
    assert run["dropped_rows"] == "" and run["positive_label"] is None
    _check_task_metrics(db, run["id"], 3)


def test_two_label_run_reports_f1_of_the_positive_label(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    _train(tiny_bert, db, "demo")
    _train(tiny_bert, db, "demo", "--positive-label", "0")
    default, chosen = query(db, "SELECT * FROM runs ORDER BY id")
    assert (default["text_columns"], default["num_labels"]) == ("text", 2)
    assert default["positive_label"] == "1" and chosen["positive_label"] == "0"  # labels 0/1: the second by default
    _check_task_metrics(db, default["id"], 2, positive=1)
    _check_task_metrics(db, chosen["id"], 2, positive=0)
