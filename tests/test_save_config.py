"""pick-best --save-config: the picked cell as a train YAML that trains it again, config hash and validation
accuracy included; epochs cut to the best epoch only where that trains the same; bad input writes nothing."""

from __future__ import annotations

import pytest
import yaml
from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app

TINY = ["--dataset", "demo", "--micro-batch-size", "8", "--max-train-samples", "48", "--max-eval-samples", "32",
        "--max-length", "16", "--lr", "1e-3", "--no-noise-scale"]


def _ok(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_saved_config_trains_the_picked_run_again(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.db"
    _ok("sweep", "--model", tiny_bert, *TINY, "--effective-batch-sizes", "8,16", "--base-batch-size", "8",
        "--scaling-rule", "sde", "--epochs", "1", "--db", db)
    _ok("pick-best", "--save-config", tmp_path / "best.yaml", "--db", db)
    saved = yaml.safe_load((tmp_path / "best.yaml").read_text())
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith("# accumbench train --config FILE trains the cell pick-best picked again: run ")
    assert "# the optimizer uses: lr " in text and "(rules sde, from EBS 8)" in text
    picked = query(db, "SELECT * FROM runs WHERE effective_batch_size = ?", saved["effective_batch_size"])[0]
    assert (saved["model"], saved["seed"], saved["lr_scaling"], saved["beta2_scaling"]) == (tiny_bert, 42, "sqrt",
                                                                                          "half-life")
    assert "scaling_rule" not in saved  # spelled out as its rules

    _ok("train", "--config", tmp_path / "best.yaml", "--db", db)
    again = query(db, "SELECT * FROM runs ORDER BY id DESC LIMIT 1")[0]
    assert again["config_hash"] == picked["config_hash"] and again["sweep_id"] is None
    assert (again["lr"], again["beta1"], again["beta2"], again["eps"]) == (
        picked["lr"], picked["beta1"], picked["beta2"], picked["eps"])
    accuracy = "SELECT val_accuracy FROM epochs WHERE run_id = ? AND epoch = 1"
    assert query(db, accuracy, again["id"])[0][0] == query(db, accuracy, picked["id"])[0][0]  # deterministic


def test_epochs_become_the_best_epoch_only_at_a_constant_lr(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    _ok("train", "--model", tiny_bert, *TINY, "--effective-batch-size", "8", "--epochs", "3", "--scheduler", "linear",
        "--db", db, "--checkpoint-dir", tmp_path / "checkpoints")
    _ok("pick-best", "--save-config", tmp_path / "linear.yaml", "--db", db)
    text = (tmp_path / "linear.yaml").read_text()
    assert yaml.safe_load(text)["epochs"] == 3 and "epochs kept at 3: the lr schedule spans them" in text

    constant = tmp_path / "constant.db"
    _ok("train", "--model", tiny_bert, *TINY, "--effective-batch-size", "8", "--epochs", "3", "--db", constant,
        "--no-checkpoint")
    _ok("pick-best", "--save-config", tmp_path / "constant.yaml", "--db", constant)
    best_epoch = query(constant, "SELECT best_epoch FROM runs")[0][0]
    assert yaml.safe_load((tmp_path / "constant.yaml").read_text())["epochs"] == best_epoch


@pytest.mark.parametrize("extra, message", [
    (["--save-config", "missing/best.yaml"], "--save-config missing/best.yaml: directory missing does not exist"),
    (["--save-config", "best.yaml", "--compare-protocols"], "--save-config writes the one pick; drop --compare-protocols"),
    (["--save-config", "."], "--save-config . is a directory; give a file name"),
])
def test_save_config_bad_input_writes_nothing(tiny_bert, tmp_path, monkeypatch, extra, message):
    db = tmp_path / "runs.db"
    _ok("train", "--model", tiny_bert, *TINY, "--effective-batch-size", "8", "--epochs", "1", "--db", db,
        "--no-checkpoint")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["pick-best", *extra, "--db", str(db)])
    assert result.exit_code == 2 and result.output.count("error:") == 1 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_save_config_needs_one_pick(tiny_bert, tiny_modernbert, tmp_path):
    db = tmp_path / "runs.db"
    for model in (tiny_bert, tiny_modernbert):
        _ok("train", "--model", model, *TINY, "--effective-batch-size", "8", "--epochs", "1", "--db", db,
            "--no-checkpoint")
    result = CliRunner().invoke(app, ["pick-best", "--save-config", str(tmp_path / "best.yaml"), "--db", str(db)])
    assert result.exit_code == 2 and "but pick-best made 2 picks" in result.output and "--model" in result.output
    assert not (tmp_path / "best.yaml").exists()
