"""Datasets: tables (sources.py) -> the text column, or a pair's two -> (split 8:1:1, or 9:1 beside a
given test set, when needed) -> label ids -> tokenize once -> pad each micro-batch to its own longest sequence.

`torch` and tokenizers are imported inside functions so the CLI starts fast.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from accumbench.data.sources import SPLITS, read_tables
from accumbench.errors import UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "sentiment")
# The usual sentence-pair columns (GLUE, NLI, paraphrase and duplicate-question sets), first to second.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
                ("question", "sentence"), ("sentence_a", "sentence_b"))


@dataclass
class TextSplit:
    """A split's examples: one text each, or a pair (texts[i], pairs[i]) when the task has two."""

    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> TextSplit:
        if n is None:
            return self
        return TextSplit(self.texts[:n], self.labels[:n], None if self.pairs is None else self.pairs[:n])

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names exactly these examples in this order: runs are paired (McNemar) only on equal fingerprints.
        A single text hashes as it always has, so earlier runs still pair with new ones."""
        import hashlib

        digest = hashlib.sha256()
        for i, (text, label) in enumerate(zip(self.texts, self.labels)):
            pair = "" if self.pairs is None else f"\t{self.pairs[i]}"
            digest.update(f"{label}\t{text}{pair}\n".encode())
        return digest.hexdigest()[:16]


@dataclass
class TextDataset:
    """Train/validation/test with integer labels 0..C-1; label_names[i] is the original value of id i."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    label_names: list[str]
    source: str  # how the splits were made, recorded with the run
    columns: tuple[str, ...] = ("text",)  # the text column, and the pair's second column when there is one
    dropped: str = ""  # what was left out, e.g. "dropped 3 rows with no label" ('' when nothing was)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 2

    def describe(self) -> str:
        """What the run's header says of its data: the columns, how the splits were made, what was dropped."""
        texts = f"pairs of {' + '.join(self.columns)}" if self.is_pair else f"text column {self.columns[0]}"
        return "; ".join(part for part in (texts, self.source, self.dropped) if part)


# One example as read: (text, second text or None, label value).
Row = tuple[str, "str | None", Any]


def load_text_dataset(dataset: str, seed: int, text_column: str | None = None, label_column: str | None = None,
                      max_train_samples: int | None = None, max_eval_samples: int | None = None,
                      text_pair_column: str | None = None, dataset_config: str | None = None) -> TextDataset:
    """Load `dataset` (demo, demo-pairs, imdb, a hub id, a local file or directory) as train/validation/test."""
    columns_by_split = read_tables(dataset, dataset_config)
    labelled = {split: table for split, table in columns_by_split.items()
                if not _unlabelled_split(split, table, label_column)}
    unlabelled_test = "test" in columns_by_split and "test" not in labelled
    if not labelled:
        raise UserError(f"dataset '{dataset}' has no labelled split; check --label-column or the data")
    raw, columns, dropped = _read_rows(dataset, labelled, text_column, label_column, text_pair_column)
    raw, source = _arrange_splits(raw, seed, unlabelled_test)

    label_values = sorted({y for rows in raw.values() for _, _, y in rows}, key=lambda v: (str(type(v)), v))
    label_ids = {value: i for i, value in enumerate(label_values)}
    pair = len(columns) == 2
    splits = {name: TextSplit([t for t, _, _ in rows], [label_ids[y] for _, _, y in rows],
                              [p for _, p, _ in rows] if pair else None) for name, rows in raw.items()}
    _check_trainable(dataset, splits, label_values, dropped)
    return TextDataset(
        train=splits["train"].head(max_train_samples),
        validation=splits["validation"].head(max_eval_samples),
        test=splits["test"].head(max_eval_samples),
        label_names=[str(v) for v in label_values],
        source=source,
        columns=columns,
        dropped=dropped,
    )


