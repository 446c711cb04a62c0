"""Tests for the synthetic demo review dataset (pure Python, fast)."""

import math
import re

import pytest

from accumbench.data import demo
from accumbench.data.demo import (
    DEMO_LABEL_NOISE,
    DEMO_PAIRS_LABEL_NOISE,
    DEMO_PAIRS_SIZE,
    DEMO_SIZE,
    NEGATIVE_WORDS,
    PAIR_LABELS,
    POSITIVE_WORDS,
    generate_demo_pairs,
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
    assert len(demo.FILLERS) >= 25


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"label_noise": -0.1}, {"label_noise": 1.5}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_demo_reviews(**kwargs)


def test_standard_library_only():
    source = open(demo.__file__, encoding="utf-8").read()
    for banned in ("numpy", "torch", "datasets", "transformers"):
        assert not re.search(rf"^\s*(import|from)\s+{banned}\b", source, re.M), banned


# ---------------------------------------------------------------------------------------------------------------
# Sentence pairs (generate_demo_pairs)

_FUNCTION_WORDS = {"the", "a", "an", "it", "this", "was", "not", "did", "seem", "seemed", "happen", "happened",
                   "in", "on", "for", "by"}


@pytest.fixture(scope="module")
def clean_pairs():
    return generate_demo_pairs(seed=0, label_noise=0.0)


@pytest.fixture(scope="module")
def noisy_pairs():
    return generate_demo_pairs(seed=0)


def _words(text):
    return re.findall(r"[a-z']+", text.lower())


def _mentions(text, slot_groups):
    """(group index, phrase) of every phrase of a slot in `text`, whole words, the longest match first."""
    found = []
    for g, group in enumerate(slot_groups):
        for phrase in group:
            if re.search(rf"\b{re.escape(phrase)}\b", text, re.I):
                found.append((len(phrase), g, phrase))
    return [(g, phrase) for _, g, phrase in sorted(found, reverse=True)]


def _oracle(premise, hypothesis):
    """Solves a pair from the word lists: which fact the hypothesis states, and what the premise says of it."""
    asked = [(slot, groups, m) for slot, groups in demo.PAIR_SLOTS for m in _mentions(hypothesis, groups)[:1]]
    assert len(asked) == 1, (hypothesis, asked)
    _, groups, (group, _) = asked[0]
    stated = {g for g, _ in _mentions(premise, groups)}
    assert len(stated) <= 1, (premise, stated)
    if not stated:
        return "neutral"
    agrees = stated == {group}
    negated = " not " in f" {hypothesis} "
    return "entailment" if agrees != negated else "contradiction"


def _overlap_predict(premise, hypothesis):
    """A shallow heuristic: all content words shared means entailment (contradiction if negated), else neutral."""
    content = [w for w in _words(hypothesis) if w not in _FUNCTION_WORDS]
    if set(content) <= set(_words(premise)):
        return "contradiction" if "not" in _words(hypothesis) else "entailment"
    return "neutral"


def _naive_bayes_accuracy(texts, labels):
    """Bag-of-words naive Bayes fit on the first half, scored on the second: what one text alone reveals."""
    half = len(texts) // 2
    counts = {label: {} for label in PAIR_LABELS}
    totals = dict.fromkeys(PAIR_LABELS, 0)
    priors = dict.fromkeys(PAIR_LABELS, 0)
    for text, label in zip(texts[:half], labels[:half]):
        priors[label] += 1
        for w in _words(text):
            counts[label][w] = counts[label].get(w, 0) + 1
            totals[label] += 1
    vocab = {w for c in counts.values() for w in c}

    def score(text, label):
        return math.log(priors[label]) + sum(
            math.log((counts[label].get(w, 0) + 1) / (totals[label] + len(vocab))) for w in _words(text))

    preds = [max(PAIR_LABELS, key=lambda label, t=text: score(t, label)) for text in texts[half:]]
    return sum(p == y for p, y in zip(preds, labels[half:])) / len(preds)


def test_pairs_structure_and_types(noisy_pairs):
    assert set(noisy_pairs) == {"premise", "hypothesis", "label"}
    assert len(noisy_pairs["premise"]) == len(noisy_pairs["hypothesis"]) == len(noisy_pairs["label"])
    assert len(noisy_pairs["label"]) == DEMO_PAIRS_SIZE == DEMO_SIZE
    for column in ("premise", "hypothesis"):
        assert all(isinstance(t, str) and t.strip() for t in noisy_pairs[column])
    assert set(noisy_pairs["label"]) == set(PAIR_LABELS) == {"entailment", "neutral", "contradiction"}


def test_pairs_custom_size():
    data = generate_demo_pairs(n=37, seed=5)
    assert len(data["premise"]) == len(data["hypothesis"]) == len(data["label"]) == 37


def test_pairs_deterministic_and_seed_dependent(noisy_pairs):
    assert generate_demo_pairs(seed=0) == noisy_pairs
    other = generate_demo_pairs(seed=1)
    for column in ("premise", "hypothesis", "label"):
        assert other[column] != noisy_pairs[column]


@pytest.mark.parametrize("data_name", ["clean_pairs", "noisy_pairs"])
def test_pairs_balanced_labels(data_name, request):
    labels = request.getfixturevalue(data_name)["label"]
    for label in PAIR_LABELS:
        assert 0.25 <= labels.count(label) / len(labels) <= 0.42, (label, labels.count(label))


def test_pairs_labels_follow_from_the_texts(clean_pairs):
    # Every clean label is what the stated facts imply: no filler or name collides with a fact's words.
    preds = [_oracle(p, h) for p, h in zip(clean_pairs["premise"], clean_pairs["hypothesis"])]
    assert preds == clean_pairs["label"]


def test_pairs_exact_label_noise(clean_pairs, noisy_pairs):
    assert clean_pairs["premise"] == noisy_pairs["premise"]
    assert clean_pairs["hypothesis"] == noisy_pairs["hypothesis"]
    flipped = [(a, b) for a, b in zip(clean_pairs["label"], noisy_pairs["label"]) if a != b]
    assert len(flipped) == round(DEMO_PAIRS_SIZE * DEMO_PAIRS_LABEL_NOISE)
    # Flips go to both other classes.
    assert len(set(flipped)) == 6


def test_pairs_noise_count_for_other_sizes():
    a = generate_demo_pairs(n=333, seed=7, label_noise=0.0)
    b = generate_demo_pairs(n=333, seed=7, label_noise=0.25)
    assert a["premise"] == b["premise"] and a["hypothesis"] == b["hypothesis"]
    assert sum(x != y for x, y in zip(a["label"], b["label"])) == round(333 * 0.25)


def test_pairs_hypothesis_words_do_not_give_the_label_away(clean_pairs):
    # The hypothesis is drawn before the label, so each of its words occurs under every label about equally.
    by_word = {}
    for hypothesis, label in zip(clean_pairs["hypothesis"], clean_pairs["label"]):
        for w in set(_words(hypothesis)):
            by_word.setdefault(w, []).append(label)
    frequent = {w: labels for w, labels in by_word.items() if len(labels) >= 20}
    assert "not" in frequent and len(frequent) >= 50
    for w, labels in frequent.items():
        assert set(labels) == set(PAIR_LABELS), w
        if len(labels) >= 200:
            shares = [labels.count(label) / len(labels) for label in PAIR_LABELS]
            assert min(shares) >= 0.22 and max(shares) <= 0.45, (w, shares)


@pytest.mark.parametrize("column", ["hypothesis", "premise"])
def test_pairs_one_text_alone_is_near_chance(clean_pairs, column):
    acc = _naive_bayes_accuracy(clean_pairs[column], clean_pairs["label"])
    assert acc < 0.40, acc


def test_pairs_shallow_overlap_is_informative_but_imperfect(clean_pairs):
    # Word overlap gets part of the way (something a small model trained from scratch can pick up); synonyms,
    # negation and incompatible values need more than that.
    preds = [_overlap_predict(p, h) for p, h in zip(clean_pairs["premise"], clean_pairs["hypothesis"])]
    acc = sum(p == y for p, y in zip(preds, clean_pairs["label"])) / len(preds)
    assert 0.45 < acc < 0.8, acc


def test_pairs_negation_synonyms_and_length_spread(clean_pairs):
    hypotheses, premises = clean_pairs["hypothesis"], clean_pairs["premise"]
    assert 0.2 < sum("not" in _words(h) for h in hypotheses) / len(hypotheses) < 0.4
    # Entailments often restate a fact in other words than the premise's.
    restated = [_mentions(h, groups)[0][1] for h, label in zip(hypotheses, clean_pairs["label"])
                if label == "entailment" for _, groups in demo.PAIR_SLOTS if _mentions(h, groups)]
    entail_premises = [p for p, label in zip(premises, clean_pairs["label"]) if label == "entailment"]
    reworded = sum(not re.search(rf"\b{re.escape(w)}\b", p, re.I) for w, p in zip(restated, entail_premises))
    assert reworded > 0.15 * len(entail_premises)
    counts = [len(p.split()) for p in premises]
    assert min(counts) < 10 and max(counts) > 40 and max(counts) <= 100
    assert len({c // 10 for c in counts}) >= 5


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"label_noise": -0.1}, {"label_noise": 1.5}])
def test_pairs_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_demo_pairs(**kwargs)
