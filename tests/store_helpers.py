"""What the store's tests share: a run's columns, an epoch's and a step's metrics, a genuine version-1
database (its DDL frozen as that accumbench wrote it), a newer one, the tables as plain sqlite3 reads
them, and threads started together."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone

from accumbench.store import SCHEMA_VERSION

RUN_KWARGS = dict(
    config_json='{"lr": 2e-05}', config_hash="abc123", backend="hf", model="bert-tiny",
    dataset="sst2", seed=7, lr=2e-5, effective_batch_size=64, micro_batch_size=16,
    accumulation_steps=4, epochs=3, max_length=128, optimizer="adamw", scheduler="linear",
)


OPTIONAL_RUN_KWARGS = dict(
    torch_version="2.3.0", transformers_version="4.41.0", accelerate_version="0.30.0",
    device="cuda:0", num_train_samples=1000, num_val_samples=100, num_test_samples=200,
    num_labels=2,
)


# The exact DDL that accumbench with SCHEMA_VERSION = 1 wrote (dumped from sqlite_master
# of a database it created). Frozen here on purpose: never derive it from the current models.
V1_DDL = [
    """CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
)""",
    """CREATE TABLE runs (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	status VARCHAR NOT NULL, 
	backend VARCHAR NOT NULL, 
	model VARCHAR NOT NULL, 
	dataset VARCHAR NOT NULL, 
	seed INTEGER NOT NULL, 
	lr FLOAT NOT NULL, 
	effective_batch_size INTEGER NOT NULL, 
	micro_batch_size INTEGER NOT NULL, 
	accumulation_steps INTEGER NOT NULL, 
	epochs INTEGER NOT NULL, 
	max_length INTEGER NOT NULL, 
	optimizer VARCHAR NOT NULL, 
	scheduler VARCHAR NOT NULL, 
	config_hash VARCHAR NOT NULL, 
	config_json TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	heartbeat_at DATETIME, 
	error TEXT, 
	torch_version VARCHAR, 
	transformers_version VARCHAR, 
	accelerate_version VARCHAR, 
	device VARCHAR, 
	num_train_samples INTEGER, 
	num_val_samples INTEGER, 
	num_test_samples INTEGER, 
	num_labels INTEGER, 
	best_epoch INTEGER, 
	checkpoint_path VARCHAR
)""",
    "CREATE INDEX ix_runs_config_hash ON runs (config_hash)",
    """CREATE TABLE epochs (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	epoch INTEGER NOT NULL, 
	train_loss FLOAT, 
	train_accuracy FLOAT, 
	val_loss FLOAT, 
	val_accuracy FLOAT, 
	test_loss FLOAT, 
	test_accuracy FLOAT, 
	optimizer_steps INTEGER NOT NULL, 
	samples_seen INTEGER NOT NULL, 
	epoch_seconds FLOAT NOT NULL, 
	train_seconds FLOAT NOT NULL, 
	eval_seconds FLOAT NOT NULL, 
	samples_per_second FLOAT NOT NULL, 
	peak_memory_mb FLOAT, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, epoch), 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_epochs_run_id ON epochs (run_id)",
]


def make_v1_db(path):
    """A genuine version-1 database, as the previous accumbench left it: one run, one epoch."""
    conn = sqlite3.connect(path)
    for ddl in V1_DDL:
        conn.execute(ddl)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute(
        "INSERT INTO runs (status, backend, model, dataset, seed, lr, effective_batch_size, "
        "micro_batch_size, accumulation_steps, epochs, max_length, optimizer, scheduler, "
        "config_hash, config_json, created_at, started_at, finished_at, heartbeat_at, "
        "device, best_epoch) VALUES ('FINISHED', 'hf', 'bert-tiny', 'sst2', 7, 2e-05, 64, 16, "
        "4, 1, 128, 'adamw', 'linear', 'abc123', '{}', '2024-05-01 10:00:00.000000', "
        "'2024-05-01 10:00:00.000000', '2024-05-01 10:05:00.000000', "
        "'2024-05-01 10:05:00.000000', 'cuda:0', 1)")
    conn.execute(
        "INSERT INTO epochs (run_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, "
        "test_loss, test_accuracy, optimizer_steps, samples_seen, epoch_seconds, train_seconds, "
        "eval_seconds, samples_per_second, peak_memory_mb) VALUES "
        "(1, 1, 'NaN', 0.5, 0.6, 0.75, NULL, 0.7, 16, 1000, 12.5, 10.0, 2.5, 100.0, 512.0)")
    conn.commit()
    conn.close()


def make_newer_db(path):
    """A database written by a future accumbench (plain rollback journal, like a copy would be)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()


def table_infos(path):
    """{table: PRAGMA table_info rows} for every table, plus the index names, via plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'")]
        infos = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        return infos, indexes
    finally:
        conn.close()


def step_row(step, **overrides):
    row = dict(step=step, epoch=(step - 1) // 100 + 1, samples_seen=64 * step, loss=1.0 / step,
               grad_norm=0.5 + step, lr=2e-5 * (1 - step / 1000))
    row.update(overrides)
    return row


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def epoch_metrics(epoch, **overrides):
    metrics = dict(
        epoch=epoch, train_loss=0.5 / epoch, train_accuracy=0.8, val_loss=0.6, val_accuracy=0.75,
        test_loss=0.65, test_accuracy=0.7, optimizer_steps=16 * epoch, samples_seen=1000 * epoch,
        epoch_seconds=12.5, train_seconds=10.0, eval_seconds=2.5, samples_per_second=100.0,
        peak_memory_mb=512.0,
    )
    metrics.update(overrides)
    return metrics


def run_at_once(worker, n: int) -> list[BaseException]:
    """Start n threads on `worker` together (a barrier) and return what they raised:
    pytest can't see exceptions raised in threads."""
    barrier, errors = threading.Barrier(n), []

    def guarded():
        barrier.wait()
        try:
            worker()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
