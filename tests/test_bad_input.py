"""Bad input: one line on stderr naming the problem and the fix, exit code 2, and nothing
written (no database file, so certainly no run left RUNNING)."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from accumbench.cli.app import app


def _rows(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _refused(tmp_path, *args) -> str:
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["train", *map(str, args), "--db", str(db), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    assert not db.exists(), "bad input must not create or write the store"
    return lines[0]


def test_unknown_model_offline_is_refused_with_the_fix(tmp_path):
    line = _refused(tmp_path, "--model", "no-such-org/no-such-model")
    assert "model 'no-such-org/no-such-model' could not be loaded" in line
    assert "use an alias (bert, modernbert, minilm)" in line


@pytest.mark.parametrize("args, fragment", [
    (["train", "--lr", "abc"], "error: Invalid value for '--lr': Input should be a valid number"),
    (["train", "--no-such-flag"], "error: No such option: --no-such-flag; see 'accumbench train --help'"),
    (["sweep", "--max-retries", "x"], "error: Invalid value for '--max-retries'"),
    (["report", "--watch", "soon"], "error: Invalid value for '--watch'"),
    (["trian"], "error: No such command 'trian'. Did you mean 'train'?; see 'accumbench --help'"),
])
def test_parse_errors_are_one_error_line_and_exit_2(tmp_path, args, fragment):
    """Click's own errors, before any accumbench code runs: one line like every other error, not a box."""
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [*args, "--db", str(db)] if args[0] != "trian" else args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(fragment) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not db.exists()


def test_help_is_still_help():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout and "--effective-batch-size" in result.stdout


