"""--ebs-schedule: an EBS that grows during training. Every step is still the exact gradient of its group's
mean loss across a change of k, the lr follows the run's rule at each change, both backends agree, and the
store shows which EBS every step had."""

from __future__ import annotations

import re

import pytest
from conftest import query
from test_accumulation import _full_batch_gradient, _relative_error, _tiny_float64_setup
from typer.testing import CliRunner

from accumbench.accumulation import plan_epoch, scheduled_sizes, training_length
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.ebs_schedule import parse_schedule
from accumbench.errors import UserError

COMMON = ["--dataset", "demo", "--max-train-samples", "100", "--max-eval-samples", "32", "--max-length", "32",
          "--epochs", "3", "--dropout", "0", "--lr", "1e-3", "--no-checkpoint"]


def _train(db, *args):
    result = CliRunner().invoke(app, ["train", *COMMON, "--db", str(db), *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_a_schedule_cuts_each_epoch_into_groups_of_the_ebs_in_force():
    by_epoch = parse_schedule("16@0,64@1.5", None)
    # 100 samples: epoch 1 all 16 (6 x 16 + 4); epoch 2 16 until half the epoch (64 samples), then 64 (36 left).
    assert scheduled_sizes(100, by_epoch, 1, 0) == [16] * 7
    assert scheduled_sizes(100, by_epoch, 2, 7) == [16, 16, 16, 16, 64]
    assert scheduled_sizes(100, by_epoch, 3, 12) == [64, 64]
    assert training_length(100, 16, False, 3, schedule=by_epoch) == (3, 14)
    by_step = parse_schedule("16@0,32@step3", None)
    assert scheduled_sizes(100, by_step, 1, 0) == [16, 16, 16, 32, 32]  # 48 + 32 + 20: the change after 3 steps
    groups = plan_epoch(100, 16, 16, seed=1, epoch=2, schedule=by_epoch, steps_before=7)
    assert [(len(g), g.effective_batch_size) for g in groups] == [(16, 16)] * 4 + [(36, 64)]
    # The ragged group after the change: three micro-batches weighted by their share of its 36 samples.
    assert [mb.weight for mb in groups[-1].micro_batches] == pytest.approx([16 / 36, 16 / 36, 4 / 36])
    # The same epoch order as a fixed EBS: a schedule changes how it is cut, not which samples come when.
    fixed = plan_epoch(100, 16, 16, seed=1, epoch=2)
    assert [i for g in groups for i in g.indices] == [i for g in fixed for i in g.indices]
    with_drop = scheduled_sizes(100, by_epoch, 2, 7, drop_last=True)
    assert with_drop == [16, 16, 16, 16]


def test_schedules_are_normalized_and_a_single_stage_is_a_fixed_ebs():
    config = RunConfig(ebs_schedule="16@0, 64@1, 256@3", micro_batch_size=16, effective_batch_size=64)
    assert (config.ebs_schedule, config.effective_batch_size) == ("16@0,64@1,256@3", 16)
    assert config.schedule.label() == "grow 16→64@1→256@3"
    assert RunConfig(ebs_schedule="64@0", micro_batch_size=16).ebs_schedule is None
    assert RunConfig(ebs_schedule="64@0", micro_batch_size=16).config_hash == RunConfig(effective_batch_size=64).config_hash
    auto = RunConfig(ebs_schedule="auto", effective_batch_size=32, micro_batch_size=16)
    assert (auto.ebs_schedule, auto.schedule.label()) == ("auto:32", "auto 32→")
    assert RunConfig(ebs_schedule="auto:16-256", micro_batch_size=8).schedule.cap == 256
    # Runs recorded before schedules existed keep their hash.
    assert RunConfig().config_hash == "5b12823328d1de40"
    # Each stage's optimizer settings follow the run's rules: sqrt lr from base 16.
    rules = RunConfig(ebs_schedule="16@0,64@1", micro_batch_size=16, lr=1e-4, lr_scaling="sqrt", base_batch_size=16)
    assert rules.settings_at(64).lr == pytest.approx(2e-4)
    assert rules.scaled_lr == pytest.approx(1e-4)


@pytest.mark.parametrize("text, words", [
    ("16@0,40@1", "EBS 40 is not a multiple of micro-batch size 16; use 32 or 48"),
    ("16@0,64@2,256@2", "the change points must increase (0, 2, 2)"),
    ("16@0,64@3,256@1", "the change points must increase (0, 3, 1)"),
    ("16@1,64@2", "must start at 0"),
    ("16@0,64@step4,256@2", "mixes epochs and steps"),
    ("16-0", "'16-0' is not EBS@EPOCH or EBS@stepN"),
    ("auto:64-16", "the cap 16 is below the start 64"),
])
def test_a_wrong_schedule_is_one_line_naming_the_fix(text, words):
    with pytest.raises(UserError, match=re.escape(words)):
        RunConfig(ebs_schedule=text, micro_batch_size=16)


def test_auto_needs_what_it_measures_with():
    with pytest.raises(UserError, match="auto measures B_simple from 2\\+ micro-batches a step.*--micro-batch-size 8"):
        RunConfig(ebs_schedule="auto:16", micro_batch_size=16)
    with pytest.raises(UserError, match="drop --no-noise-scale"):
        RunConfig(ebs_schedule="auto:32", micro_batch_size=16, noise_scale=False)
    with pytest.raises(UserError, match="use --scheduler constant"):
        RunConfig(ebs_schedule="auto:32", micro_batch_size=16, scheduler="linear")
    with pytest.raises(UserError, match="fixed --micro-batch-size"):
        RunConfig(ebs_schedule="16@0,64@1", micro_batch_size="auto")


def test_bad_schedule_on_the_command_line_is_exit_2_and_writes_nothing(tmp_path):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["train", *COMMON, "--db", str(db), "--micro-batch-size", "16",
                                      "--ebs-schedule", "16@0,64@2,32@1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --ebs-schedule 16@0,64@2,32@1: the change points must increase (0, 2, 1); e.g. --ebs-schedule 16@0,64@1,256@3"]
    assert not db.exists()


@pytest.mark.parametrize("backend_name", ["torch", "accelerate"])
def test_every_step_is_its_groups_full_batch_gradient_across_changes_of_k(tiny_bert, backend_name):
    """100 samples under 8@0,32@0.2,16@0.5 at micro-batch 8: k goes 1 -> 4 -> 2 inside one epoch, and the epoch
    ends on a ragged group of 12 (8 + 4); each step's accumulated gradient equals the full-batch gradient of its
    group (float64), and Accelerate syncs exactly at each group's end (it refuses to step otherwise)."""
    import torch

    from accumbench.backends.base import BackendSetup, build_backend

    model, split, batch_for = _tiny_float64_setup(tiny_bert, n=100)
    schedule = parse_schedule("8@0,32@0.2,16@0.5", 8)
    groups = plan_epoch(100, 8, 8, seed=3, epoch=1, lengths=split.lengths, schedule=schedule)
    assert [g.effective_batch_size for g in groups] == [8, 8, 8, 32, 16, 16, 16]
    assert [len(g) for g in groups] == [8, 8, 8, 32, 16, 16, 12]
    backend = build_backend(backend_name, model, BackendSetup(optimizer="adam", lr=1e-3, weight_decay=0.0,
                                                              scheduler="constant", warmup_ratio=0.0, total_steps=8,
                                                              accumulation_steps=1, micro_batch_size=8))
    backend.follow_schedule(lambda ebs: None, 8)  # a scheduled run's backend: k follows each group's EBS
    seen = 0
    for group, _, _ in backend.accumulated(groups, batch_for):
        accumulated = torch.cat([p.grad.flatten() for p in model.parameters()])
        full = _full_batch_gradient(model, batch_for, list(group.indices))
        assert _relative_error(accumulated, full) < 1e-12, (seen, len(group))
        model.zero_grad(set_to_none=True)
        seen += 1
    assert seen == len(groups)
    backend.close()


def test_a_scheduled_run_records_each_steps_ebs_and_follows_the_lr_rule_in_both_backends(tiny_bert, tmp_path):
    """16@0,32@step7,64@step11 with sqrt scaling from base 16: 100 samples a epoch (7 steps of 16; then 4 of 32; then
    from step 12, 64), the lr x sqrt(2) and x 2, and the two backends take the same steps."""
    db = tmp_path / "runs.db"
    for backend in ("torch", "accelerate"):
        _train(db, "--model", tiny_bert, "--backend", backend, "--micro-batch-size", "8", "--ebs-schedule",
               "16@0,32@step7,64@step11", "--lr-scaling", "sqrt", "--base-batch-size", "16")
    steps = {run: query(db, "SELECT step, epoch, samples_seen, loss, lr, effective_batch_size FROM steps "
                            "WHERE run_id = ? ORDER BY step", run) for run in (1, 2)}
    ebs = [s["effective_batch_size"] for s in steps[1]]
    assert ebs == [16] * 7 + [32] * 4 + [64] * 2
    assert [s["samples_seen"] for s in steps[1]][6:13] == [100, 132, 164, 196, 200, 264, 300]
    assert [s["lr"] for s in steps[1]] == pytest.approx([1e-3] * 7 + [1e-3 * 2 ** 0.5] * 4 + [2e-3] * 2)
    for a, b in zip(steps[1], steps[2], strict=True):
        assert (a["step"], a["samples_seen"], a["effective_batch_size"]) == (b["step"], b["samples_seen"], b["effective_batch_size"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["lr"] == pytest.approx(a["lr"])
    runs = query(db, "SELECT effective_batch_size, train_steps, config_json FROM runs ORDER BY id")
    assert [(r["effective_batch_size"], r["train_steps"]) for r in runs] == [(16, 13), (16, 13)]
    assert '"ebs_schedule": "16@0,32@step7,64@step11"' in runs[0]["config_json"]


def test_auto_doubles_exactly_when_the_epochs_noise_scale_passes_the_ebs(tiny_bert, tmp_path):
    """auto from 16 at micro-batch 8: an epoch's EBS is double the last one's exactly when that epoch's recorded
    B_simple was above it (and the cap allows), and the same otherwise."""
    db = tmp_path / "runs.db"
    _train(db, "--model", tiny_bert, "--micro-batch-size", "8", "--ebs-schedule", "auto:16-64", "--epochs", "4",
           "--max-train-samples", "160")
    epochs = query(db, "SELECT epoch, noise_scale FROM epochs WHERE run_id = 1 ORDER BY epoch")
    steps = query(db, "SELECT epoch, effective_batch_size FROM steps WHERE run_id = 1 ORDER BY step")
    ebs = [{s["effective_batch_size"] for s in steps if s["epoch"] == e["epoch"]} for e in epochs]
    assert all(len(sizes) == 1 for sizes in ebs)
    ebs = [sizes.pop() for sizes in ebs]
    assert ebs[0] == 16
    for before, after, epoch in zip(ebs, ebs[1:], epochs):
        noise = float(epoch["noise_scale"]) if epoch["noise_scale"] is not None else float("nan")
        expected = 2 * before if noise > before and 2 * before <= 64 else before
        assert after == expected, (ebs, [e["noise_scale"] for e in epochs])
    assert max(ebs) > 16, "the tiny model's noise scale is in the hundreds: auto grows"


def test_schedules_are_arms_of_a_sweep_beside_the_fixed_ebs(tmp_path):
    from accumbench.sweep.local import spec_as_yaml
    from accumbench.sweep.spec import build_spec

    spec = build_spec(effective_batch_sizes="16,64,256", ebs_schedule="16@0,64@1,256@3; auto", micro_batch_size=8,
                      lrs="1e-4,3e-4")
    assert spec.grid_shape() == "2 lrs x 3 EBS + 2 schedules = 10 cells"
    arms = {(c.effective_batch_size, c.ebs_schedule) for c in spec.cells}
    assert arms == {(16, None), (64, None), (256, None), (16, "16@0,64@1,256@3"), (16, "auto:16-256")}
    assert [spec.describe(c) for c in spec.cells if c.lr == 1e-4] == [  # each schedule beside the EBS it starts at
        "EBS 16, lr 1e-4", "grow 16→64@1→256@3, lr 1e-4", "auto 16→256, lr 1e-4", "EBS 64, lr 1e-4", "EBS 256, lr 1e-4"]
    # A worker reads the same grid back from the spec file the sweep writes.
    grid = tmp_path / "sweep.yaml"
    grid.write_text(spec_as_yaml(spec))
    assert build_spec(grid).grid_hash == spec.grid_hash
    # Without schedules the grid is what it was: the same cells, the same hash.
    assert build_spec(effective_batch_sizes="16,64,256", micro_batch_size=8, lrs="1e-4,3e-4").grid_hash == \
        build_spec(effective_batch_sizes="16,64,256", micro_batch_size=8, lrs="1e-4,3e-4", ebs_schedule=None).grid_hash


def test_a_bad_schedule_in_a_sweep_names_the_schedule(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--dataset", "demo", "--micro-batch-size", "16", "--effective-batch-sizes",
                                      "16", "--ebs-schedule", "16@0,64@1;16@0,40@2", "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 2
    assert "EBS 40 is not a multiple of micro-batch size 16" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs.db").exists()
