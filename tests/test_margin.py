""""As good as the best" only where the evidence shows it: the deficit's bound (accumbench/deficit.py) on known
answers, its calibration on simulated candidates, and --margin's bad input.

Known answers, on stores built through the store's own API:
  * a candidate with a collapsed seed (one class for every example) is never called as good as the best, even
    where its mean is the best's;
  * two candidates with identical predictions: the cheaper is picked;
  * a 0.2-point deficit with 5 seeds and 4,000 examples is within a 1-point margin;
  * a 3-point deficit with 2 seeds is not.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from accumbench import deficit
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def add_run(store: Store, ebs: int, seed: int, predicted: list[int], labels: list[int], steps: int = 10) -> int:
    """A finished run whose validation predictions are `predicted` (its recorded accuracy is theirs)."""
    config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42, epochs=1)
    n = len(labels)
    accuracy = sum(p == y for p, y in zip(predicted, labels)) / n
    run_id = store.create_run(**run_columns(config), num_test_samples=n, num_val_samples=n)
    store.add_epoch(run_id, epoch=1, train_loss=0.3, train_accuracy=0.9, val_loss=1 - accuracy, val_accuracy=accuracy,
                    test_loss=1 - accuracy, test_accuracy=accuracy, optimizer_steps=steps, samples_seen=100,
                    epoch_seconds=11, train_seconds=10, eval_seconds=1, samples_per_second=10, peak_memory_mb=100.0)
    store.update_run(run_id, best_epoch=1)
    for split in ("validation", "test"):
        store.save_predictions(run_id, split, 1, f"{split}-42", labels, predicted)
    store.finish_run(run_id, FINISHED)
    return run_id


def right_on(labels: list[int], count: int, start: int = 0) -> list[int]:
    """Predictions right on `count` examples from `start` (cyclically), wrong on the rest."""
    n = len(labels)
    right = {(start + i) % n for i in range(count)}
    return [y if i in right else 1 - y for i, y in enumerate(labels)]


def pick(db: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), *args], env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def candidates(db: Path, *args: str) -> tuple[dict, dict]:
    out = json.loads(pick(db, "--json", *args).stdout)["picks"][0]
    return out, {c["label"]: c for c in out["candidates"]}


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "runs.db"


LABELS = [i % 2 for i in range(1000)]  # balanced: one class everywhere scores 0.5


def test_a_collapsed_seed_is_never_as_good_as_the_best(db):
    """EBS 256's two seeds: one at 0.95, one predicting class 1 everywhere (0.50); its mean is 0.725, far
    behind. Then the harder case: its good seed so good that the mean ties the best's (0.90): the spread still
    keeps it out, where "not significantly worse" (Welch p = 1.0) called it as good and picked it."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, right in ((1, 900), (2, 900)):
            add_run(store, 64, seed, right_on(LABELS, right), LABELS, steps=16)
        add_run(store, 256, 1, right_on(LABELS, 950), LABELS, steps=4)
        add_run(store, 256, 2, [1] * len(LABELS), LABELS, steps=4)
    out, by_label = candidates(db)
    assert out["pick"] == "EBS 64" and by_label["EBS 256"]["as_good_as_best"] is False
    assert by_label["EBS 256"]["deficit"]["value"] == pytest.approx(0.175)
    with Store.open(resolve_db_url(str(db))) as store:  # an EBS 1024 whose mean is the best's, from 1.0 and 0.8
        add_run(store, 1024, 1, right_on(LABELS, 1000), LABELS, steps=1)
        add_run(store, 1024, 2, right_on(LABELS, 800), LABELS, steps=1)
    out, by_label = candidates(db)
    tied = by_label["EBS 1024"]["deficit"]
    assert tied["value"] == pytest.approx(0.0) and tied["upper"] > 0.5  # t(0.95, ~1) on a 20-point spread
    assert out["pick"] == "EBS 64" and by_label["EBS 1024"]["as_good_as_best"] is False
    assert "EBS 1024 has 16x fewer optimizer steps but is not shown within 1 point of it (deficit 0.0" in out["answer"]


def test_identical_predictions_pick_the_cheaper(db):
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, right in ((1, 850), (2, 870)):
            add_run(store, 64, seed, right_on(LABELS, right), LABELS, steps=16)
            add_run(store, 256, seed, right_on(LABELS, right), LABELS, steps=4)
    out, by_label = candidates(db)
    bound = by_label["EBS 256"]["deficit"] or by_label["EBS 64"]["deficit"]
    assert bound["value"] == 0.0 and bound["upper"] == pytest.approx(bound["upper"])
    assert out["pick"] == "EBS 256"
    assert out["answer"].startswith("EBS 256 at lr 5e-5: ")
    assert "with 4.0x fewer optimizer steps" in out["answer"]


def test_a_small_deficit_with_many_seeds_and_examples_is_within_the_margin(db):
    """5 seeds each on 4,000 examples; EBS 256 gets 8 examples fewer right than EBS 64 in every seed (0.2
    points), the seeds spread by a tenth of a point: the bound is well inside 1 point."""
    labels = [i % 2 for i in range(4000)]
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, wobble in enumerate((0, 4, -4, 8, -8), start=1):
            add_run(store, 64, seed, right_on(labels, 3600 + wobble), labels, steps=16)
            add_run(store, 256, seed, right_on(labels, 3592 + wobble), labels, steps=4)
    out, by_label = candidates(db)
    bound = by_label["EBS 256"]["deficit"]
    assert bound["value"] == pytest.approx(0.002) and bound["seeds"] == [5, 5] and bound["examples"] == 4000
    assert 0.002 < bound["upper"] < 0.005
    assert by_label["EBS 256"]["as_good_as_best"] and out["pick"] == "EBS 256"
    assert "within 1 point of the best, EBS 64 (deficit 0.2, 95% bound 0." in out["answer"]