def _read_rows(dataset: str, labelled: dict[str, dict[str, list[Any]]], text_column: str | None,
               label_column: str | None, text_pair_column: str | None
               ) -> tuple[dict[str, list[Row]], tuple[str, ...], str]:
    """Each labelled split's rows (text, pair, label value), the text column(s) read, and what was dropped
    ('' when nothing was): rows with no label or no text."""
    raw: dict[str, list[Row]] = {}
    columns: tuple[str, ...] = ()
    missing = {"label": 0, "text": 0}
    for split, table in labelled.items():
        columns = text_columns(dataset, table, text_column, text_pair_column)
        label_col = _pick_column(dataset, table, label_column, LABEL_COLUMNS, "label")
        pair_values = table[columns[1]] if len(columns) == 2 else [None] * len(table[label_col])
        raw[split] = []
        for text, pair, label in zip(table[columns[0]], pair_values, table[label_col]):
            if is_missing(label):
                missing["label"] += 1
            elif is_missing(text) or (len(columns) == 2 and is_missing(pair)):
                missing["text"] += 1
            else:
                raw[split].append((str(text), None if pair is None else str(pair), label))
    dropped = " and ".join(f"{n} row{'s' if n != 1 else ''} with no {what}" for what, n in missing.items() if n)
    return raw, columns, f"dropped {dropped}" if dropped else ""


def _arrange_splits(raw: dict[str, list[Row]], seed: int, unlabelled_test: bool) -> tuple[dict[str, list[Row]], str]:
    """Train/validation/test from the labelled splits as given, and how they were made (recorded with the run)."""
    if set(raw) == set(SPLITS):
        return raw, "given splits"
    if unlabelled_test and {"train", "validation"} <= set(raw):
        # GLUE's way: the test labels are hidden, so the labelled validation split is the test set, and a
        # tenth of train is held out to choose on (never the test set itself).
        arranged = {**split_rows(raw["train"], seed, (0.9, 0.1), ("train", "validation")), "test": raw["validation"]}
        return arranged, f"test split unlabelled: validation used as test; train split 9:1 into train/validation, seed {seed}"
    # One pool (a single file, or imdb's train+test): shuffle with the seed and cut 8:1:1.
    pool = [row for split in raw for row in raw[split]]
    source = f"8:1:1 split of {len(pool)} examples, seed {seed}"
    if unlabelled_test:
        source = f"test split unlabelled and left out; {source}"
    return split_rows(pool, seed, (0.8, 0.1, 0.1), SPLITS), source


def _check_trainable(dataset: str, splits: dict[str, TextSplit], label_values: list[Any], dropped: str) -> None:
    """Two classes in train, and no empty split: else one UserError that says what was dropped."""
    because = f" ({dropped})" if dropped else ""
    train_classes = set(splits["train"].labels)
    if len(train_classes) < 2:
        only = label_values[next(iter(train_classes))] if train_classes else "none"
        raise UserError(
            f"dataset '{dataset}' has a single class (label {only!r}) in its training split{because}; "
            "a classifier needs at least two: check --label-column or the data"
        )
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"dataset '{dataset}' has an empty {name} split{because}; "
                            "it needs at least 10 labelled examples")


def is_missing(value: Any) -> bool:
    """No label, or no text: None (an empty CSV cell, a null) or a blank string."""
    return value is None or (isinstance(value, str) and not value.strip())


