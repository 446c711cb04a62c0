"""accumbench branch: the critical batch size along training, from a run's saved states. The estimate on a
constructed loss table, a branch that is exactly the run's own next epoch, and bad input refused whole."""

from __future__ import annotations

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench.analysis.critical_batch import critical_batch_size, critical_curves
from accumbench.cli.app import app

COMMON = ["--dataset", "demo", "--max-train-samples", "96", "--max-eval-samples", "32", "--max-length", "32",
          "--epochs", "2", "--dropout", "0", "--lr", "1e-3", "--no-checkpoint", "--micro-batch-size", "8",
          "--seed", "7"]


def test_the_critical_batch_size_is_the_largest_ebs_that_keeps_within_the_tolerance():
    losses = {16: 0.500, 32: 0.503, 64: 0.506, 128: 0.49, 256: 0.60}
    assert critical_batch_size(losses, 0.01) == 32  # 64 is past 0.505; 128's lucky loss does not count after it
    assert critical_batch_size(losses, 0.02) == 128
    assert critical_batch_size({16: 0.5, 64: float("nan")}, 0.5) == 16
    assert critical_batch_size({16: 0.7}, 0.01) == 16


def test_curves_average_the_seeds_and_stand_beside_b_simple():
    states = [dict(id=1, run_id=5, epoch=0.0, step=0, samples_seen=0), dict(id=2, run_id=5, epoch=1.0, step=6, samples_seen=96)]
    def row(state, ebs, seed, loss):
        return dict(state_id=state, run_id=5, effective_batch_size=ebs, seed=seed, samples=64, val_loss=loss, val_accuracy=0.5)
    branches = [row(1, 16, 1, 0.60), row(1, 16, 2, 0.62), row(1, 64, 1, 0.70), row(1, 64, 2, 0.72),
                row(2, 16, 1, 0.40), row(2, 16, 2, 0.42), row(2, 64, 1, 0.405), row(2, 64, 2, 0.42)]
    epochs = [dict(run_id=5, epoch=1, noise_scale=88.0)]
    (curve,) = critical_curves(states, branches, epochs, tolerance=0.02)
    assert [(p.epoch, p.losses, p.critical, p.noise_scale, p.seeds) for p in curve.points] == [
        (0.0, {16: pytest.approx(0.61), 64: pytest.approx(0.71)}, 16, None, 2),
        (1.0, {16: pytest.approx(0.41), 64: pytest.approx(0.4125)}, 64, 88.0, 2)]


def _invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_a_branch_at_the_runs_own_seed_and_ebs_is_its_next_epoch(tiny_bert, tmp_path):
    """96 samples at EBS 16 (micro 8) with states at 0, 1 and 2 epochs: a branch from epoch 1 at seed 7 and EBS 16
    over 96 samples is the run's epoch 2 (the same validation loss); others record one row each."""
    db = tmp_path / "runs.db"
    result = _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16, "--save-states", "0,1,2")
    assert result.exit_code == 0, result.output
    states = query(db, "SELECT epoch, step, samples_seen, effective_batch_size, path FROM states ORDER BY step")
    assert [(s["epoch"], s["step"], s["samples_seen"], s["effective_batch_size"]) for s in states] == [
        (0.0, 0, 0, 16), (1.0, 6, 96, 16), (2.0, 12, 192, 16)]
    assert all((tmp_path / "checkpoints" / "1" / "states" / f"step-{s['step']}.pt").is_file() for s in states)
    result = _invoke("branch", "--run", 1, "--at", "1", "--ebs", "16,32", "--samples", 96, "--seeds", 7, "--db", db)
    assert result.exit_code == 0, result.output
    epoch_2 = query(db, "SELECT val_loss, val_accuracy FROM epochs WHERE run_id = 1 AND epoch = 2")[0]
    branches = query(db, "SELECT effective_batch_size, seed, lr, samples, steps, val_loss FROM branches ORDER BY effective_batch_size")
    assert [(b["effective_batch_size"], b["steps"], b["samples"]) for b in branches] == [(16, 6, 96), (32, 3, 96)]
    assert branches[0]["val_loss"] == pytest.approx(epoch_2["val_loss"], rel=1e-6)
    assert branches[1]["val_loss"] != pytest.approx(epoch_2["val_loss"], rel=1e-6)
    assert "B_crit" in result.output and "epoch 1" in result.output


def test_branch_refuses_bad_input_whole_and_writes_nothing(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16).exit_code == 0
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16,
                   "--save-states", "1", "--epochs", 1).exit_code == 0
    cases = [
        (["branch", "--run", 1], "run 1 has no saved states; train it with --save-states"),
        (["branch", "--run", 2, "--at", "3"], "--at 3 is past the end of run 2 (1 epoch); pick a saved point: 1"),
        (["branch", "--run", 2, "--at", "0"], "run 2 saved no state at epoch 0; it saved at epochs 1"),
        (["branch", "--run", 2, "--tolerance", "1.5"], "--tolerance must be a relative loss increase in (0, 1), got 1.5"),
        (["branch", "--run", 2, "--ebs", "16,20", "--samples", 80], "--ebs 20 is not a multiple of run's micro-batch size 8"),
        (["branch", "--run", 2, "--ebs", "16,64", "--samples", 80], "--samples 80 is not a multiple of EBS 64"),
        (["branch", "--run", 9], "no run 9 in"),
    ]
    for args, words in cases:
        result = _invoke(*args, "--db", db)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, result.output)
    assert query(db, "SELECT COUNT(*) AS n FROM branches")[0]["n"] == 0
    missing = _invoke("branch", "--run", 1, "--db", tmp_path / "none.db")
    assert missing.exit_code == 2 and not (tmp_path / "none.db").exists()


