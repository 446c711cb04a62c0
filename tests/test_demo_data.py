"""Tests for the synthetic demo review dataset (pure Python, fast)."""

import re

import pytest

from accumbench import demo_data
from accumbench.demo_data import (
    DEMO_LABEL_NOISE,
    DEMO_SIZE,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    generate_demo_reviews,
)


@pytest.fixture(scope="module")
def clean():
    return generate_demo_reviews(seed=0, label_noise=0.0)


@pytest.fixture(scope="module")
def noisy():
    return generate_demo_reviews(seed=0)


def _keyword_predict(text):
    tokens = re.findall(r"[a-z']+", text.lower())
    score = sum(t in POSITIVE_WORDS for t in tokens) - sum(t in NEGATIVE_WORDS for t in tokens)
    return 1 if score > 0 else 0


def test_structure_and_types(noisy):
    assert set(noisy) == {"text", "label"}
    assert len(noisy["text"]) == len(noisy["label"]) == DEMO_SIZE
    assert all(isinstance(t, str) and t for t in noisy["text"])
    assert all(label in (0, 1) and type(label) is int for label in noisy["label"])


def test_default_size_at_least_2000(noisy):
    assert DEMO_SIZE >= 2000
    assert len(noisy["text"]) >= 2000


def test_custom_size():
    data = generate_demo_reviews(n=37, seed=5)
    assert len(data["text"]) == len(data["label"]) == 37


def test_deterministic(noisy):
    again = generate_demo_reviews(seed=0)
    assert again == noisy


def test_different_seed_differs(noisy):
    other = generate_demo_reviews(seed=1)
    assert other["text"] != noisy["text"]
    assert other["label"] != noisy["label"]


@pytest.mark.parametrize("data_name", ["clean", "noisy"])
def test_balanced_labels(data_name, request):
    labels = request.getfixturevalue(data_name)["label"]
    frac_pos = sum(labels) / len(labels)
    assert 0.40 <= frac_pos <= 0.60, frac_pos


def test_length_spread(noisy):
    counts = [len(t.split()) for t in noisy["text"]]
    assert min(counts) < 15
    assert max(counts) > 100
    assert max(counts) <= 200
    # Enough long reviews that 128-token truncation actually happens sometimes.
    assert sum(c > 100 for c in counts) >= 0.05 * len(counts)
    buckets = {c // 20 for c in counts}
    assert len(buckets) >= 5, sorted(buckets)


def test_exact_label_noise(clean, noisy):
    assert clean["text"] == noisy["text"]
    flipped = sum(a != b for a, b in zip(clean["label"], noisy["label"]))
    assert flipped == round(DEMO_SIZE * DEMO_LABEL_NOISE)


def test_noise_count_for_other_sizes():
    a = generate_demo_reviews(n=333, seed=7, label_noise=0.0)
    b = generate_demo_reviews(n=333, seed=7, label_noise=0.25)
    assert a["text"] == b["text"]
    assert sum(x != y for x, y in zip(a["label"], b["label"])) == round(333 * 0.25)


def test_keyword_classifier_is_imperfect_but_informative(clean):
    preds = [_keyword_predict(t) for t in clean["text"]]
    acc = sum(p == y for p, y in zip(preds, clean["label"])) / len(preds)
    assert 0.55 < acc < 0.95, acc


def test_negation_and_mixed_opinions_present(clean):
    texts = clean["text"]
    assert sum("wasn't" in t or " was not " in t or "never felt" in t for t in texts) > 0.2 * len(texts)
    assert sum(" but " in t or "lthough " in t for t in texts) > 0.2 * len(texts)


def test_word_lists_disjoint_and_sized():
    assert len(POSITIVE_WORDS) >= 20 and len(NEGATIVE_WORDS) >= 20
    assert not set(POSITIVE_WORDS) & set(NEGATIVE_WORDS)
    assert isinstance(POSITIVE_WORDS, tuple) and isinstance(NEGATIVE_WORDS, tuple)
    assert len(demo_data.FILLERS) >= 25


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"label_noise": -0.1}, {"label_noise": 1.5}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_demo_reviews(**kwargs)


def test_standard_library_only():
    source = open(demo_data.__file__, encoding="utf-8").read()
    for banned in ("numpy", "torch", "datasets", "transformers"):
        assert not re.search(rf"^\s*(import|from)\s+{banned}\b", source, re.M), banned
