"""Racing the lr grid (sweep --race): known answers on constructed stores (what is pruned, when, and what
never is), the claim order, the replay's saved time and wrong prunes, bad input, and a tiny-model race end
to end.

Constructed runs have 200 validation examples, all of label 1; a run at accuracy a gets the first 200a of
them right, so two runs at a > b disagree on exactly 200(a - b) examples, all in the better one's favour:
McNemar's p is then 2 / 2^(200(a - b)) (0.60 against 0.80: 40 discordant, p = 1.8e-12; 0.79 against 0.80:
2 discordant, p = 0.5)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench.analysis.racing import EpochOutcome, claim_order, judge
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url
from accumbench.sweep.race import Racer
from accumbench.sweep.worker import cell_statuses
from accumbench.vocabulary import CUT, PENDING, PRUNED

N = 200


def config(ebs: int, lr: float, seed: int, epochs: int = 3) -> RunConfig:
    return RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42, epochs=epochs, lr=lr)


def add_run(store: Store, sweep_id: int, ebs: int, lr: float, seed: int, accuracies: list[float],
            epochs: int = 3, status: str | None = FINISHED, seconds: float = 10.0) -> int:
    """A run of the sweep at (EBS, lr, seed) that recorded `accuracies` epoch by epoch (and its predictions),
    then ended with `status` (None: still RUNNING)."""
    cell = config(ebs, lr, seed, epochs)
    run_id, _ = store.claim(sweep_id, lambda runs: {**run_columns(cell), "attempt": 1}, 600)
    store.update_run(run_id, num_val_samples=N, num_test_samples=N, num_labels=2)
    best = 0
    for epoch, accuracy in enumerate(accuracies, 1):
        store.add_epoch(run_id, epoch=epoch, train_loss=0.3, train_accuracy=0.9, val_loss=1 - accuracy,
                        val_accuracy=accuracy, test_loss=1 - accuracy, test_accuracy=accuracy, optimizer_steps=10 * epoch,
                        samples_seen=100 * epoch, epoch_seconds=seconds, train_seconds=seconds - 1, eval_seconds=1,
                        samples_per_second=10.0, peak_memory_mb=1.0)
        right = round(accuracy * N)
        improved = not best or accuracy > accuracies[best - 1]
        for split in ("validation", "test"):
            store.save_predictions(run_id, split, epoch, f"{split}-42", [1] * N, [1] * right + [0] * (N - right),
                                   best=improved)
        if improved:
            best = epoch
            store.update_run(run_id, best_epoch=epoch)
    if status == PRUNED:
        store.finish_run(run_id, PRUNED, "pruned", pruned_epoch=len(accuracies), pruned_by=1, pruned_p=1e-9,
                         pruned_test="mcnemar")
    elif status is not None:
        store.finish_run(run_id, status)
    return run_id


@pytest.fixture
def sweep(any_db):
    """An open store on SQLite and on PostgreSQL, and a sweep in it: the racer reads both the same way."""
    store = Store.open(resolve_db_url(any_db))
    sweep = store.open_sweep("race", "grid", "{}", 8)
    yield store, sweep["id"]
    store.close()


def racer(store: Store, sweep_id: int, run_id: int, after: int = 1, alpha: float = 1e-4) -> Racer:
    run = store.get_run(run_id)
    return Racer(store, sweep_id, RunConfig.from_dict(json.loads(run["config_json"])), "val_accuracy", alpha, after)


# --- the judge, on a constructed store -------------------------------------------------------------------


def test_a_clearly_worse_lr_is_pruned_at_the_first_eligible_epoch(sweep):
    store, sweep_id = sweep
    best = add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    worse = add_run(store, sweep_id, 16, 1e-3, 42, [0.60], status=None)
    decision = racer(store, sweep_id, worse).decide(worse, 1)
    assert decision is not None and (decision.epoch, decision.lost_to, decision.test) == (1, best, "mcnemar")
    assert decision.p_value == pytest.approx(2 / 2**40)
    assert (decision.value, decision.best_value, decision.lr, decision.lost_to_lr) == (0.60, 0.80, 1e-3, 1e-4)
    # Not before --race-after: with --race-after 2 the same evidence waits for epoch 2.
    assert racer(store, sweep_id, worse, after=2).decide(worse, 1) is None


def test_a_close_lr_is_not_pruned_and_the_groups_best_never_is(sweep):
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    close = add_run(store, sweep_id, 16, 3e-4, 42, [0.79], status=None)
    assert racer(store, sweep_id, close).decide(close, 1) is None  # 2 discordant examples: p = 0.5
    leader = add_run(store, sweep_id, 16, 1e-3, 42, [0.95], status=None)
    assert racer(store, sweep_id, leader).decide(leader, 1) is None  # the group's best at epoch 1
    # Another group (EBS 32) has nothing at its lr grid yet: nothing to compare with, nothing pruned.
    alone = add_run(store, sweep_id, 32, 1e-5, 42, [0.10], status=None)
    assert racer(store, sweep_id, alone).decide(alone, 1) is None


def test_the_test_is_stratified_by_seed_and_pairs_by_example_without_a_shared_seed(sweep):
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    add_run(store, sweep_id, 16, 1e-4, 43, [0.80, 0.85, 0.86])
    # 0.77 against 0.80: 6 discordant examples on one seed, p = 0.03; the other seed of the same lr adds 6
    # more (p = 4.9e-4): summed over the seeds both ran, then one exact test.
    first = add_run(store, sweep_id, 16, 3e-4, 42, [0.77], status=None)
    assert racer(store, sweep_id, first, alpha=1e-3).decide(first, 1) is None
    second = add_run(store, sweep_id, 16, 3e-4, 43, [0.77], status=None)
    decision = racer(store, sweep_id, second, alpha=1e-3).decide(second, 1)
    assert decision is not None and decision.seeds_paired == 2 and decision.p_value == pytest.approx(2 / 2**12)
    # A seed the best lr never ran is paired by example alone, with the best lr's run of another seed.
    other = add_run(store, sweep_id, 16, 1e-3, 44, [0.60], status=None)
    decision = racer(store, sweep_id, other).decide(other, 1)
    assert decision is not None and decision.seeds_paired == 1 and decision.p_value == pytest.approx(2 / 2**40)


def test_pruned_and_killed_runs_count_as_evidence_only_where_they_should(sweep):
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80], status="KILLED")  # its cell runs again: not evidence
    worse = add_run(store, sweep_id, 16, 1e-3, 42, [0.60], status=None)
    assert racer(store, sweep_id, worse).decide(worse, 1) is None
    add_run(store, sweep_id, 16, 3e-5, 42, [0.80], status=PRUNED)  # pruned after epoch 1: its epoch 1 counts
    assert racer(store, sweep_id, worse).decide(worse, 1) is not None


def test_the_judge_on_f1_uses_a_paired_bootstrap():
    labels = [1] * 100 + [0] * 100
    strong = EpochOutcome(1, 42, 1e-4, 0.9, labels, labels, "v")  # every example right
    weak = EpochOutcome(2, 42, 1e-3, 0.5, labels, [1] * 200, "v")  # everything positive
    decision = judge([strong, weak], 2, 1, metric="val_f1", alpha=1e-3)
    assert decision is not None and decision.test == "bootstrap" and decision.p_value < 1e-3
    assert judge([strong, weak], 1, 1, metric="val_f1") is None


# --- claiming and resuming ---------------------------------------------------------------------------------


def test_claim_order_goes_seed_by_seed_round_robin_and_middle_out():
    cells = [config(ebs, lr, seed) for seed in (42, 43) for lr in (3e-5, 1e-4, 3e-4, 1e-3) for ebs in (16, 64)]
    order = [(c.seed, c.lr, c.effective_batch_size) for c in claim_order(cells)]
    assert order[:8] == [(42, 1e-4, 16), (42, 1e-4, 64), (42, 3e-4, 16), (42, 3e-4, 64),
                         (42, 3e-5, 16), (42, 3e-5, 64), (42, 1e-3, 16), (42, 1e-3, 64)]
    assert order[8:] == [(43, lr, ebs) for _, lr, ebs in order[:8]]


def test_a_pruned_cell_is_done_and_never_claimed_again():
    cells = (config(16, 1e-4, 42), config(16, 1e-3, 42))
    runs = [{"config_hash": cells[1].config_hash, "status": PRUNED, "error": "pruned after epoch 1", "id": 1}]
    states = [s.state for s in cell_statuses(cells, runs, max_retries=1)]
    assert states == [PENDING, CUT]


# --- the replay ---------------------------------------------------------------------------------------------


def replay(db: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), "--replay-race", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["replays"][0]


def test_the_replay_counts_the_time_saved_and_a_constructed_wrong_prune(tmp_path):
    """EBS 16 at 1e-4 leads throughout. 1e-3 is far behind after epoch 1 and stays behind: a right prune.
    3e-5 is far behind after epoch 1 (the short horizon) and ends shown within a point of the best (0.855 and
    0.860 against 0.860 and 0.865: one example behind in each seed, a 0.5-point deficit): a wrong prune."""
    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        sweep_id = store.open_sweep("grid", "g", "{}", 6)["id"]
        for seed, wobble in ((42, 0.0), (43, 0.005)):
            add_run(store, sweep_id, 16, 1e-4, seed, [0.80, 0.85, 0.86 + wobble])
            add_run(store, sweep_id, 16, 1e-3, seed, [0.55, 0.55, 0.55 + wobble])
            add_run(store, sweep_id, 16, 3e-5, seed, [0.60, 0.83, 0.855 + wobble])
    out = replay(db, "--race-alpha", "1e-4", "--race-after", "1")
    assert out["arms"] == 3 and len(out["prunes"]) == 4  # both seeds of both worse lrs, after epoch 1
    assert {(p["lr"], p["epoch"]) for p in out["prunes"]} == {(1e-3, 1), (3e-5, 1)}
    assert out["seconds"] == 6 * 3 * 10.0 and out["saved_seconds"] == 4 * 2 * 10.0  # 2 epochs of 10 s, 4 runs
    assert out["wrong_prunes"] == out["not_ruled_out"] == [{"effective_batch_size": 16, "lr": 3e-5}]
    assert out["pick_full"] == out["pick_raced"] == 16 and out["best_lr_full"] == out["best_lr_raced"] == {"16": 1e-4}
    # At a level no such evidence reaches (the smallest p here is 2 / 2^120), nothing is pruned or saved.
    strict = replay(db, "--race-alpha", "1e-40", "--race-after", "1")
    assert strict["prunes"] == [] and strict["saved_seconds"] == 0 and strict["wrong_prunes"] == []
    # Racing from epoch 2 on: 3e-5 has nearly caught up by then (0.83 against 0.85 on both seeds: 8 discordant
    # examples, p = 7.8e-3); 1e-3 has not.
    late = replay(db, "--race-alpha", "1e-4", "--race-after", "2")
    assert {(p["lr"], p["epoch"]) for p in late["prunes"]} == {(1e-3, 2)} and late["wrong_prunes"] == []


def test_replaying_a_raced_grid_is_refused(tmp_path):
    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        sweep_id = store.open_sweep("grid", "g", "{}", 2)["id"]
        add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
        add_run(store, sweep_id, 16, 1e-3, 42, [0.55], status=PRUNED)
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), "--replay-race"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "PRUNED" in result.stderr


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--race"], "needs an lr grid"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-alpha", "0"], "--race-alpha must be between 0 and 1"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-alpha", "1.5"], "--race-alpha must be between 0 and 1"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-after", "0"], "--race-after must be at least 1"),
    (["--race", "--lrs", "1e-4,3e-4", "--epochs", "2", "--race-after", "2"], "leaves no epoch to stop early at"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-metric", "val_f2"], "unknown --race-metric"),
])
def test_bad_race_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--dataset", "demo", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and fragment in result.stderr
    assert not db.exists()


def test_a_bad_race_option_in_a_sweep_file_is_refused(tmp_path):
    grid = tmp_path / "sweep.yaml"
    grid.write_text("lrs: [1e-4, 3e-4]\nrace: true\nrace_alpha: 2\n")
    result = CliRunner().invoke(app, ["sweep", "--config", str(grid), "--db", str(tmp_path / "runs.db"), "--dry-run"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--race-alpha must be between 0 and 1" in result.stderr


# --- a tiny-model race, end to end -----------------------------------------------------------------------------


def keyword_reviews(path: Path) -> Path:
    """Reviews whose label is one word ('great' or 'awful') among filler: a tiny BERT learns it in an epoch
    at lr 3e-3, not at all at 1e-6, and diverges at 1e4."""
    rng = random.Random(0)
    filler = "the a movie film plot actor scene story was is it this that and of very quite rather".split()
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for i in range(1000):
            words = [rng.choice(filler) for _ in range(8)]
            words.insert(rng.randrange(9), "great" if i % 2 else "awful")
            writer.writerow([" ".join(words), i % 2])
    return path


def test_a_tiny_race_prunes_the_clearly_worse_lr_and_the_pick_excludes_it(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    args = ["sweep", "--models", tiny_bert, "--dataset", str(keyword_reviews(tmp_path / "reviews.csv")),
            "--max-train-samples", "256", "--max-eval-samples", "200", "--max-length", "16", "--epochs", "3",
            "--micro-batch-size", "16", "--no-checkpoint", "--effective-batch-sizes", "16", "--lrs", "1e-6,3e-3,1e4",
            "--seeds", "1,2", "--race", "--race-after", "1", "--race-alpha", "1e-4", "--db", str(db)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    # Exit 1 for the diverged cells, as ever (a sweep with a cell that failed for good); not for the pruned.
    assert result.exit_code == 1, result.output
    runs = {(r["lr"], r["seed"]): r for r in query(db, "SELECT * FROM runs")}
    # Claimed middle-out: 3e-3 first (nothing to race against: it finishes), then 1e-6, then 1e4.
    assert [r["lr"] for r in query(db, "SELECT lr FROM runs WHERE seed = 1 ORDER BY id")] == [3e-3, 1e-6, 1e4]
    for seed in (1, 2):
        assert runs[(3e-3, seed)]["status"] == FINISHED
        slow = runs[(1e-6, seed)]
        assert slow["status"] == PRUNED and slow["pruned_epoch"] == 1 and slow["pruned_test"] == "mcnemar"
        assert slow["pruned_by"] == runs[(3e-3, seed)]["id"] and slow["pruned_p"] < 1e-4
        assert slow["error"].startswith("pruned after epoch 1: lr 1e-6")
        assert [e[0] for e in query(db, "SELECT epoch FROM epochs WHERE run_id = ?", slow["id"])] == [1]  # kept
        assert runs[(1e4, seed)]["status"] == "FAILED" and runs[(1e4, seed)]["error"].startswith("diverged")
    assert "2 pruned by racing" in result.output

    # Resumed, nothing runs again: the pruned cells are done.
    again = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 1 and "0 to run" in again.output
    assert query(db, "SELECT COUNT(*) FROM runs")[0][0] == 6

    out = json.loads(CliRunner().invoke(app, ["pick-best", "--db", str(db), "--json"]).stdout)["picks"][0]
    assert out["lr"] == 3e-3 and [c["run_ids"] for c in out["candidates"]] == [
        sorted(runs[(3e-3, s)]["id"] for s in (1, 2))]
    tried = {t["lr"]: t for t in out["best_lr_per_ebs"][0]["lrs_tried"]}
    assert tried[1e-6]["pruned"] == 2 and tried[1e-6]["seeds"] == 0 and tried[1e4]["diverged"] == 2
    assert out["best_lr_per_ebs"][0]["lr"] == 3e-3 and out["best_lr_per_ebs"][0]["edge"] is None
    assert sorted(p["run_id"] for p in out["pruned"]) == sorted(runs[(1e-6, s)]["id"] for s in (1, 2))
    report = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "200"}).stdout
    assert "racing (sweep --race)" in report and "2 runs pruned" in report and "pruned" in report.split("lr x EBS")[1]


# --- what report, the study page and --workers make of it ------------------------------------------------------


def test_report_and_the_study_page_show_the_pruned_runs_where_they_stopped(tmp_path):
    from accumbench.analysis.cells import plot_frames
    from accumbench.analysis.runs import load_runs

    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        sweep_id = store.open_sweep("grid", "g", "{}", 4)["id"]
        for seed in (42, 43):
            add_run(store, sweep_id, 16, 1e-4, seed, [0.80, 0.85, 0.86 + seed / 1e4])
            add_run(store, sweep_id, 16, 1e-3, seed, [0.55], status=PRUNED, seconds=12.0)
        data = load_runs(store)
        epochs, _ = plot_frames(store, data)
    cut = epochs[epochs["label"] == "EBS 16 lr 1e-3 (pruned)"]
    assert len(cut) == 2 and cut["faded"].all() and (cut["pruned_at"] == 1).all() and (cut["epoch"] == 1).all()
    # Each pruned run trained 1 of its 3 epochs at 12 s: 2 x 2 x 12 s saved, of 2 x 3 x 12 + 6 x 10 s unraced.
    out = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--format", "json"]).stdout)
    [group] = out["racing"]
    assert group["saved_seconds"] == 48.0 and group["seconds"] == 2 * 12.0 + 6 * 10.0
    assert [(p["lr"], p["seed"], p["epoch"]) for p in group["pruned"]] == [(1e-3, 42, 1), (1e-3, 43, 1)]
    page = tmp_path / "study.html"
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--format", "html", "-o", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "id='racing'" in html and "m EBS 16: 2 runs pruned" in html and "36% of the group" in html


def test_workers_get_the_race_options_through_their_sweep_file(tmp_path):
    from accumbench.sweep.local import spec_as_yaml
    from accumbench.sweep.spec import build_spec

    spec = build_spec(lrs="1e-4,3e-4", epochs=3, race=True, race_alpha=1e-3, race_after=2, race_metric="val_loss")
    grid = tmp_path / "sweep.yaml"
    grid.write_text(spec_as_yaml(spec))
    again = build_spec(grid)
    assert (again.race, again.race_alpha, again.race_after, again.race_metric) == (True, 1e-3, 2, "val_loss")
    assert again.grid_hash == spec.grid_hash == build_spec(lrs="1e-4,3e-4", epochs=3).grid_hash  # racing is not the grid


def test_two_workers_race_one_grid_and_every_decision_reads_what_the_other_recorded(tiny_bert, any_db, tmp_path):
    """Two processes on one store (SQLite file or PostgreSQL): every cell ends once, and each prune rests on
    the run it lost to, whichever worker trained that run."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "accumbench", "sweep", "--models", tiny_bert, "--dataset",
            str(keyword_reviews(tmp_path / "reviews.csv")), "--max-train-samples", "256", "--max-eval-samples", "200",
            "--max-length", "16", "--epochs", "4", "--micro-batch-size", "16", "--no-checkpoint",
            "--effective-batch-sizes", "16", "--lrs", "1e-6,3e-3", "--seeds", "1,2", "--race", "--race-after", "1",
            "--race-alpha", "1e-4", "--db", any_db]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    for worker in workers:
        output = worker.communicate(timeout=600)[0]
        assert worker.returncode == 0 and "Traceback" not in output, output
    with Store.open(resolve_db_url(any_db)) as store:
        runs = store.find_runs(status=None)
        epochs = {(e["run_id"], e["epoch"]): e["val_accuracy"] for e in store.epochs_of([r["id"] for r in runs])}
    assert len(runs) == 4 and len({r["config_hash"] for r in runs}) == 4
    by_id = {r["id"]: r for r in runs}
    assert all(r["status"] == FINISHED for r in runs if r["lr"] == 3e-3)
    pruned = [r for r in runs if r["status"] == PRUNED]
    assert pruned and all(r["lr"] == 1e-6 for r in pruned)
    for run in pruned:
        winner = by_id[run["pruned_by"]]
        assert winner["lr"] == 3e-3 and epochs[(winner["id"], run["pruned_epoch"])] > epochs[(run["id"], run["pruned_epoch"])]
        assert max(e for (r, e) in epochs if r == run["id"]) == run["pruned_epoch"] < 4


def test_a_seed_counts_once_per_lr_however_many_runs_it_had():
    labels = [1] * N
    best = [EpochOutcome(1, 42, 1e-4, 0.80, labels, [1] * 160 + [0] * 40, "v")]
    # Two runs of one cell (a dead worker's, then its rerun): only the latest, the judged run, is counted.
    dead = EpochOutcome(2, 42, 1e-3, 0.78, labels, [1] * 156 + [0] * 44, "v")
    rerun = EpochOutcome(3, 42, 1e-3, 0.78, labels, [1] * 156 + [0] * 44, "v")
    assert judge([*best, dead, rerun], 3, 1, alpha=0.1) is None  # 4 discordant: p = 0.125, not 8: p = 0.008
