"""Tokenized splits cached on disk, shared by every run (and every worker) that tokenizes the same examples
with the same tokenizer and max length: a second run of the same data skips tokenization."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from accumbench.data import pipeline
from accumbench.data.sources import SPLITS
from accumbench.files import write_aside


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

    def key(self, dataset: pipeline.TextDataset, tokenizer: Any, max_length: int, segment_ids: bool = False) -> str:
        import hashlib

        parts = [str(self.VERSION), tokenizer_fingerprint(tokenizer), str(max_length),
                 *(getattr(dataset, name).fingerprint for name in SPLITS)]
        if dataset.is_pair:  # the pair's texts are in the fingerprints; its columns and segment ids name it too
            parts += [*dataset.columns, f"segment_ids={segment_ids}"]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def load_or_tokenize(self, dataset: pipeline.TextDataset, tokenizer: Any, max_length: int, segment_ids: bool = False
                         ) -> tuple[dict[str, pipeline.EncodedSplit], bool]:
        """(split name -> tokens, whether they came from the cache)."""
        path = self.root / f"{self.key(dataset, tokenizer, max_length, segment_ids)}.npz"
        if path.is_file():
            try:
                return self._read(path, dataset), True
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # unreadable (a disk error, a truncated or foreign file): tokenize again and overwrite it
        splits = {name: pipeline.tokenize(getattr(dataset, name), tokenizer, max_length, segment_ids) for name in SPLITS}
        try:
            self._write(path, splits)
        except OSError:
            pass  # a read-only or full disk only costs the next run its tokenization time
        return splits, False

    @staticmethod
    def _write(path: Path, splits: dict[str, pipeline.EncodedSplit]) -> None:
        import numpy as np

        arrays = {}
        for name, split in splits.items():
            arrays[f"{name}_lengths"] = np.asarray(split.lengths, dtype=np.int32)
            arrays[f"{name}_tokens"] = np.fromiter((t for ids in split.input_ids for t in ids), dtype=np.int32)
            if split.token_type_ids is not None:
                arrays[f"{name}_types"] = np.fromiter((t for ids in split.token_type_ids for t in ids), dtype=np.int8)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(partial: Path) -> None:
            with partial.open("wb") as handle:  # a handle: np.savez would add .npz to a bare path
                np.savez(handle, **arrays)

        write_aside(path, write)

    @staticmethod
    def _read(path: Path, dataset: pipeline.TextDataset) -> dict[str, pipeline.EncodedSplit]:
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
                types = arrays[f"{name}_types"].tolist() if f"{name}_types" in arrays else None
                splits[name] = pipeline.EncodedSplit([tokens[a:b] for a, b in zip(starts, ends)], labels,
                                            None if types is None else [types[a:b] for a, b in zip(starts, ends)])
        return splits
