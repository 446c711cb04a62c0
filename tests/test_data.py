"""Loading, splitting, label mapping, tokenization and dynamic padding."""

from __future__ import annotations

import json

import pytest

from accumbench.data.pipeline import collate, load_text_dataset, split_rows, tokenize
from accumbench.errors import UserError


def _rows(n: int, label=lambda i: i % 2):
    return [{"review": f"review number {i} " + "word " * (i % 7), "label": label(i)} for i in range(n)]


def _write(path, rows):
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_a_local_file_is_split_8_1_1(tmp_path, suffix):
    path = _write(tmp_path / f"reviews{suffix}", _rows(100))
    ds = load_text_dataset(str(path), seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (80, 10, 10)
    all_texts = ds.train.texts + ds.validation.texts + ds.test.texts
    assert sorted(all_texts) == sorted(r["review"] for r in _rows(100))  # nothing lost or duplicated
    assert ds.label_names == ["0", "1"]
    assert "8:1:1" in ds.source


def test_split_is_seeded_and_cut_by_its_shares():
    rows = [(str(i), None, i % 2) for i in range(50)]
    cut = split_rows(rows, seed=1, shares=(0.8, 0.1, 0.1), names=("train", "validation", "test"))
    assert cut == split_rows(rows, 1, (0.8, 0.1, 0.1), ("train", "validation", "test"))
    assert cut != split_rows(rows, 2, (0.8, 0.1, 0.1), ("train", "validation", "test"))
    assert [len(part) for part in cut.values()] == [40, 5, 5]
    assert sorted(row for part in cut.values() for row in part) == sorted(rows)  # nothing lost or repeated
    nine_one = split_rows(rows, 1, (0.9, 0.1), ("train", "validation"))
    assert [len(part) for part in nine_one.values()] == [45, 5]


def test_a_directory_is_used_as_given_and_dev_counts_as_validation(tmp_path):
    _write(tmp_path / "train.tsv", _rows(30))
    _write(tmp_path / "dev.tsv", _rows(7))
    _write(tmp_path / "test.tsv", _rows(5))
    ds = load_text_dataset(str(tmp_path), seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (30, 7, 5)
    assert ds.train.texts == [r["review"] for r in _rows(30)]  # order kept: used as given
    assert ds.source == "given splits"


def test_tsv_with_quote_characters_keeps_every_row(tmp_path):
    path = tmp_path / "quotes.tsv"
    lines = ["sentence\tlabel"] + [f'a "quoted {i} phrase\t{i % 2}' for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    ds = load_text_dataset(str(path), seed=0)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 40
    assert all(t.startswith('a "quoted') for t in ds.train.texts)


def test_tsv_reads_glue_quoting_and_bare_opening_quotes(tmp_path):
    # GLUE's RTE quotes a field that holds quotes, CSV-style; a one-sentence-per-line file may open a
    # sentence with a bare quote, which CSV quoting would run on to the next quote.
    glue = tmp_path / "glue.tsv"
    glue.write_text("sentence1\tsentence2\tlabel\n" + "".join(
        f'"Lin Piao wrote Mao\'s ""Little Red Book"" {i}."\tHe wrote a book.\t{i % 2}\n' for i in range(40)))
    ds = load_text_dataset(str(glue), seed=0)
    texts = ds.train.texts + ds.validation.texts + ds.test.texts
    assert len(texts) == 40 and all(t.startswith('Lin Piao wrote Mao\'s "Little Red Book" ') for t in texts)
    bare = tmp_path / "bare.tsv"
    bare.write_text("sentence\tlabel\n" + "".join(f'" opens a quote {i}\t{i % 2}\n' for i in range(40)))
    ds = load_text_dataset(str(bare), seed=0)
    texts = ds.train.texts + ds.validation.texts + ds.test.texts
    assert len(texts) == 40 and all(t.startswith('" opens a quote') for t in texts)


def test_string_labels_become_ids_and_columns_can_be_named(tmp_path):
    rows = [{"body": f"text {i}", "stars": ["neg", "pos", "neutral"][i % 3], "label": "ignored"} for i in range(60)]
    path = _write(tmp_path / "data.csv", rows)
    ds = load_text_dataset(str(path), seed=0, text_column="body", label_column="stars")
    assert ds.label_names == ["neg", "neutral", "pos"]
    assert ds.num_labels == 3
    for text, label in zip(ds.train.texts, ds.train.labels):
        i = int(text.split()[1])
        assert ds.label_names[label] == ["neg", "pos", "neutral"][i % 3]


def test_max_samples_take_the_first_of_each_split(tmp_path):
    path = _write(tmp_path / "data.csv", _rows(100))
    full = load_text_dataset(str(path), seed=0)
    cut = load_text_dataset(str(path), seed=0, max_train_samples=20, max_eval_samples=3)
    assert cut.train.texts == full.train.texts[:20]
    assert (len(cut.validation), len(cut.test)) == (3, 3)


def test_demo_dataset_is_deterministic_and_not_trivial():
    a, b = load_text_dataset("demo", seed=1), load_text_dataset("demo", seed=1)
    assert a.train.texts == b.train.texts and a.test.labels == b.test.labels
    assert len(a.train) + len(a.validation) + len(a.test) >= 2000
    assert set(a.train.labels) == {0, 1}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"dataset file .*nope.csv does not exist; check the --dataset path"):
        load_text_dataset(str(tmp_path / "nope.csv"), seed=0)


def test_no_label_column_is_named_with_the_fix(tmp_path):
    path = _write(tmp_path / "data.csv", [{"text": f"t{i}", "score": i} for i in range(20)])
    with pytest.raises(UserError, match=r"has no label column \(columns: text, score\); name one with --label-column"):
        load_text_dataset(str(path), seed=0)
    with pytest.raises(UserError, match="has no column 'stars'"):
        load_text_dataset(str(path), seed=0, label_column="stars")


def test_one_class_is_refused(tmp_path):
    path = _write(tmp_path / "data.csv", _rows(30, label=lambda i: "pos"))
    with pytest.raises(UserError, match="single class .*'pos'"):
        load_text_dataset(str(path), seed=0)


def test_unsupported_file_type_and_incomplete_directory(tmp_path):
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(UserError, match="unsupported file type '.xlsx'"):
        load_text_dataset(str(bad), seed=0)
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "train.csv", _rows(10))
    with pytest.raises(UserError, match="has no validation file"):
        load_text_dataset(str(folder), seed=0)


def test_a_csv_whose_rows_outgrow_its_header_is_refused(tmp_path):
    """An unquoted comma in a text would make pandas read the text's head as the index: refused, not cut short."""
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\n" + "".join(f"review {i}, with a comma,{i % 2}\n" for i in range(20)))
    with pytest.raises(UserError, match="rows have more fields than the header .* quote the fields"):
        load_text_dataset(str(ragged), seed=0)


def test_unknown_hub_dataset_fails_fast_offline():
    with pytest.raises(UserError, match="dataset 'no-such-user/no-such-dataset' is not"):
        load_text_dataset("no-such-user/no-such-dataset", seed=0)


def test_tokenize_once_and_pad_each_micro_batch_to_its_own_longest(tiny_bert):
    from transformers import AutoTokenizer

    from accumbench.data.pipeline import TextSplit

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    split = tokenize(TextSplit(["short", "a somewhat longer sentence here", "word " * 300], [0, 1, 0]), tokenizer, 16)
    assert split.lengths == [3, 7, 16]  # [CLS] ... [SEP], truncated at max_length
    batch = collate(split, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0, 0]
    assert batch["input_ids"][0, 3:].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 1]
    assert collate(split, [2], tokenizer.pad_token_id)["input_ids"].shape == (1, 16)


