"""Datasets: load -> (split 8:1:1 when needed) -> map labels to ids -> tokenize once -> pad each
micro-batch to its own longest sequence.

Hub datasets and local files go through Hugging Face `datasets`' own loaders, as a user's script
would. `datasets`, `torch` and tokenizers are imported inside functions so the CLI starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import random
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accumbench.errors import UserError, first_line

SPLITS = ("train", "validation", "test")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "sentiment")
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Names a directory's split files may use, e.g. dev.tsv for validation.
SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass
class TextSplit:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> TextSplit:
        return self if n is None else TextSplit(self.texts[:n], self.labels[:n])

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names exactly these examples in this order: runs are paired (McNemar) only on equal fingerprints."""
        import hashlib

        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()[:16]


@dataclass
class TextDataset:
    """Train/validation/test with integer labels 0..C-1; label_names[i] is the original value of id i."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    label_names: list[str]
    source: str  # how the splits were made, recorded with the run

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_text_dataset(
    dataset: str,
    seed: int,
    text_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> TextDataset:
    """Load `dataset` (demo, imdb, a hub id, a local file or directory) as train/validation/test."""
    columns_by_split = _load_columns(dataset)
    raw: dict[str, tuple[list, list]] = {}
    for split, table in columns_by_split.items():
        text_col = _pick_column(dataset, table, text_column, TEXT_COLUMNS, "text")
        label_col = _pick_column(dataset, table, label_column, LABEL_COLUMNS, "label")
        pairs = [(t, y) for t, y in zip(table[text_col], table[label_col]) if y is not None and t is not None]
        raw[split] = ([str(t) for t, _ in pairs], [y for _, y in pairs])

    if set(raw) == set(SPLITS):
        source = "given splits"
    else:
        # One pool (a single file, or imdb's train+test): shuffle with the seed and cut 8:1:1.
        texts = [t for split in raw for t in raw[split][0]]
        labels = [y for split in raw for y in raw[split][1]]
        raw = split_8_1_1(texts, labels, seed)
        source = f"8:1:1 split of {len(labels)} examples, seed {seed}"

    label_values = sorted({y for _, labels in raw.values() for y in labels}, key=lambda v: (str(type(v)), v))
    label_ids = {value: i for i, value in enumerate(label_values)}
    splits = {name: TextSplit(texts, [label_ids[y] for y in labels]) for name, (texts, labels) in raw.items()}

    train_classes = set(splits["train"].labels)
    if len(train_classes) < 2:
        only = label_values[next(iter(train_classes))] if train_classes else "none"
        raise UserError(
            f"dataset '{dataset}' has a single class (label {only!r}) in its training split; "
            "a classifier needs at least two: check --label-column or the data"
        )
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"dataset '{dataset}' has an empty {name} split; it needs at least 10 labelled examples")

    return TextDataset(
        train=splits["train"].head(max_train_samples),
        validation=splits["validation"].head(max_eval_samples),
        test=splits["test"].head(max_eval_samples),
        label_names=[str(v) for v in label_values],
        source=source,
    )


def split_8_1_1(texts: list[str], labels: list, seed: int) -> dict[str, tuple[list, list]]:
    """Shuffle with the seed and cut into 80% train, 10% validation, 10% test, as the seed study did."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
    cuts = {"train": order[:n_train], "validation": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {name: ([texts[i] for i in idx], [labels[i] for i in idx]) for name, idx in cuts.items()}


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


def _load_columns(dataset: str) -> dict[str, dict[str, list]]:
    """Split name -> {column: values}. The splits are all three of SPLITS, or pieces of one pool."""
    if dataset == "demo":
        from accumbench.demo_data import generate_demo_reviews

        return {"all": generate_demo_reviews()}
    path = Path(dataset).expanduser()
    if path.is_dir():
        return _load_directory(path)
    if path.is_file():
        return {"all": _load_file(path)}
    if path.suffix.lower() in FILE_FORMATS or dataset.startswith((".", "/", "~")):
        raise UserError(f"dataset file {dataset} does not exist; check the --dataset path")
    return _load_hub(dataset)


def _load_file(path: Path) -> dict[str, list]:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot read {path}: unsupported file type '{path.suffix}'; use one of {', '.join(FILE_FORMATS)}"
        )
    import datasets

    kwargs: dict[str, Any] = {}
    if path.suffix.lower() == ".tsv":
        # QUOTE_NONE: sentences such as SST-2's contain bare quote characters.
        kwargs = {"delimiter": "\t", "quoting": 3}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # the loaders raise many types for malformed files
        raise UserError(f"cannot read {path} as {fmt} ({type(exc).__name__}: {first_line(exc)}); fix the file") from None
    return ds.to_dict()


def _load_directory(path: Path) -> dict[str, dict[str, list]]:
    found = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        matches = [p for stem in stems for p in sorted(path.glob(f"{stem}.*")) if p.suffix.lower() in FILE_FORMATS]
        if not matches:
            raise UserError(
                f"directory {path} has no {split} file; it needs train, validation (or dev/val) and test files "
                f"with one of the extensions {', '.join(FILE_FORMATS)}"
            )
        found[split] = _load_file(matches[0])
    return found