def test_a_three_point_deficit_with_two_seeds_is_not(db):
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, (best, other) in enumerate(((900, 870), (910, 880)), start=1):
            add_run(store, 64, seed, right_on(LABELS, best), LABELS, steps=16)
            add_run(store, 256, seed, right_on(LABELS, other), LABELS, steps=4)
    out, by_label = candidates(db)
    bound = by_label["EBS 256"]["deficit"]
    assert bound["value"] == pytest.approx(0.03) and bound["upper"] > 0.03
    assert out["pick"] == "EBS 64" and not by_label["EBS 256"]["as_good_as_best"]
    # A margin wide enough takes it, and the table shows which: its bound.
    assert candidates(db, "--margin", "0.2")[0]["pick"] == "EBS 256"
    assert any(line.startswith("EBS 256: within ") and "4.0x fewer optimizer steps" in line for line in out["bounds"])


def test_a_loss_is_judged_relative_to_the_best_on_seed_means(db):
    """Validation loss keeps no per-example losses: Welch's t on the seed means, as a share of the best's loss."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, right in ((1, 900), (2, 902)):
            add_run(store, 64, seed, right_on(LABELS, right), LABELS, steps=16)
            add_run(store, 256, seed, right_on(LABELS, right - 1), LABELS, steps=4)
    out, by_label = candidates(db, "--metric", "val_loss")
    bound = by_label["EBS 256"]["deficit"]
    assert bound["evidence"] == deficit.SEED_MEANS and bound["value"] == pytest.approx(0.001 / 0.099, rel=1e-3)
    assert out["margin"] == deficit.DEFAULT_LOSS_MARGIN


def test_too_small_to_show_says_what_would(db):
    """One seed each on 200 examples, half a point apart: no margin of 1 point can be shown, and the warning
    names the levers."""
    labels = LABELS[:200]
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 64, 1, right_on(labels, 180), labels, steps=16)
        add_run(store, 256, 1, right_on(labels, 179, start=5), labels, steps=4)
    out, _ = candidates(db)
    [warning] = [w for w in out["warnings"] if w.startswith("no candidate is shown within 1 point")]
    assert "a larger validation split (it has 200 examples)" in warning and "a wider --margin" in warning


def test_the_bound_is_the_known_formula_on_a_constructed_pair():
    """Two seeds a side, each pair of runs 10 examples apart on 1,000: the example level alone would give
    1.645·sqrt(0.01/1000); the seed level adds s²/2 per side, with Welch's df."""
    from scipy import stats as scipy_stats

    labels = LABELS
    best = [deficit.RunPredictions(labels, right_on(labels, 900 + w)) for w in (0, 10)]
    other = [deficit.RunPredictions(labels, right_on(labels, 890 + w)) for w in (0, 10)]
    bound = deficit.from_predictions(best, other, resamples=4000)
    assert bound.deficit == pytest.approx(0.01)
    var_seeds = 2 * np.var([0.90, 0.91], ddof=1) / 2
    assert bound.se_seeds == pytest.approx(math.sqrt(var_seeds))
    # Each run's misses are nested in the next one's, so the runs of a side share all their example noise but
    # the window each adds; the bound falls between the two levels' t and normal forms.
    low = bound.deficit + scipy_stats.norm.ppf(0.95) * math.sqrt(var_seeds)
    high = bound.deficit + scipy_stats.t.ppf(0.95, 2) * math.sqrt(var_seeds + bound.se_examples ** 2)
    assert low <= bound.upper <= high


def test_the_bound_covers_the_true_deficit_at_its_confidence():
    """Simulated candidates with seed noise and example noise both present (bench/deficit_coverage.py): the 95%
    upper bound lies above the true deficit in 93-97% of 300 simulations (3 seeds, 872 examples)."""
    from deficit_coverage import coverage

    found = coverage(seeds=3, examples=872, seed_sd=0.15, sims=300, resamples=500, plain=False)
    assert 0.93 <= found["coverage"] <= 0.97, found


@pytest.mark.parametrize("args, fragment", [
    (["--margin", "-0.01"], "--margin must be 0 or more, got -0.01"),
    (["--margin", "1"], "--margin 1 is 1 or more"),
    (["--margin", "nan"], "--margin must be 0 or more"),
    (["--alpha", "0.6"], "--alpha must be between 0 and 0.5"),
])
def test_bad_margin_is_one_line_exit_2_and_writes_nothing(db, args, fragment):
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 64, 1, right_on(LABELS, 900), LABELS)
    before = db.read_bytes()
    result = pick(db, *args, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before
    report = CliRunner().invoke(app, ["report", "--db", str(db), *args[:2]])
    if args[0] == "--margin":
        assert report.exit_code == 2 and fragment in report.stderr
    assert db.read_bytes() == before


def test_a_margin_that_is_not_a_number_is_one_line_and_exit_2(db):
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), "--margin", "one"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Invalid value for '--margin': Input should be a valid number" in result.stderr
    assert not db.exists()


def test_report_states_the_pick_and_every_bound(db):
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, right in ((1, 900), (2, 905)):
            add_run(store, 64, seed, right_on(LABELS, right), LABELS, steps=16)
            add_run(store, 256, seed, right_on(LABELS, right - 30), LABELS, steps=4)
    result = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "m: pick EBS 64 at lr 5e-5: the best on validation" in result.stdout
    assert "  EBS 256: within " in result.stdout and "of the best (95%), 4.0x fewer optimizer steps" in result.stdout
    wide = CliRunner().invoke(app, ["report", "--db", str(db), "--margin", "0.3"], env={"COLUMNS": "200"})
    assert "m: pick EBS 256 at lr 5e-5: within 30 points of the best" in wide.stdout