# --- hub datasets: the real loader is datasets.load_dataset; offline we hand it a local DatasetDict ----


def _fake_hub(monkeypatch, dataset_dict):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: calls.append(name) or dataset_dict)
    return calls


def test_imdb_pools_train_and_test_without_unsupervised_then_splits_8_1_1(monkeypatch):
    from datasets import Dataset, DatasetDict

    split = lambda prefix, n, label: Dataset.from_dict(  # noqa: E731
        {"text": [f"{prefix} {i}" for i in range(n)], "label": [label(i) for i in range(n)]})
    calls = _fake_hub(monkeypatch, DatasetDict(
        train=split("train", 60, lambda i: i % 2), test=split("test", 40, lambda i: i % 2),
        unsupervised=split("unsup", 50, lambda i: -1)))
    ds = load_text_dataset("imdb", seed=0)
    assert calls == ["imdb"]
    texts = ds.train.texts + ds.validation.texts + ds.test.texts
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (80, 10, 10)
    assert not any(t.startswith("unsup") for t in texts)
    assert sum(t.startswith("test") for t in texts) == 40
    assert ds.label_names == ["0", "1"]


def test_a_hub_dataset_with_three_labelled_splits_is_used_as_given(monkeypatch):
    from datasets import Dataset, DatasetDict

    make = lambda n: Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)], "label": [i % 2 for i in range(n)]})  # noqa: E731
    _fake_hub(monkeypatch, DatasetDict(train=make(30), validation=make(6), test=make(4)))
    ds = load_text_dataset("someone/three-splits", seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (30, 6, 4)
    assert ds.source == "given splits"


def test_a_glue_style_unlabelled_test_split_is_left_out(monkeypatch):
    from datasets import Dataset, DatasetDict

    make = lambda n, lab: Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)], "label": [lab(i) for i in range(n)]})  # noqa: E731
    _fake_hub(monkeypatch, DatasetDict(train=make(90, lambda i: i % 2), validation=make(10, lambda i: i % 2),
                                       test=make(20, lambda i: -1)))
    ds = load_text_dataset("glue-like", seed=0)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 100  # train + validation pooled, then 8:1:1
    assert ds.label_names == ["0", "1"]


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_modernbert"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_batch_without_padding_carries_no_mask_and_means_the_same(fixture, pooling, request):
    """No mask for equal lengths (so transformers never asks the GPU whether the mask is all ones);
    the model computes the same as with an all-ones mask."""
    import torch

    from accumbench.data.pipeline import TextSplit
    from accumbench.model import TextClassifier, load_tokenizer_and_encoder

    tokenizer, encoder = load_tokenizer_and_encoder(request.getfixturevalue(fixture))
    split = tokenize(TextSplit(["word " * 40, "other words " * 30, "short"], [0, 1, 0]), tokenizer, 16)
    batch = collate(split, [0, 1], tokenizer.pad_token_id)
    assert batch["attention_mask"] is None and batch["input_ids"].shape == (2, 16)
    assert collate(split, [0, 2], tokenizer.pad_token_id)["attention_mask"] is not None
    torch.manual_seed(0)
    model = TextClassifier(encoder, 2, dropout=0.0, pooling=pooling).eval()
    with torch.no_grad():
        unmasked = model(batch["input_ids"], None)
        masked = model(batch["input_ids"], torch.ones_like(batch["input_ids"]))
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-6)
