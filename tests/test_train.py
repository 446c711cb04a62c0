"""`accumbench train` end to end on tiny models: what it records, micro-batch invariance,
determinism, checkpoints, and the run lifecycle when a run fails or is stopped."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import query, wait_for
from paused_accumbench import paused_command
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.config import RunConfig

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
           "optimizer_steps", "samples_seen")


def train_cli(model: str, db: Path, *extra) -> object:
    """Tiny, fast defaults: 200 training samples (so EBS 32 leaves a ragged group of 8), dropout 0."""
    args = ["train", "--model", model, "--dataset", "demo", "--max-train-samples", "200",
            "--max-eval-samples", "64", "--max-length", "32", "--epochs", "2", "--dropout", "0",
            "--effective-batch-size", "32", "--micro-batch-size", "8", "--lr", "1e-3", "--no-checkpoint",
            "--db", str(db), *map(str, extra)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_train_records_a_finished_run_with_every_epoch(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    result = train_cli(tiny_bert, db)
    assert "run id 1 recorded in" in result.output and "best validation epoch" in result.output

    (run,) = query(db, "SELECT * FROM runs")
    assert run["status"] == "FINISHED" and run["error"] is None
    assert (run["effective_batch_size"], run["micro_batch_size"], run["accumulation_steps"]) == (32, 8, 4)
    assert (run["epochs"], run["max_length"], run["lr"], run["backend"]) == (2, 32, 1e-3, "torch")
    assert run["num_train_samples"] == 200 and run["num_val_samples"] == 64 and run["num_labels"] == 2
    for column in ("created_at", "started_at", "finished_at", "torch_version", "transformers_version",
                   "accelerate_version", "device", "config_hash"):
        assert run[column], column
    config = json.loads(run["config_json"])
    assert RunConfig.from_dict(config).config_hash == run["config_hash"]

    rows = query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", run["id"])
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["optimizer_steps"] for r in rows] == [7, 14]  # ceil(200 / 32) per epoch
    assert [r["samples_seen"] for r in rows] == [200, 400]
    for r in rows:
        assert 0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0 and math.isfinite(r["train_loss"])
        assert r["train_seconds"] > 0 and r["eval_seconds"] > 0
        assert r["epoch_seconds"] >= r["train_seconds"] + r["eval_seconds"]
        assert r["samples_per_second"] == pytest.approx(200 / r["train_seconds"])
        assert r["peak_memory_mb"] > 0
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert run["best_epoch"] == best["epoch"]


def test_micro_batch_size_does_not_change_the_result(tiny_bert, tmp_path):
    """Same EBS 32 as 1 x 32 and as 4 x 8, with a ragged last group of 8 samples each epoch."""
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--micro-batch-size", "32")
    train_cli(tiny_bert, db, "--micro-batch-size", "8")
    whole, accumulated = (query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", i) for i in (1, 2))
    assert query(db, "SELECT accumulation_steps FROM runs ORDER BY id")[1][0] == 4
    for a, b in zip(whole, accumulated):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["optimizer_steps"] == a["optimizer_steps"]
    assert accumulated[-1]["optimizer_steps"] == 2 * math.ceil(200 / 32)
    # The runs learned something, so the agreement is not two untouched models agreeing.
    assert whole[-1]["val_loss"] != pytest.approx(whole[0]["val_loss"], rel=1e-3)


def test_same_config_and_seed_give_identical_epochs(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--dropout", "0.1")
    train_cli(tiny_bert, db, "--dropout", "0.1")
    train_cli(tiny_bert, db, "--dropout", "0.1", "--seed", "7")
    first, second, other_seed = ([tuple(r[m] for m in METRICS) for r in
                                  query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", i)] for i in (1, 2, 3))
    assert first == second
    assert first != other_seed


def test_drop_last_skips_the_short_group(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--drop-last")
    rows = query(db, "SELECT optimizer_steps, samples_seen FROM epochs ORDER BY epoch")
    assert [tuple(r) for r in rows] == [(6, 192), (12, 384)]


def test_tiny_modernbert_with_mean_pooling(tiny_modernbert, tmp_path):
    db = tmp_path / "runs.db"
    train_cli(tiny_modernbert, db, "--pooling", "mean", "--optimizer", "adamw", "--scheduler", "cosine",
              "--warmup-ratio", "0.2", "--grad-clip", "1.0", "--weight-decay", "0.01")
    (run,) = query(db, "SELECT status, config_json FROM runs")
    assert run["status"] == "FINISHED"
    assert json.loads(run["config_json"])["pooling"] == "mean"
    assert len(query(db, "SELECT * FROM epochs")) == 2


def test_best_validation_checkpoint_is_saved_as_safetensors(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--checkpoint")
    (run,) = query(db, "SELECT id, best_epoch, checkpoint_path FROM runs")
    directory = tmp_path / "checkpoints" / str(run["id"])
    assert Path(run["checkpoint_path"]) == directory
    tensors = load_file(directory / "model.safetensors")
    assert tensors["head.weight"].shape == (2, 32)
    meta = json.loads((directory / "accumbench.json").read_text())
    assert meta["epoch"] == run["best_epoch"] and meta["label_names"] == ["0", "1"]


def test_no_checkpoint_writes_none(tiny_bert, tmp_path):
    train_cli(tiny_bert, tmp_path / "runs.db")
    assert not (tmp_path / "checkpoints").exists()
    assert query(tmp_path / "runs.db", "SELECT checkpoint_path FROM runs")[0][0] is None


def test_yaml_config_with_flags_on_top(tiny_bert, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\nmicro_batch_size: 16\nlr: 2e-4\nseed: 3\n")
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--config", config, "--lr", "5e-4")  # train_cli's own --epochs 2 also wins
    (run,) = query(db, "SELECT lr, micro_batch_size, seed, epochs FROM runs")
    assert tuple(run) == (5e-4, 8, 3, 2)


def test_db_from_the_environment(tiny_bert, tmp_path, monkeypatch):
    db = tmp_path / "from-env.db"
    monkeypatch.setenv("ACCUMBENCH_DB", str(db))
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert, "--max-train-samples", "16",
                                      "--max-eval-samples", "8", "--epochs", "1", "--no-checkpoint"])
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT status FROM runs")[0][0] == "FINISHED"


# --- lifecycle: a run never stays RUNNING -------------------------------------------------------


class _StopAtStep:
    def __init__(self, exc: BaseException, at: int = 3):
        self.exc, self.at, self.steps = exc, at, 0

    def step(self, samples_done, loss):
        self.steps += 1
        if self.steps == self.at:
            raise self.exc


def _library_run(tiny_bert, db, reporter):
    from accumbench.runtime.engine import SilentHooks, train

    class Stopping(SilentHooks):
        step = reporter.step

    config = RunConfig(model=tiny_bert, max_train_samples=64, max_eval_samples=16, epochs=1,
                       effective_batch_size=8, micro_batch_size=4, checkpoint=False)
    return train(config, db=str(db), reporter=Stopping())


@pytest.mark.parametrize("exc, status, error", [
    (KeyboardInterrupt(), "KILLED", "interrupted (Ctrl-C)"),
    (RuntimeError("boom"), "FAILED", "RuntimeError: boom"),
])
def test_an_interrupted_or_failing_run_is_closed(tiny_bert, tmp_path, exc, status, error):
    db = tmp_path / "runs.db"
    with pytest.raises(type(exc)):
        _library_run(tiny_bert, db, _StopAtStep(exc))
    (run,) = query(db, "SELECT status, error, finished_at FROM runs")
    assert (run["status"], run["error"]) == (status, error)
    assert run["finished_at"] is not None


def test_sigterm_marks_the_run_killed(tiny_bert, tmp_path):
    db, pause = tmp_path / "runs.db", tmp_path / "pause"
    proc = subprocess.Popen(
        [*paused_command(pause), "train", "--model", tiny_bert, "--epochs", "3",
         "--max-train-samples", "64", "--max-eval-samples", "16", "--no-checkpoint", "--db", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        # The run waits after its first recorded epoch until the pause file goes: no race with the clock.
        assert wait_for(lambda: pause.exists() and pause.read_text(), what="the paused run").endswith(" 1")
        assert query(db, "SELECT COUNT(*) FROM epochs")[0][0] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    (run,) = query(db, "SELECT status, error FROM runs")
    assert tuple(run) == ("KILLED", "terminated (SIGTERM)")
    assert b"recorded as KILLED" in proc.stderr.read()


# --- one optimizer step, one scheduler step and one clip per group --------------------------------


def test_schedule_and_clipping_count_optimizer_steps(tiny_bert, monkeypatch):
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup
    from accumbench.backends.torch_loop import TorchBackend
    from accumbench.data import pipeline
    from accumbench.data.demo import generate_demo_reviews
    from accumbench.model import TextClassifier, load_tokenizer_and_encoder

    tokenizer, encoder = load_tokenizer_and_encoder(tiny_bert)
    reviews = generate_demo_reviews(n=50, seed=1)
    split = pipeline.tokenize(pipeline.TextSplit(reviews["text"], reviews["label"]), tokenizer, 24)
    model = TextClassifier(encoder, 2, 0.0, "cls")
    steps = accumulation.groups_per_epoch(50, 16) * 2  # 4 groups (16, 16, 16, 2) x 2 epochs
    lr = 1e-3
    backend = TorchBackend(model, BackendSetup(optimizer="adam", lr=lr, weight_decay=0.0, scheduler="linear",
                                               warmup_ratio=0.25, total_steps=steps))

    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, norm: clips.append(norm) or real_clip(params, norm))
    rows = []
    for epoch in (1, 2):
        groups = accumulation.plan_epoch(50, 16, 4, seed=0, epoch=epoch)
        stats = backend.train_epoch(groups, lambda idx: pipeline.collate(split, idx, tokenizer.pad_token_id), epoch,
                                    grad_clip=0.5, steps_before=len(rows), samples_before=50 * (epoch - 1))
        rows += stats.steps
    assert clips == [0.5] * 8  # once per optimizer step, never per micro-batch
    lrs = [r["lr"] for r in rows]
    # The rate each step used: warmup over ceil(0.25 * 8) = 2 steps from 0, then linear decay over 6.
    assert lrs == pytest.approx([0.0, lr / 2, lr, lr * 5 / 6, lr * 4 / 6, lr * 3 / 6, lr * 2 / 6, lr / 6])
    assert backend.optimizer.param_groups[0]["lr"] == 0.0  # ...ends exactly after the last optimizer step
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["samples_seen"] for r in rows] == [16, 32, 48, 50, 66, 82, 98, 100]
    assert all(r["grad_norm"] > 0 for r in rows)
