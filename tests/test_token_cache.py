"""Tokenized splits are cached on disk, keyed by the examples, the tokenizer and the max length."""

from __future__ import annotations

from pathlib import Path

from conftest import query
from test_train import train_cli

from accumbench.data import pipeline, token_cache


def _dataset(n: int = 60, seed: int = 1) -> pipeline.TextDataset:
    from accumbench.data.demo import generate_demo_reviews

    reviews = generate_demo_reviews(n=n, seed=seed)
    split = pipeline.TextSplit(reviews["text"], reviews["label"])
    return pipeline.TextDataset(split.head(40), pipeline.TextSplit(split.texts[40:50], split.labels[40:50]),
                            pipeline.TextSplit(split.texts[50:], split.labels[50:]), ["0", "1"], "test")


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_second_load_reads_the_same_tokens_from_disk(tiny_bert, tmp_path):
    cache, dataset, tokenizer = token_cache.TokenCache(tmp_path), _dataset(), _tokenizer(tiny_bert)
    first, cached = cache.load_or_tokenize(dataset, tokenizer, 32)
    assert not cached and len(list((tmp_path / "tokenized").glob("*.npz"))) == 1
    second, cached = cache.load_or_tokenize(dataset, tokenizer, 32)
    assert cached
    for name in pipeline.SPLITS:
        assert second[name].input_ids == first[name].input_ids == pipeline.tokenize(
            getattr(dataset, name), tokenizer, 32).input_ids
        assert second[name].labels == first[name].labels


def test_key_changes_with_examples_tokenizer_and_max_length(tiny_bert, tmp_path):
    cache, dataset, tokenizer = token_cache.TokenCache(tmp_path), _dataset(), _tokenizer(tiny_bert)
    key = cache.key(dataset, tokenizer, 32)
    assert cache.key(_dataset(), _tokenizer(tiny_bert), 32) == key  # stable across loads
    tokenizer("a call leaves truncation switched on in the backend", truncation=True, max_length=8)
    assert cache.key(dataset, tokenizer, 32) == key
    assert cache.key(dataset, tokenizer, 64) != key
    assert cache.key(_dataset(seed=2), tokenizer, 32) != key  # other examples (another split seed)
    cased = _tokenizer(tiny_bert)
    cased.backend_tokenizer.normalizer = None  # e.g. a cased vocabulary: the same text tokenizes differently
    assert cache.key(dataset, cased, 32) != key


def test_an_unreadable_cache_file_is_tokenized_again(tiny_bert, tmp_path):
    cache, dataset, tokenizer = token_cache.TokenCache(tmp_path), _dataset(), _tokenizer(tiny_bert)
    path = tmp_path / "tokenized" / f"{cache.key(dataset, tokenizer, 32)}.npz"
    cache.load_or_tokenize(dataset, tokenizer, 32)
    whole = path.read_bytes()
    for broken in (b"not a numpy file", whole[: len(whole) // 2]):  # a foreign file, a truncated one
        path.write_bytes(broken)
        splits, cached = cache.load_or_tokenize(dataset, tokenizer, 32)
        assert not cached and splits["train"].input_ids == pipeline.tokenize(dataset.train, tokenizer, 32).input_ids
        assert cache.load_or_tokenize(dataset, tokenizer, 32)[1]  # rewritten, readable now


def test_the_second_run_skips_tokenization_and_records_it(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCUMBENCH_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--epochs", "1")
    calls = []
    monkeypatch.setattr(pipeline, "tokenize", lambda *args: calls.append(args))  # must not be needed
    train_cli(tiny_bert, db, "--epochs", "1")
    assert calls == []
    first, second = query(db, "SELECT tokenize_seconds, tokens_cached FROM runs ORDER BY id")
    assert first["tokens_cached"] == 0 and second["tokens_cached"] == 1
    assert first["tokenize_seconds"] > 0 and second["tokenize_seconds"] > 0
    assert list(Path(tmp_path / "cache" / "tokenized").glob("*.npz"))