@pytest.mark.parametrize("command, text, flags, fragment", [
    ("train", "epochs: five\n", ["--epochs", "1"],
     "--epochs must be int, got 'five'; fix the file (even though --epochs on the command line overrides it)"),
    ("train", "dropout: 1.5\n", ["--dropout", "0.1"], "--dropout must be in [0, 1), got 1.5; pass e.g. --dropout 0.1"),
    ("train", "backend: jax\n", [], "unknown --backend 'jax'; choose one of: torch, accelerate"),
    ("train", "warmup_ratio: -0.5\n", ["--warmup-ratio", "0"], "--warmup-ratio must be in [0, 1), got -0.5"),
    ("sweep", "epochs: five\n", ["--epochs", "1"], "--epochs must be int, got 'five'"),
    ("sweep", "seeds: [1, x]\n", ["--seeds", "1"],
     "--seeds takes comma-separated values like 42,43,44; 'x' is not one (even though --seeds on the command line"),
    ("sweep", "effective_batch_sizes: [16, 0]\n", ["--effective-batch-sizes", "16"],
     "--effective-batch-size must be a positive integer, got 0"),
    ("sweep", "max_retries: -1\n", ["--max-retries", "2"], "--max-retries must be >= 0, got -1"),
])
def test_a_config_file_is_validated_whole_even_where_a_flag_overrides_it(tmp_path, command, text, flags, fragment):
    config, db = tmp_path / "config.yaml", tmp_path / "runs.db"
    config.write_text(text)
    result = CliRunner().invoke(app, [command, "--config", str(config), *flags, "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: in {config}: ") and fragment in lines[0], lines
    assert not db.exists()


def test_missing_model_directory(tmp_path):
    line = _refused(tmp_path, "--model", "./no-such-dir")
    assert "model directory ./no-such-dir does not exist; check the --model path" in line


def test_missing_dataset_file(tmp_path, tiny_bert):
    line = _refused(tmp_path, "--model", tiny_bert, "--dataset", tmp_path / "nope.csv")
    assert "nope.csv does not exist" in line


def test_file_without_a_label_column(tmp_path, tiny_bert):
    path = _rows(tmp_path / "d.csv", [{"text": f"t {i}", "stars": i % 2} for i in range(30)])
    line = _refused(tmp_path, "--model", tiny_bert, "--dataset", path)
    assert "has no label column (columns: text, stars); name one with --label-column" in line


def test_dataset_with_one_class(tmp_path, tiny_bert):
    path = _rows(tmp_path / "d.csv", [{"text": f"t {i}", "label": 1} for i in range(30)])
    assert "single class" in _refused(tmp_path, "--model", tiny_bert, "--dataset", path)


def test_ebs_not_a_multiple_of_the_micro_batch(tmp_path):
    line = _refused(tmp_path, "--effective-batch-size", "100", "--micro-batch-size", "16")
    assert line == ("error: effective batch size 100 is not a multiple of micro-batch size 16; "
                    "use --effective-batch-size 96 or 112, or change --micro-batch-size")


@pytest.mark.parametrize("flag, value", [
    ("--effective-batch-size", "0"), ("--micro-batch-size", "-4"), ("--epochs", "0"), ("--lr", "0"),
    ("--lr", "-0.001"), ("--max-length", "0"), ("--max-train-samples", "0"), ("--eval-every", "0"),
    ("--noise-scale-every", "0"),
])
def test_non_positive_sizes_epochs_or_lr(tmp_path, flag, value):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["train", flag, value, "--db", str(db)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {flag} must be a positive")
    assert len(result.stderr.strip().splitlines()) == 1 and not db.exists()


def test_bad_yaml_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-4\n")
    line = _refused(tmp_path, "--config", config)
    assert "unknown key 'learning_rate'" in line


def test_unavailable_backend(tmp_path):
    assert "choose one of: torch" in _refused(tmp_path, "--backend", "jax")


def test_a_newer_database_is_refused_untouched(tmp_path):
    db = tmp_path / "runs.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    con.execute("INSERT INTO schema_version VALUES (99)")
    con.commit()
    con.close()
    before = db.read_bytes()
    result = CliRunner().invoke(app, ["train", "--db", str(db)])
    assert result.exit_code == 2
    assert "schema version 99" in result.stderr and "upgrade accumbench" in result.stderr
    assert db.read_bytes() == before


def test_drop_last_that_would_leave_no_step(tmp_path):
    line = _refused(tmp_path, "--drop-last", "--max-train-samples", "10", "--effective-batch-size", "16",
                    "--micro-batch-size", "8")
    assert "--drop-last with 10 training samples and effective batch size 16 leaves no optimizer step" in line


def test_noise_scale_decay_out_of_range(tmp_path):
    line = _refused(tmp_path, "--noise-scale-decay", "1")
    assert line == "error: --noise-scale-decay must be in [0, 1), got 1; pass e.g. 0.99"  # as people write it


@pytest.mark.parametrize("args", [
    ["train", "--dataset", "reviews.csv"],  # no such file
    ["train", "--model", "bert-bsae-uncased"],  # a typo of a hub id, offline
    ["train", "--model", "./no-such-dir", "--checkpoint-dir", "ckpt"],
    ["train", "--lr", "-1"],
    ["train", "--learning-rate", "3e-5"],
    ["train", "--config", "missing.yaml"],
    ["sweep", "--effective-batch-sizes", "16,0"],
    ["sweep", "--preset", "no-such-preset"],
    ["sweep", "--dataset", "reviews.csv"],
    ["sweep", "--workers", "0"],
    ["report"],  # no runs.db yet
    ["report", "--format", "pdf"],
    ["report", "--format", "html", "-o", "out/study.html"],  # no such directory
    ["pick-best", "--alpha", "2"],
    ["pick-best"],
    ["check-ga", "--backend", "jax"],
])
def test_bad_input_leaves_an_empty_working_directory_empty(tmp_path, monkeypatch, args):
    """The default store (./runs.db) and checkpoints (./checkpoints) live in the working directory: a refused
    command creates neither, nor anything else, there."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, ours", [
    ("learning_rate", "'lr'"), ("num_train_epochs", "'epochs'"), ("per_device_train_batch_size", "'micro_batch_size'"),
    ("gradient_accumulation_steps", "'effective_batch_size'"), ("max_grad_norm", "'grad_clip'"),
])
def test_hugging_face_trainer_names_in_a_file_get_accumbench_names(tmp_path, key, ours):
    config = tmp_path / "run.yaml"
    config.write_text(f"{key}: 2\n")
    line = _refused(tmp_path, "--config", config)
    assert line == f"error: unknown key '{key}' in {config}; did you mean {ours}? (the Hugging Face Trainer's {key}" + (
        ": the batch of one forward pass)" if key == "per_device_train_batch_size" else
        ": accumbench derives the steps: effective batch size = micro-batch size x steps)"
        if key == "gradient_accumulation_steps" else ")")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_hugging_face_trainer_names_as_flags_get_accumbench_flags(tmp_path, command):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [command, "--num-train-epochs", "3", "--db", str(db)])
    assert result.exit_code == 2 and not db.exists()
    assert result.stderr.strip() == ("error: No such option: --num-train-epochs; did you mean --epochs? (the Hugging "
                                     f"Face Trainer's num_train_epochs); see 'accumbench {command} --help'")
    other = CliRunner().invoke(app, [command, "--num-epochs", "3"])  # not a Trainer name: click's own words
    assert other.exit_code == 2 and "Trainer" not in other.stderr


@pytest.mark.parametrize("args, fragment", [
    (["train", "--lr", "-1"], "--lr must be a positive number, got -1;"),
    (["train", "--dropout", "1"], "--dropout must be in [0, 1), got 1;"),
    (["sweep", "--lrs", "1e-4,-1", "--dry-run"], "--lrs must be positive learning rates, got -1;"),
    (["sweep", "--lrs", "3e-5,-3e-5", "--dry-run"], "--lrs must be positive learning rates, got -3e-5;"),
    (["pick-best", "--alpha", "2"], "--alpha must be between 0 and 0.5 (0.05 gives 95% bounds), got 2;"),
    (["pick-best", "--margin", "0.015", "--alpha", "0.6"], "got 0.6;"),
])
def test_numbers_in_messages_read_as_people_write_them(tmp_path, args, fragment):
    result = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr
