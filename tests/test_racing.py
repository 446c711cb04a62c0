"""Racing the lr grid (sweep --race): known answers on constructed stores (what is pruned, when, and what
never is; the slow-starter guard; the claim order and the skips), the replay's saved time and wrong prunes, bad
input, and a tiny-model race end to end.

Constructed runs have 200 validation examples, all of label 1; a run at accuracy a gets the first 200a of
them right, so two runs at a > b disagree on exactly 200(a - b) examples, all in the better one's favour.
With one seed each, the deficit a - b is bounded by the example bootstrap alone: its standard error is about
sqrt(d (1 - d) / 200) for d = a - b (0.80 against 0.77: 0.012, so the one-sided 95% lower bound is about 0.010).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench import stats
from accumbench.analysis.racing import (
    EpochOutcome,
    RunRecord,
    Standing,
    claim_order,
    closing,
    expected_best_lr,
    judge,
    skip_reason,
    standings,
)
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.formatting import rate_key
from accumbench.race_rule import RaceRule
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url
from accumbench.sweep.race import Racer
from accumbench.sweep.worker import cell_statuses
from accumbench.vocabulary import CUT, PASSED_OVER, PENDING, PRUNED, SKIPPED

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
        store.finish_run(run_id, PRUNED, "pruned", pruned_epoch=len(accuracies), pruned_by=1, pruned_p=0.01,
                         pruned_test="margin", pruned_deficit=0.2, pruned_bound=0.1)
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


def racer(store: Store, sweep_id: int, run_id: int, after: int = 1, alpha: float = 1e-4, guard: str = "none",
          margin: float | None = None) -> Racer:
    run = store.get_run(run_id)
    return Racer(store, sweep_id, RunConfig.from_dict(json.loads(run["config_json"])), "val_accuracy",
                 RaceRule(alpha, margin, after, guard))


def outcome(run_id: int, seed: int, lr: float, accuracy: float) -> EpochOutcome:
    right = round(accuracy * N)
    return EpochOutcome(run_id, seed, lr, accuracy, [1] * N, [1] * right + [0] * (N - right), "v")


# --- the judge, on a constructed store -------------------------------------------------------------------


def test_a_clearly_worse_lr_is_pruned_at_the_first_eligible_epoch(sweep):
    store, sweep_id = sweep
    best = add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    worse = add_run(store, sweep_id, 16, 1e-3, 42, [0.60], status=None)
    decision = racer(store, sweep_id, worse).decide(worse, 1)
    assert decision is not None and (decision.epoch, decision.lost_to, decision.test) == (1, best, "margin")
    assert decision.deficit == pytest.approx(0.20)
    # 40 discordant examples of 200: se ~ 0.028, so at alpha 1e-4 (z = 3.7) the bound is about 0.10 above 0.
    assert 0.05 < decision.lower < 0.15 and decision.margin == 0.01 and decision.seeds_paired == 1
    assert (decision.value, decision.best_value, decision.lr, decision.lost_to_lr) == (0.60, 0.80, 1e-3, 1e-4)
    assert decision.describe().startswith("pruned after epoch 1: lr 1e-3 at validation accuracy 0.600 against "
                                          f"0.800 at lr 1e-4 (run {best}), 20.0 behind, at least ")
    # Not before --race-after: with --race-after 2 the same evidence waits for epoch 2.
    assert racer(store, sweep_id, worse, after=2).decide(worse, 1) is None


def test_significantly_worse_is_not_enough_the_deficit_must_clear_the_margin(sweep):
    """0.77 against 0.80: 6 discordant examples, all one way, McNemar p = 0.03, significant at 0.05. Its deficit
    (3 points) is above a 2-point margin, but not with 95% confidence (lower bound ~1 point): it runs on. Against
    a half-point margin the same evidence suffices."""
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    close = add_run(store, sweep_id, 16, 3e-4, 42, [0.77], status=None)
    assert stats.mcnemar_exact(6, 0) < 0.05
    assert racer(store, sweep_id, close, alpha=0.05, margin=0.02).decide(close, 1) is None
    decision = racer(store, sweep_id, close, alpha=0.05, margin=0.005).decide(close, 1)
    assert decision is not None and 0.005 < decision.lower < 0.015
    leader = add_run(store, sweep_id, 16, 1e-3, 42, [0.95], status=None)
    assert racer(store, sweep_id, leader).decide(leader, 1) is None  # the group's best at epoch 1
    # Another group (EBS 32) has nothing at its lr grid yet: nothing to compare with, nothing pruned.
    alone = add_run(store, sweep_id, 32, 1e-5, 42, [0.10], status=None)
    assert racer(store, sweep_id, alone).decide(alone, 1) is None


def test_the_guard_spares_a_slow_starter_closing_the_gap_and_prunes_one_that_stalls(sweep):
    """5 epochs. The leader: 0.80, 0.85. The slow starter: 0.60, 0.75 (20 points behind, then 10: it gained
    10 on the leader; 3 epochs left at that pace end within the margin). The stalled: 0.60, 0.61 (20, then 24
    behind). Both are shown worse by more than a point at epoch 2; the guard spares only the first, and after
    epoch 1 it spares both: one epoch is no trajectory."""
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86, 0.87, 0.88], epochs=5)
    slow = add_run(store, sweep_id, 16, 3e-5, 42, [0.60, 0.75], epochs=5, status=None)
    stalled = add_run(store, sweep_id, 16, 1e-3, 42, [0.60, 0.61], epochs=5, status=None)
    guarded = dict(alpha=1e-3, guard="closing")
    assert racer(store, sweep_id, slow, **guarded).decide(slow, 2) is None
    assert racer(store, sweep_id, slow, alpha=1e-3).decide(slow, 2) is not None  # unguarded: pruned
    decision = racer(store, sweep_id, stalled, **guarded).decide(stalled, 2)
    assert decision is not None and decision.deficit == pytest.approx(0.24)
    assert racer(store, sweep_id, stalled, **guarded).decide(stalled, 1) is None
    # The rule itself: 10 gained with 3 epochs left clears a 20-point gap; 1 gained with 3 left does not.
    assert closing(0.20, 0.10, 3, 0.01) and not closing(0.20, 0.19, 3, 0.01) and not closing(0.20, 0.24, 3, 0.01)


def test_seeds_both_arms_ran_are_paired_and_a_seed_the_best_never_ran_is_compared_unpaired(sweep):
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80, 0.85, 0.86])
    add_run(store, sweep_id, 16, 1e-4, 43, [0.80, 0.85, 0.86])
    add_run(store, sweep_id, 16, 3e-4, 42, [0.60], status=PRUNED)
    second = add_run(store, sweep_id, 16, 3e-4, 43, [0.60], status=None)
    decision = racer(store, sweep_id, second, alpha=0.01).decide(second, 1)
    assert decision is not None and decision.seeds_paired == 2 and decision.deficit == pytest.approx(0.20)
    other = add_run(store, sweep_id, 16, 1e-3, 44, [0.60], status=None)
    decision = racer(store, sweep_id, other, alpha=0.01).decide(other, 1)
    assert decision is not None and decision.seeds_paired == 0


def test_pruned_and_killed_runs_count_as_evidence_only_where_they_should(sweep):
    store, sweep_id = sweep
    add_run(store, sweep_id, 16, 1e-4, 42, [0.80], status="KILLED")  # its cell runs again: not evidence
    worse = add_run(store, sweep_id, 16, 1e-3, 42, [0.60], status=None)
    assert racer(store, sweep_id, worse).decide(worse, 1) is None
    add_run(store, sweep_id, 16, 3e-5, 42, [0.80], status=PRUNED)  # pruned after epoch 1: its epoch 1 counts
    assert racer(store, sweep_id, worse).decide(worse, 1) is not None


def test_the_judge_on_f1_bounds_the_deficit_from_the_predictions():
    labels = [1] * 100 + [0] * 100
    strong = EpochOutcome(1, 42, 1e-4, 1.0, labels, labels, "v")  # every example right: F1 1
    weak = EpochOutcome(2, 42, 1e-3, 2 / 3, labels, [1] * 200, "v")  # everything positive: F1 2/3
    rule = RaceRule(alpha=1e-3, after=1, guard="none")
    decision = judge([strong, weak], 2, 1, metric="val_f1", rule=rule)
    assert decision is not None and decision.deficit == pytest.approx(1 / 3) and decision.lower > 0.01
    assert judge([strong, weak], 1, 1, metric="val_f1", rule=rule) is None


def test_a_seed_counts_once_per_lr_however_many_runs_it_had():
    rule = RaceRule(alpha=0.05, margin=0.0, after=1, guard="none")
    best = [outcome(1, 42, 1e-4, 0.80)]
    # Two runs of one cell (a dead worker's, then its rerun): only the latest, the judged run, is counted, so the
    # seed is one run of each arm (examples alone, a normal bound), not two (seeds too, a t with 1 df).
    dead, rerun = outcome(2, 42, 1e-3, 0.70), outcome(3, 42, 1e-3, 0.70)
    decision = judge([*best, dead, rerun], 3, 1, rule=rule)
    assert decision is not None and decision.seeds_paired == 1


# --- the order and the skips ---------------------------------------------------------------------------------


def standing(best_lr: float | None = None, worse: tuple[float, ...] = (), pruned: dict | None = None) -> Standing:
    return Standing(best_lr=best_lr, best_run=1 if best_lr else None, worse={rate_key(lr): "worse" for lr in worse},
                    pruned=pruned or {})


def group_of(ebs: int) -> str:
    from accumbench.analysis.racing import race_group

    return race_group(config(ebs, 1e-4, 42))


def test_with_nothing_known_cells_go_seed_by_seed_group_by_group_from_the_middle_out():
    cells = [config(ebs, lr, seed) for seed in (42, 43) for lr in (3e-5, 1e-4, 3e-4, 1e-3) for ebs in (16, 64)]
    order = [(c.seed, c.lr, c.effective_batch_size) for c in claim_order(cells)]
    assert order[:8] == [(42, 1e-4, 16), (42, 3e-4, 16), (42, 3e-5, 16), (42, 1e-3, 16),
                         (42, 1e-4, 64), (42, 3e-4, 64), (42, 3e-5, 64), (42, 1e-3, 64)]
    assert order[8:] == [(43, lr, ebs) for _, lr, ebs in order[:8]]


def test_the_lr_expected_best_goes_first_from_the_scaling_fit_over_the_groups_tuned():
    lrs = (3e-5, 1e-4, 3e-4, 1e-3)
    cells = [config(ebs, lr, 42) for lr in lrs for ebs in (16, 64, 256)]
    # EBS 16 tuned at 1e-4: EBS 64 by the sqrt rule from one point, 2e-4; nearest in log lr: 3e-4 (x1.5), 1e-4
    # (x2), 1e-3 (x5), 3e-5 (x6.7).
    known = {group_of(16): standing(1e-4)}
    assert expected_best_lr(config(64, 1e-4, 42), cells, known) == pytest.approx(2e-4)
    order = [(c.lr, c.effective_batch_size) for c in claim_order(cells, known)]
    assert order[4:8] == [(3e-4, 64), (1e-4, 64), (1e-3, 64), (3e-5, 64)]
    # Its own best comes first for EBS 16 (an earlier seed's answer), then its neighbours: 3e-4 (x3) before 3e-5 (x3.3).
    assert order[:4] == [(1e-4, 16), (3e-4, 16), (3e-5, 16), (1e-3, 16)]
    # EBS 16 at 1e-4 and 64 at 3e-4: exponent log 3 / log 4 = 0.79, so EBS 256 expects 9e-4: 1e-3 first.
    known[group_of(64)] = standing(3e-4)
    assert expected_best_lr(config(256, 1e-4, 42), cells, known) == pytest.approx(9e-4)
    assert [c.lr for c in claim_order(cells, known) if c.effective_batch_size == 256] == [1e-3, 3e-4, 1e-4, 3e-5]


def test_an_lr_beyond_a_bracketed_optimum_is_skipped_and_a_worse_arm_skips_its_other_seeds():
    lrs = (3e-5, 1e-4, 3e-4, 1e-3)
    cells = [config(16, lr, seed) for lr in lrs for seed in (42, 43)]
    # The best at 3e-5, and both lrs between it and 1e-3 worse by more than the margin: 1e-3 need not train.
    known = {group_of(16): standing(3e-5, worse=(1e-4, 3e-4))}
    why, decided_by = skip_reason(config(16, 1e-3, 42), cells, known)
    assert why == ("skipped: lr 1e-3 lies above the bracketed optimum lr 3e-5 (run 1), beyond 1e-4 and 3e-4, "
                   "already worse by more than the margin") and decided_by == 1
    # An lr already worse by more than the margin on one seed is worse on the others: its next seed is skipped.
    assert skip_reason(config(16, 3e-4, 43), cells, known) == ("skipped: lr 3e-4 worse", 1)
    # Only one worse between 3e-5 and 1e-3: 1e-3 is trained, and so is 1e-4, not shown worse.
    one_worse = {group_of(16): standing(3e-5, worse=(3e-4,))}
    assert skip_reason(config(16, 1e-3, 42), cells, one_worse) is None
    assert skip_reason(config(16, 1e-4, 43), cells, one_worse) is None
    # An arm is its seeds: pruned on seed 42, its seed 43 is skipped.
    pruned = RunRecord(config(16, 1e-3, 42), "pruned", 7, pruned_epoch=2)
    known = {group_of(16): standing(1e-4, pruned={rate_key(1e-3): pruned})}
    assert skip_reason(config(16, 1e-3, 43), cells, known) == (
        "skipped: lr 1e-3 was pruned on seed 42 after epoch 2 (run 7)", 7)


def test_standings_name_the_best_finished_arm_and_the_arms_worse_by_the_margin():
    rule = RaceRule(alpha=0.01, after=1, guard="none")
    records = [RunRecord(config(16, 1e-4, 42), "finished", 1, outcome(1, 42, 1e-4, 0.85)),
               RunRecord(config(16, 3e-4, 42), "finished", 2, outcome(2, 42, 3e-4, 0.84)),  # 1 point: not shown
               RunRecord(config(16, 1e-3, 42), "finished", 3, outcome(3, 42, 1e-3, 0.60)),
               RunRecord(config(16, 3e-5, 42), "pruned", 4, pruned_epoch=2)]
    [(group, found)] = standings(records, "val_accuracy", rule).items()
    assert group == group_of(16) and found.best_lr == 1e-4 and found.best_run == 1
    assert set(found.worse) == {rate_key(1e-3), rate_key(3e-5)} and set(found.pruned) == {rate_key(3e-5)}
    assert found.worse[rate_key(3e-5)] == "pruned after epoch 2 (run 4)"


def test_a_worker_on_a_constructed_store_skips_beyond_the_bracket_then_claims_the_fits_lr(sweep):
    """EBS 16, seed 42: 3e-5 finished best (0.86), 1e-4 finished 16 points behind, 3e-4 pruned. 1e-3 lies beyond
    two lrs worse by the margin: the next claim records it SKIPPED. Then EBS 64 is claimed at the lr the sqrt rule
    expects from EBS 16's best (3e-5 x 2 = 6e-5): 1e-4 (x1.7) before 3e-5 (x2)."""
    from accumbench.sweep.spec import build_spec
    from accumbench.sweep.worker import ClaimPlan

    store, sweep_id = sweep
    spec = build_spec(models="m", effective_batch_sizes="16,64", lrs="3e-5,1e-4,3e-4,1e-3", seeds="42,43", epochs=3,
                      micro_batch_size=8, data_seed=42, race=True, race_alpha=0.01)
    assert {c.config_hash for c in spec.cells} >= {config(16, 1e-3, 42).config_hash}
    best = add_run(store, sweep_id, 16, 3e-5, 42, [0.80, 0.85, 0.86])
    add_run(store, sweep_id, 16, 1e-4, 42, [0.60, 0.65, 0.70])
    add_run(store, sweep_id, 16, 3e-4, 42, [0.55, 0.55], status=PRUNED)
    plan = ClaimPlan.read(store, sweep_id, spec)
    skipped, _ = store.claim(sweep_id, plan.choose, 600)
    run = store.get_run(skipped)
    assert (run["status"], run["lr"], run["seed"], run["pruned_by"]) == (SKIPPED, 1e-3, 42, best)
    assert run["error"].startswith("skipped: lr 1e-3 lies above the bracketed optimum lr 3e-5") and run["started_at"] is None
    plan = ClaimPlan.read(store, sweep_id, spec)
    claimed, _ = store.claim(sweep_id, plan.choose, 600)
    run = store.get_run(claimed)
    assert (run["status"], run["effective_batch_size"], run["lr"], run["seed"]) == ("RUNNING", 64, 1e-4, 42)
    assert not plan.skipped


def test_pruned_and_skipped_cells_are_done_and_never_claimed_again():
    cells = (config(16, 1e-4, 42), config(16, 1e-3, 42), config(16, 1e-3, 43))
    runs = [{"config_hash": cells[1].config_hash, "status": PRUNED, "error": "pruned after epoch 1", "id": 1},
            {"config_hash": cells[2].config_hash, "status": SKIPPED, "error": "skipped: lr 1e-3 was pruned", "id": 2}]
    states = [s.state for s in cell_statuses(cells, runs, max_retries=1)]
    assert states == [PENDING, CUT, PASSED_OVER]


# --- the replay ---------------------------------------------------------------------------------------------


def replay(db: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), "--replay-race", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["replays"][0]


def test_the_replay_counts_the_time_saved_and_a_constructed_wrong_prune(tmp_path):
    """EBS 16 at 1e-4 leads throughout. 1e-3 is far behind after epoch 1 and stays behind: a right prune.
    3e-5 is far behind after epoch 1 (the short horizon) and ends within a point of the best (0.855 and 0.860
    against 0.860 and 0.865: a 0.5-point deficit, not shown worse by more than the margin): a wrong prune."""
    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        sweep_id = store.open_sweep("grid", "g", "{}", 6)["id"]
        for seed, wobble in ((42, 0.0), (43, 0.005)):
            add_run(store, sweep_id, 16, 1e-4, seed, [0.80, 0.85, 0.86 + wobble])
            add_run(store, sweep_id, 16, 1e-3, seed, [0.55, 0.55, 0.55 + wobble])
            add_run(store, sweep_id, 16, 3e-5, seed, [0.60, 0.83, 0.855 + wobble])
    # Unguarded from epoch 1: seed 42 claims 1e-4 (the middle), then 3e-5 and 1e-3, both pruned after epoch 1;
    # seed 43 trains 1e-4 and skips both pruned arms.
    out = replay(db, "--race-alpha", "1e-3", "--race-after", "1", "--race-guard", "none")
    stops = {(s["lr"], s["seed"]): s for s in out["stops"]}
    assert out["arms"] == 3 and set(stops) == {(1e-3, 42), (3e-5, 42), (1e-3, 43), (3e-5, 43)}
    assert [stops[(lr, 42)]["epoch"] for lr in (1e-3, 3e-5)] == [1, 1]
    assert stops[(1e-3, 43)]["skipped"] and stops[(1e-3, 43)]["why"].startswith("skipped: lr 1e-3 was pruned on seed 42")
    # 2 runs cut after 1 of 3 epochs, 2 never trained: 4 + 6 of the grid's 18 epochs of 10 s each.
    assert out["seconds"] == 18 * 10.0 and out["saved_seconds"] == 100.0 and out["epochs_trained"] == 8
    assert out["wrong"] == [{"effective_batch_size": 16, "lr": 3e-5}]
    # No rule without a wrong stop could save more than 1e-3's 6 epochs: 1e-4 and 3e-5 must train in full.
    assert out["floor_epochs"] == 12 and out["ceiling_share"] == pytest.approx(1 / 3)
    assert out["pick_full"] == out["pick_raced"] == 16 and out["best_lr_full"] == out["best_lr_raced"] == {"16": 1e-4}
    # The guard: nothing stops after epoch 1 (one epoch is no trajectory). After epoch 2, 3e-5 has gained 18
    # points on the leader, enough to close its last 2 with the epoch left: spared, and 1e-3, falling further
    # behind, is pruned; its seed 43 is skipped.
    guarded = replay(db, "--race-alpha", "1e-3", "--race-after", "1", "--race-guard", "closing")
    assert {(s["lr"], s["seed"], s["epoch"]) for s in guarded["stops"]} == {(1e-3, 42, 2), (1e-3, 43, 0)}
    assert guarded["wrong"] == [] and guarded["saved_seconds"] == 40.0
    # At a confidence no such evidence reaches, nothing is pruned or saved.
    strict = replay(db, "--race-alpha", "1e-300", "--race-after", "1", "--race-guard", "none")
    assert strict["stops"] == [] and strict["saved_seconds"] == 0 and strict["wrong"] == []


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
    (["--race", "--lrs", "1e-4,3e-4", "--race-metric", "val_loss"], "cannot use a margin on validation loss"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-margin", "-0.01"], "--race-margin must be at least 0 and below 1"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-margin", "1"], "--race-margin must be at least 0 and below 1"),
    (["--race", "--lrs", "1e-4,3e-4", "--race-guard", "closed"], "unknown --race-guard 'closed'"),
])
def test_bad_race_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--dataset", "demo", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and fragment in result.stderr
    assert not db.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--metric", "val_loss"], "--replay-race cannot use a margin on validation loss"),
    (["--race-margin", "2"], "--race-margin must be at least 0 and below 1"),
    (["--race-guard", "clos"], "unknown --race-guard 'clos'; choose one of: closing, none; did you mean 'closing'?"),
    (["--race-alpha", "0"], "--race-alpha must be between 0 and 1"),
])
def test_bad_replay_options_are_one_line_exit_2_before_anything_is_read(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), "--replay-race", *args])
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


def test_a_tiny_race_prunes_the_clearly_worse_lr_skips_its_next_seed_and_the_pick_excludes_it(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    args = ["sweep", "--models", tiny_bert, "--dataset", str(keyword_reviews(tmp_path / "reviews.csv")),
            "--max-train-samples", "256", "--max-eval-samples", "200", "--max-length", "16", "--epochs", "3",
            "--micro-batch-size", "16", "--no-checkpoint", "--effective-batch-sizes", "16", "--lrs", "1e-6,3e-3,1e4",
            "--seeds", "1,2", "--race", "--race-after", "1", "--race-alpha", "1e-4", "--db", str(db)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    # Exit 1 for the diverged cells, as ever (a sweep with a cell that failed for good); not for the pruned.
    assert result.exit_code == 1, result.output
    runs = {(r["lr"], r["seed"]): r for r in query(db, "SELECT * FROM runs")}
    # Claimed middle-out: 3e-3 first (nothing to race against: it finishes), then 1e-6, then 1e4; seed 2 starts
    # from its group's best so far, 3e-3.
    assert [r["lr"] for r in query(db, "SELECT lr FROM runs WHERE seed = 1 ORDER BY id")] == [3e-3, 1e-6, 1e4]
    assert [r["lr"] for r in query(db, "SELECT lr FROM runs WHERE seed = 2 ORDER BY id")][0] == 3e-3
    winner = runs[(3e-3, 1)]
    assert winner["status"] == FINISHED and runs[(3e-3, 2)]["status"] == FINISHED
    # The guard spares every arm after its first epoch; after its second, 1e-6 (at chance, gaining nothing on
    # the leader) is shown worse by more than a point and stops.
    slow = runs[(1e-6, 1)]
    assert slow["status"] == PRUNED and slow["pruned_epoch"] == 2 and slow["pruned_test"] == "margin"
    assert slow["pruned_by"] == winner["id"] and slow["pruned_bound"] > 0.01 and slow["pruned_p"] == 1e-4
    assert slow["error"].startswith("pruned after epoch 2: lr 1e-6")
    assert [e[0] for e in query(db, "SELECT epoch FROM epochs WHERE run_id = ?", slow["id"])] == [1, 2]  # kept
    # An arm is its seeds: seed 2 of 1e-6 never trains.
    skipped = runs[(1e-6, 2)]
    assert skipped["status"] == SKIPPED and skipped["pruned_by"] == slow["id"] and skipped["started_at"] is None
    assert skipped["error"] == f"skipped: lr 1e-6 was pruned on seed 1 after epoch 2 (run {slow['id']})"
    assert query(db, "SELECT COUNT(*) FROM epochs WHERE run_id = ?", skipped["id"])[0][0] == 0
    # 1e4 diverges on seed 1, so on seed 2 it is skipped as well.
    blown = runs[(1e4, 1)]
    assert blown["status"] == "FAILED" and blown["error"].startswith("diverged")
    assert runs[(1e4, 2)]["status"] == SKIPPED and runs[(1e4, 2)]["error"] == f"skipped: lr 1e4 diverged (run {blown['id']})"
    assert "1 pruned by racing" in result.output and "2 skipped by racing" in result.output

    # Resumed, nothing runs again: the pruned and skipped cells are done.
    again = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 1 and "0 to run" in again.output
    assert query(db, "SELECT COUNT(*) FROM runs")[0][0] == 6

    out = json.loads(CliRunner().invoke(app, ["pick-best", "--db", str(db), "--json"]).stdout)["picks"][0]
    assert out["lr"] == 3e-3 and [c["run_ids"] for c in out["candidates"]] == [
        sorted(runs[(3e-3, s)]["id"] for s in (1, 2))]
    tried = {t["lr"]: t for t in out["best_lr_per_ebs"][0]["lrs_tried"]}
    assert (tried[1e-6]["pruned"], tried[1e-6]["skipped"], tried[1e-6]["seeds"]) == (2, 1, 0)
    assert tried[1e4]["diverged"] == 1 and tried[1e4]["skipped"] == 1
    assert out["best_lr_per_ebs"][0]["lr"] == 3e-3 and out["best_lr_per_ebs"][0]["edge"] is None
    assert sorted((p["run_id"], p["skipped"]) for p in out["pruned"]) == [
        (slow["id"], False), (skipped["id"], True), (runs[(1e4, 2)]["id"], True)]
    report = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "200"}).stdout
    assert "racing (sweep --race)" in report and "1 run pruned, 2 skipped" in report
    assert "pruned" in report.split("lr x EBS")[1]


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

    spec = build_spec(lrs="1e-4,3e-4", epochs=3, race=True, race_alpha=1e-3, race_after=2, race_metric="val_f1",
                      race_margin=0.02, race_guard="none")
    grid = tmp_path / "sweep.yaml"
    grid.write_text(spec_as_yaml(spec))
    again = build_spec(grid)
    assert (again.race, again.race_alpha, again.race_after, again.race_metric) == (True, 1e-3, 2, "val_f1")
    assert (again.race_margin, again.race_guard) == (0.02, "none")
    assert again.grid_hash == spec.grid_hash == build_spec(lrs="1e-4,3e-4", epochs=3).grid_hash  # racing is not the grid


def test_two_workers_race_one_grid_and_every_decision_reads_what_the_other_recorded(tiny_bert, any_db, tmp_path):
    """Two processes on one store (SQLite file or PostgreSQL): every cell ends once, and each prune or skip of
    seed 2 rests on seed 1's run that the other worker is training or has trained."""
    import os
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "accumbench", "sweep", "--models", tiny_bert, "--dataset",
            str(keyword_reviews(tmp_path / "reviews.csv")), "--max-train-samples", "256", "--max-eval-samples", "200",
            "--max-length", "16", "--epochs", "4", "--micro-batch-size", "16", "--no-checkpoint",
            "--effective-batch-sizes", "16", "--lrs", "1e-6,3e-3", "--seeds", "1,2", "--race", "--race-after", "1",
            "--race-alpha", "1e-4", "--db", any_db]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    # The second worker starts once the first has finished lr 1e-6 on seed 1 (claimed first: nothing is known yet,
    # and of two lrs the lower goes first) and gone on to 3e-3. Started together, a 1e-6 run that happened to stay a
    # moment ahead of 3e-3's on every epoch would never meet its result at the same epoch, and nothing would stop.
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and workers[0].poll() is None:
        with Store.open(resolve_db_url(any_db)) as store:
            if store.find_runs(status=FINISHED):
                break
        time.sleep(0.2)
    workers.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    for worker in workers:
        output = worker.communicate(timeout=600)[0]
        assert worker.returncode == 0 and "Traceback" not in output, output
    with Store.open(resolve_db_url(any_db)) as store:
        runs = store.find_runs(status=None)
        epochs = {(e["run_id"], e["epoch"]): e["val_accuracy"] for e in store.epochs_of([r["id"] for r in runs])}
    assert len(runs) == 4 and len({r["config_hash"] for r in runs}) == 4
    by_id = {r["id"]: r for r in runs}
    assert all(r["status"] == FINISHED for r in runs if r["lr"] == 3e-3)
    # Seed 2 of 1e-6 is pruned when the second worker claims it while 3e-3's seed-1 run is still training (a few
    # epochs ahead), and skipped when that run has finished by then; either way it is stopped.
    stopped = [r for r in runs if r["status"] in (PRUNED, SKIPPED)]
    assert [(r["lr"], r["seed"]) for r in stopped] == [(1e-6, 2)]
    pruned = [r for r in stopped if r["status"] == PRUNED]
    for run in pruned:
        winner = by_id[run["pruned_by"]]
        assert winner["lr"] == 3e-3 and epochs[(winner["id"], run["pruned_epoch"])] > epochs[(run["id"], run["pruned_epoch"])]
        assert max(e for (r, e) in epochs if r == run["id"]) == run["pruned_epoch"] < 4