def _load_hub(name: str) -> dict[str, dict[str, list]]:
    import datasets

    try:
        dsd = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown id, gated, ...: all mean "cannot use this name"
        raise UserError(
            f"dataset '{name}' is not 'demo', a local file or directory, or a hub dataset that could be loaded "
            f"({type(exc).__name__}: {first_line(exc)}); check the name, or run once with internet to cache it"
        ) from None
    if name == "imdb":
        # The seed study: train + test pooled (the unlabelled 'unsupervised' split left out), then 8:1:1.
        return {"train_pool": dsd["train"].to_dict(), "test_pool": dsd["test"].to_dict()}
    labelled = {split: ds for split, ds in dsd.items() if not _unlabelled(ds)}
    if set(SPLITS) <= set(labelled):
        return {split: labelled[split].to_dict() for split in SPLITS}
    return {f"{split}_pool": ds.to_dict() for split, ds in labelled.items()}


def _unlabelled(ds: Any) -> bool:
    """GLUE-style test splits carry label -1 everywhere; imdb has an 'unsupervised' split."""
    for col in LABEL_COLUMNS:
        if col in ds.column_names:
            return all(y is None or y == -1 for y in ds[col][:1000])
    return False


# --- tokenization and micro-batches -------------------------------------------------------------


@dataclass
class EncodedSplit:
    """Token ids without padding; padding happens per micro-batch in `collate`."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def tokenize(split: TextSplit, tokenizer: Any, max_length: int) -> EncodedSplit:
    """Tokenize once, truncating to max_length and leaving padding to the micro-batch."""
    encoded = tokenizer(split.texts, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
    return EncodedSplit(input_ids=encoded["input_ids"], labels=list(split.labels))


def cache_dir() -> Path:
    """$ACCUMBENCH_CACHE, else $XDG_CACHE_HOME/accumbench, else ~/.cache/accumbench."""
    if os.environ.get("ACCUMBENCH_CACHE"):
        return Path(os.environ["ACCUMBENCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "accumbench"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Names what the tokenizer does: its full serialised pipeline (vocabulary, normaliser, special
    tokens), so a changed vocabulary or lower-casing never reuses stale tokens."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # A call with truncation=True leaves truncation switched on in the backend: not part of what it is.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:  # a slow (Python) tokenizer: its class, vocabulary and settings
        text = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                           str(tokenizer.init_kwargs)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TokenCache:
    """Tokenized splits on disk, one .npz per (examples, tokenizer, max length).

    The key is built from the splits' fingerprints (which examples, in which order: so the dataset,
    its split seed and any --max-*-samples), the tokenizer's fingerprint and max_length. Writes go
    to a temporary file renamed into place, so parallel workers never read half a file."""

    VERSION = 1  # bump when the file layout changes

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_dir()) / "tokenized"

    def key(self, dataset: TextDataset, tokenizer: Any, max_length: int) -> str:
        import hashlib

        parts = [str(self.VERSION), tokenizer_fingerprint(tokenizer), str(max_length),
                 *(getattr(dataset, name).fingerprint for name in SPLITS)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def load_or_tokenize(self, dataset: TextDataset, tokenizer: Any, max_length: int
                         ) -> tuple[dict[str, EncodedSplit], bool]:
        """(split name -> tokens, whether they came from the cache)."""
        path = self.root / f"{self.key(dataset, tokenizer, max_length)}.npz"
        if path.is_file():
            try:
                return self._read(path, dataset), True
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # unreadable (a disk error, a truncated or foreign file): tokenize again and overwrite it
        splits = {name: tokenize(getattr(dataset, name), tokenizer, max_length) for name in SPLITS}
        try:
            self._write(path, splits)
        except OSError:
            pass  # a read-only or full disk only costs the next run its tokenization time
        return splits, False

    @staticmethod
    def _write(path: Path, splits: dict[str, EncodedSplit]) -> None:
        import tempfile

        import numpy as np

        arrays = {}
        for name, split in splits.items():
            arrays[f"{name}_lengths"] = np.asarray(split.lengths, dtype=np.int32)
            arrays[f"{name}_tokens"] = np.fromiter((t for ids in split.input_ids for t in ids), dtype=np.int32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.replace(tmp.name, path)

    @staticmethod
    def _read(path: Path, dataset: TextDataset) -> dict[str, EncodedSplit]:
        import numpy as np

        splits = {}
        with np.load(path) as arrays:
            for name in SPLITS:
                lengths, tokens = arrays[f"{name}_lengths"], arrays[f"{name}_tokens"].tolist()
                ends = np.cumsum(lengths).tolist()
                starts = [0, *ends[:-1]]
                labels = list(getattr(dataset, name).labels)
                if len(labels) != len(lengths) or (ends and ends[-1] != len(tokens)):
                    raise ValueError(f"{path} does not match the dataset")
                splits[name] = EncodedSplit([tokens[a:b] for a, b in zip(starts, ends)], labels)
        return splits


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
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


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