def test_report_and_the_study_page_show_the_curve_beside_b_simple(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16,
                   "--save-states", "0,1").exit_code == 0
    assert _invoke("branch", "--run", 1, "--ebs", "16,32", "--samples", 32, "--seeds", "1,2", "--tolerance", "0.5",
                   "--db", db).exit_code == 0
    text = _invoke("report", "--db", db).output
    assert "Run 1: critical batch size along training (branches of 32 samples" in text
    lines = [line.split() for line in text.splitlines() if line.startswith("epoch ")]
    assert [line[:2] for line in lines] == [["epoch", "0"], ["epoch", "1"]]
    assert all(line[-3] == "32" for line in lines), text  # within 50% of EBS 16's loss: B_crit is the largest
    assert lines[0][-2] == "-" and float(lines[1][-2]) > 0  # B_simple: none before training, epoch 1's after it
    page = tmp_path / "study.html"
    assert _invoke("report", "--db", db, "--format", "html", "-o", page).exit_code == 0
    html = page.read_text()
    assert "id='critical-batch'" in html and "critical-batch.png" in html


def test_states_saved_at_steps_mid_epoch_and_branched_from(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16,
                   "--save-states", "step3,step9").exit_code == 0
    states = query(db, "SELECT epoch, step, samples_seen FROM states ORDER BY step")
    assert [tuple(s) for s in states] == [(0.5, 3, 48), (1.5, 9, 144)]
    missing = _invoke("branch", "--run", 1, "--at", "step5", "--db", db)
    assert missing.exit_code == 2 and "run 1 saved no state at step 5; it saved at steps 3, 9" in missing.output
    result = _invoke("branch", "--run", 1, "--at", "step9", "--ebs", "16,32", "--samples", 32, "--seeds", 1, "--db", db)
    assert result.exit_code == 0, result.output
    assert "step 9 (epoch 1.50)" in result.output
    assert [tuple(b) for b in query(db, "SELECT effective_batch_size, steps FROM branches ORDER BY 1")] == [(16, 2), (32, 1)]


def test_two_stores_in_one_folder_keep_their_states_apart(tiny_bert, tmp_path):
    """Run ids are per database: run 1 of sst2.db and run 1 of subj.db must not save over each other's states (they
    did, when both used checkpoints/1/), and the default runs.db keeps checkpoints/<run id>/ as before."""
    paths = {}
    for name, seed in (("sst2.db", 7), ("subj.db", 8), ("runs.db", 9)):
        db = tmp_path / name
        assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--effective-batch-size", 16, "--seed", seed,
                       "--save-states", "1", "--epochs", 1).exit_code == 0
        paths[name] = query(db, "SELECT path FROM states")[0]["path"]
    assert paths == {name: str(tmp_path / "checkpoints" / folder / "1" / "states" / "step-6.pt")
                     for name, folder in (("sst2.db", "sst2.db"), ("subj.db", "subj.db"), ("runs.db", ""))}
    import torch

    weights = [torch.load(path, weights_only=True)["model"]["head.weight"] for path in paths.values()]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_a_branch_from_a_scheduled_run_uses_the_rules_lr_at_each_ebs(tiny_bert, tmp_path):
    """A state saved after a change of EBS (16 -> 32 under sqrt from base 16): a branch at EBS 16 trains at the rule's
    lr at 16 and one at 64 at its lr at 64, whatever EBS the run had at the state (the state's lr is x sqrt 2 there).
    With a linear decay the branch keeps the run's position in it: half-way, half the peak."""
    db = tmp_path / "runs.db"
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", db, "--ebs-schedule", "16@0,32@1",
                   "--lr-scaling", "sqrt", "--base-batch-size", 16, "--save-states", "2").exit_code == 0
    assert _invoke("branch", "--run", 1, "--ebs", "16,64", "--samples", 64, "--seeds", 1, "--db", db).exit_code == 0
    lrs = [b["lr"] for b in query(db, "SELECT lr FROM branches ORDER BY effective_batch_size")]
    assert lrs == pytest.approx([1e-3, 2e-3])
    decayed = tmp_path / "decay.db"
    assert _invoke("train", *COMMON, "--model", tiny_bert, "--db", decayed, "--effective-batch-size", 16,
                   "--scheduler", "linear", "--save-states", "1").exit_code == 0
    assert _invoke("branch", "--run", 1, "--ebs", "16", "--samples", 32, "--seeds", 1, "--db", decayed).exit_code == 0
    assert query(decayed, "SELECT lr FROM branches")[0]["lr"] == pytest.approx(0.5e-3)
