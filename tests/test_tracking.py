"""--log-with trackers: TensorBoard end to end (events read back from disk), and the cheap
validation that runs before any training. wandb and mlflow are not installed in the test venv."""

from __future__ import annotations

import importlib.util
import math

import pytest

from accumbench import tracking
from accumbench.config import require_tracker
from accumbench.errors import UserError
from accumbench.tracking import RunTracker

STEPS = [
    dict(step=1, epoch=1, samples_seen=16, loss=0.75, grad_norm=1.5, lr=1e-4),
    dict(step=2, epoch=1, samples_seen=32, loss=0.5, grad_norm=None, lr=2e-4),  # grad_norm not measured
    dict(step=3, epoch=1, samples_seen=40, loss=float("nan"), grad_norm=float("inf"), lr=3e-4),  # diverged
]
EPOCH = dict(epoch=1, train_loss=0.6, train_accuracy=0.55, val_loss=0.4, val_accuracy=0.8125, test_loss=0.45,
             test_accuracy=0.75, optimizer_steps=3, samples_seen=40, epoch_seconds=2.5, train_seconds=2.0,
             eval_seconds=0.5, samples_per_second=20.0, peak_memory_mb=None, skipped_steps=None)
CONFIG = {"model": "minilm", "lr": 1e-4, "train_steps": None, "checkpoint": True,
          "nested": {"a": 1, "b": {"c": None}}, "columns": ["text", "label"]}


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _same(got, want) -> bool:
    return all(s == ws and (math.isnan(v) and math.isnan(w) or v == pytest.approx(w, abs=1e-6))
               for (s, v), (ws, w) in zip(got, want, strict=True))


def test_tensorboard_end_to_end(tmp_path, monkeypatch):
    # As for the torch backend: no Accelerator, so no accelerate state until the tracker makes it.
    from accelerate.state import PartialState

    PartialState._reset_state()
    with RunTracker("tensorboard", "run-7", tmp_path, CONFIG) as tracker:
        tracker.log_steps(STEPS)
        tracker.log_epoch(EPOCH)
    tracker.finish()  # idempotent: __exit__ already finished it
    tracker.log_steps(STEPS)  # after finish: ignored, not an error on a closed writer

    run_dir = tmp_path / "run-7"
    # Accelerate's layout: scalars in logging_dir/run_name, plus the hparams event file (add_hparams)
    # and its hparams.yml copy in timestamped subdirectories of it.
    assert [p.parent for p in tmp_path.rglob("events.out.tfevents.*")].count(run_dir) == 1
    assert all(p.is_relative_to(run_dir) for p in tmp_path.rglob("*") if p.is_file())
    (hparams_yml,) = run_dir.glob("*/hparams.yml")

    scalars = _scalars(run_dir)
    assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "train/samples_seen",
                            *(f"epoch/{k}" for k, v in EPOCH.items() if v is not None)}
    assert _same(scalars["train/loss"], [(1, 0.75), (2, 0.5), (3, math.nan)])
    assert _same(scalars["train/lr"], [(1, 1e-4), (2, 2e-4), (3, 3e-4)])
    assert _same(scalars["train/grad_norm"], [(1, 1.5), (3, math.inf)])
    assert _same(scalars["train/samples_seen"], [(1, 16), (2, 32), (3, 40)])
    for key, value in EPOCH.items():
        if value is not None:  # logged at the run's optimizer step count, to line up with the step curves
            assert _same(scalars[f"epoch/{key}"], [(3, value)]), key

    import yaml

    stored = yaml.safe_load(hparams_yml.read_text())
    assert stored == {"model": "minilm", "lr": 1e-4, "train_steps": "None", "checkpoint": True,
                      "nested.a": 1, "nested.b.c": "None", "columns": '["text", "label"]'}


def test_other_ranks_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with RunTracker("tensorboard", "run-8", tmp_path, CONFIG) as tracker:
        tracker.log_steps(STEPS)
        tracker.log_epoch(EPOCH)
    assert not any(tmp_path.iterdir())


def test_require_tracker():
    assert require_tracker(None) is None  # no tracker asked for
    assert require_tracker("tensorboard") == "tensorboard"  # installed in the test venv (the test extra)
    with pytest.raises(UserError) as err:
        require_tracker("neptune")
    assert str(err.value) == "unknown --log-with 'neptune'; choose one of: wandb, tensorboard, mlflow"


@pytest.mark.parametrize("name, packages", [("wandb", {"wandb"}), ("mlflow", {"mlflow"}),
                                            ("tensorboard", {"tensorboard", "tensorboardX"})])
def test_require_tracker_missing_package(monkeypatch, name, packages):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod in packages else real(mod, *a))
    with pytest.raises(UserError) as err:
        require_tracker(name)
    assert str(err.value) == f"--log-with {name} needs the {name} package; pip install 'accumbench[{name}]'"


def test_tensorboardx_alone_is_enough(monkeypatch):
    # Accelerate's TensorBoardTracker falls back to tensorboardX when torch.utils.tensorboard cannot import.
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: object() if mod == "tensorboardX" else None)
    assert require_tracker("tensorboard") == "tensorboardX"
    with pytest.raises(UserError):  # tensorboardX does not stand in for the other trackers' packages
        require_tracker("wandb")


def test_flat_config():
    class Odd:
        def __str__(self):
            return "odd"

    assert tracking._flat_config({"a": None, "b": {"c": {"d": 2}}, "e": (1, None), "f": Odd(), "g": 1.5}) == {
        "a": "None", "b.c.d": 2, "e": "[1, null]", "f": "odd", "g": 1.5}


@pytest.mark.parametrize("backend", ["torch", "accelerate"])
def test_train_mirrors_the_store_to_tensorboard_in_both_backends(tiny_bert, tmp_path, backend):
    """`train --log-with tensorboard`: the tracker's scalars are the run store's numbers."""
    from conftest import query
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [
        "train", "--model", tiny_bert, "--dataset", "demo", "--max-train-samples", "64", "--max-eval-samples", "32",
        "--max-length", "32", "--epochs", "2", "--effective-batch-size", "16", "--micro-batch-size", "8",
        "--backend", backend, "--no-checkpoint", "--log-with", "tensorboard", "--db", str(db)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    scalars = _scalars(tmp_path / "tracking" / "run-1")
    steps = query(db, "SELECT step, loss, lr FROM steps ORDER BY step")
    assert _same(scalars["train/loss"], [(s["step"], s["loss"]) for s in steps])
    epochs = query(db, "SELECT optimizer_steps, val_accuracy FROM epochs ORDER BY epoch")
    assert _same(scalars["epoch/val_accuracy"], [(e["optimizer_steps"], e["val_accuracy"]) for e in epochs])


def test_unknown_tracker_is_refused_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    result = CliRunner().invoke(app, ["train", "--log-with", "neptune", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "unknown --log-with 'neptune'" in result.stderr
    assert not (tmp_path / "r.db").exists()