def split_rows(rows: list[Row], seed: int, shares: tuple[float, ...], names: tuple[str, ...]) -> dict[str, list[Row]]:
    """Shuffle with the seed and cut by `shares` (the last part takes the rest): 8:1:1 as the seed study
    did, or 9:1 when the test set is given."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cuts, start = {}, 0
    for i, (name, share) in enumerate(zip(names, shares)):
        end = len(order) if i == len(names) - 1 else start + int(share * len(order))
        cuts[name] = [rows[j] for j in order[start:end]]
        start = end
    return cuts


def text_columns(dataset: str, table: dict[str, list], text_column: str | None,
                 text_pair_column: str | None) -> tuple[str, ...]:
    """(text column,) or (text column, pair column). A named text column alone means single texts; with
    nothing named, a usual pair (PAIR_COLUMNS) wins over a usual single text column."""
    if text_pair_column is not None:
        if text_pair_column not in table:
            raise UserError(f"dataset '{dataset}' has no column '{text_pair_column}' (columns: {', '.join(table)}); "
                            "pass --text-pair-column with one of those")
        if text_column is None:  # the first of the usual pair whose second this is, else a usual text column
            partner = next((a for a, b in PAIR_COLUMNS if b == text_pair_column and a in table), None)
            text_column = partner or _pick_column(dataset, table, None, TEXT_COLUMNS, "text")
        else:
            _pick_column(dataset, table, text_column, TEXT_COLUMNS, "text")
        if text_column == text_pair_column:
            raise UserError(f"--text-pair-column '{text_pair_column}' is also the text column; name the first text "
                            "with --text-column")
        return text_column, text_pair_column
    if text_column is None:
        for first, second in PAIR_COLUMNS:
            if first in table and second in table:
                return first, second
    return (_pick_column(dataset, table, text_column, TEXT_COLUMNS, "text"),)


def _pick_column(dataset: str, table: dict[str, list], wanted: str | None, candidates: Sequence[str], kind: str) -> str:
    if wanted is not None:
        if wanted not in table:
            raise UserError(
                f"dataset '{dataset}' has no column '{wanted}' (columns: {', '.join(table)}); "
                f"pass --{kind}-column with one of those"
            )
        return wanted
    for name in candidates:
        if name in table:
            return name
    raise UserError(
        f"dataset '{dataset}' has no {kind} column (columns: {', '.join(table)}); "
        f"name one with --{kind}-column"
    )


def _unlabelled_split(split: str, table: dict[str, list], label_column: str | None) -> bool:
    """A split with no labels at all: GLUE-style test splits carry -1 everywhere (on the hub and in its
    files), others leave the label empty, or (a test file) have no label column; imdb has an
    'unsupervised' split."""
    names = [label_column] if label_column else LABEL_COLUMNS
    found = next((name for name in names if name in table), None)
    if found is None:  # a test file without the column; anywhere else that is a wrong --label-column
        return split == "test"
    values = table[found]
    return bool(values) and all(is_missing(y) or y == -1 or y == "-1" for y in values)


# --- tokenization and micro-batches -------------------------------------------------------------


@dataclass
class EncodedSplit:
    """Token ids without padding; padding happens per micro-batch in `collate`."""

    input_ids: list[list[int]]
    labels: list[int]
    # A pair's segment ids (0 for the first text, 1 for the second), for models that embed them (BERT);
    # None for single texts and for models without them (ModernBERT), which then get none.
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def tokenize(split: TextSplit, tokenizer: Any, max_length: int, segment_ids: bool = False) -> EncodedSplit:
    """Tokenize once, truncating to max_length and leaving padding to the micro-batch.

    A pair goes through the tokenizer's own pair handling ([CLS] a [SEP] b [SEP] for BERT), truncated
    longest_first: the longer text loses tokens first, so a long premise cannot push the hypothesis out.
    `segment_ids`: keep the pair's token_type_ids (for a model that has a token type embedding)."""
    keep_types = segment_ids and split.pairs is not None
    encoded = tokenizer(split.texts, split.pairs, truncation="longest_first", max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=keep_types)
    return EncodedSplit(input_ids=encoded["input_ids"], labels=list(split.labels),
                        token_type_ids=encoded["token_type_ids"] if keep_types else None)


def collate(split: EncodedSplit, indices: Sequence[int], pad_token_id: int) -> dict[str, Any]:
    """Pad the selected samples to the longest among them (dynamic padding).

    A micro-batch without padding (all samples equally long: common once groups are sorted by
    length and long texts are truncated) gets attention_mask None. Given a mask, transformers'
    SDPA path asks the GPU whether it is all ones (`mask.all()` in a Python `if`) on every forward,
    a host-device sync that stalls the launch queue; None says the same without asking."""
    import torch

    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    # One tensor from nested lists: a copy per row into a preallocated tensor costs more in Python.
    input_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
    attention_mask = None
    if any(len(r) < width for r in rows):
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    labels = torch.tensor([split.labels[i] for i in indices], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if split.token_type_ids is not None:  # padding positions are masked, so their segment id is moot: 0
        types = [split.token_type_ids[i] for i in indices]
        batch["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types], dtype=torch.long)
    return batch


def token_counts(micro_batches: Iterable[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """(real tokens, tokens after padding) of these micro-batches, each padded to its own longest
    sample as `collate` does: the padding fraction is 1 - real / padded."""
    real = padded = 0
    for indices in micro_batches:
        if indices:
            sizes = [lengths[i] for i in indices]
            real += sum(sizes)
            padded += max(sizes) * len(sizes)
    return real, padded
