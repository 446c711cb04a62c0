"""The store's tables as people query them with sqlite3: every table and column is a public contract,
and every connection has the SQLite settings that sharing a file between workers needs."""

import sqlite3

from store_helpers import table_infos

from accumbench.store import SCHEMA_VERSION, sqlite_path

# Every table and column of the current schema: the public contract.
EXPECTED_COLUMNS = {
    "schema_version": {"version"},
    "runs": {
        "id", "status", "backend", "model", "dataset", "seed", "lr", "effective_batch_size",
        "micro_batch_size", "accumulation_steps", "epochs", "max_length", "optimizer",
        "scheduler", "config_hash", "config_json", "created_at", "started_at", "finished_at",
        "heartbeat_at", "error", "torch_version", "transformers_version",
        "accelerate_version", "device", "num_train_samples", "num_val_samples",
        "num_test_samples", "num_labels", "best_epoch", "checkpoint_path",
        "precision", "world_size",
        "sweep_id", "attempt", "base_lr", "lr_scaling", "base_batch_size", "budget", "train_steps",
        "tokenize_seconds", "tokens_cached",
        "text_columns", "split_source", "dropped_rows", "positive_label", "positive_class",
        "pruned_epoch", "pruned_by", "pruned_p", "pruned_test",
        # schema 9: the optimizer settings used after scaling, the rules, and their name
        "beta1", "beta2", "eps", "weight_decay", "beta1_scaling", "beta2_scaling", "eps_scaling", "weight_decay_scaling",
        "scaling_rule",
        # schema 10: racing by the margin
        "pruned_deficit", "pruned_bound", "cuda_graphs",
    },
    "epochs": {
        "id", "run_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
        "test_loss", "test_accuracy", "optimizer_steps", "samples_seen", "epoch_seconds",
        "train_seconds", "eval_seconds", "samples_per_second", "peak_memory_mb",
        "skipped_steps", "tokens_per_second", "padding_fraction",
        "noise_scale", "noise_trace", "noise_grad_sq", "noise_steps",
        "val_f1", "val_mcc", "test_f1", "test_mcc",
    },
    "steps": {"id", "run_id", "step", "epoch", "samples_seen", "loss", "grad_norm", "lr",
              "micro_grad_sq", "noise_grad_sq", "noise_trace", "noise_scale",
              "effective_batch_size"},  # schema 11: --ebs-schedule
    # schema 11: saved states and the branches trained from them (accumbench branch)
    "states": {"id", "run_id", "epoch", "step", "samples_seen", "effective_batch_size", "path"},
    "branches": {"id", "state_id", "run_id", "effective_batch_size", "seed", "lr", "samples", "steps", "train_loss",
                 "val_loss", "val_accuracy", "seconds", "tolerance", "created_at"},
    "evals": {"id", "run_id", "step", "epoch", "samples_seen", "val_loss", "val_accuracy"},
    "sweeps": {"id", "name", "grid_hash", "spec_json", "num_cells", "created_at"},
    "predictions": {"id", "run_id", "split", "epoch", "num_examples", "split_hash", "labels", "predicted"},
    "epoch_predictions": {"id", "run_id", "split", "epoch", "num_examples", "split_hash", "labels", "predicted"},
}


def test_column_names_are_the_public_contract(store, db_url):
    infos, _ = table_infos(sqlite_path(db_url))
    assert {table: {row[1] for row in info} for table, info in infos.items()} == EXPECTED_COLUMNS
    conn = sqlite3.connect(sqlite_path(db_url))
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(runs)")}
        assert any("config_hash" in name for name in indexed)
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(steps)")}
        assert any("run_id" in name for name in indexed)
    finally:
        conn.close()


def test_pragmas_set_on_every_connection(store):
    conns = [store.engine.raw_connection() for _ in range(2)]  # two pooled connections
    try:
        for conn in conns:
            cur = conn.cursor()
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
            cur.close()
    finally:
        for conn in conns:
            conn.close()
