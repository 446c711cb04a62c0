"""`accumbench pick-best` on databases built to a known answer: selection happens on validation even
when the test set disagrees, candidates shown within the margin of the best compete on training cost,
the reported statistics are the known ones, and one seed per cell gets its warning.
(The margin's own known answers and calibration: tests/test_margin.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accumbench import stats
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url

N = 200  # validation and test examples


def predictions(accuracy: float, offset: int) -> tuple[list[int], list[int]]:
    """Labels all 1; correct on a window of accuracy*N examples starting at `offset` (mod N), so
    that two candidates' errors overlap as much or as little as their offsets say."""
    right = round(accuracy * N)
    correct = {(offset + i) % N for i in range(right)}
    return [1] * N, [1 if i in correct else 0 for i in range(N)]


def add_run(store: Store, ebs: int, seed: int, val: float, test: float, seconds: float,
            val_offset: int = 0, test_offset: int = 0, val_loss: float | None = None,
            noise_scale: float | None = None, evals: tuple[tuple[int, float], ...] = (), steps: int = 10) -> int:
    config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42, epochs=1)
    run_id = store.create_run(**run_columns(config), num_test_samples=N, num_val_samples=N)
    noise = {} if noise_scale is None else dict(noise_scale=noise_scale, noise_trace=noise_scale / 2, noise_grad_sq=0.5,
                                                 noise_steps=steps)
    store.add_epoch(run_id, epoch=1, train_loss=0.3, train_accuracy=0.9, val_loss=val_loss if val_loss is not None else 1 - val,
                    val_accuracy=val, test_loss=1 - test, test_accuracy=test, optimizer_steps=steps, samples_seen=100,
                    epoch_seconds=seconds + 1, train_seconds=seconds, eval_seconds=1, samples_per_second=100 / seconds,
                    peak_memory_mb=100.0, **noise)
    store.add_evals(run_id, [dict(step=step, epoch=1, samples_seen=step * ebs, val_loss=1 - accuracy,
                                  val_accuracy=accuracy) for step, accuracy in evals])
    store.update_run(run_id, best_epoch=1)
    for split, accuracy, offset in (("validation", val, val_offset), ("test", test, test_offset)):
        labels, predicted = predictions(accuracy, offset)
        store.save_predictions(run_id, split, 1, f"{split}-42", labels, predicted)
    store.finish_run(run_id, FINISHED)
    return run_id


def pick(db: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["pick-best", "--db", str(db), *args], env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "runs.db"


def test_selection_is_on_validation_even_when_test_disagrees(db):
    """EBS 64 is clearly best on validation and worst on test; EBS 256 the reverse, and faster.
    Picking on test would say 256; picking on validation says 64."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, wobble in ((1, 0.0), (2, 0.01), (3, -0.01)):
            add_run(store, 64, seed, val=0.90 + wobble, test=0.70, seconds=100)
            add_run(store, 256, seed, val=0.70 + wobble, test=0.95, seconds=30, val_offset=100, test_offset=5)
    out = json.loads(pick(db, "--json").stdout)["picks"][0]
    assert out["pick"] == "EBS 64" and out["best_on_validation"] == "EBS 64"
    assert out["reconciled"] == []  # no noise scale or critical batch size points elsewhere
    # The answer names the cheaper EBS it did not take, and why: its deficit's bound is far beyond the margin.
    assert out["answer"].startswith("EBS 64 at lr 5e-5: the best on validation (validation accuracy 0.9000); "
                                    "EBS 256 costs no more but is not shown within 1 point of it (deficit 20.0, "
                                    "95% bound ")
    assert out["answer"].endswith("; 3 seeds)")
    assert pick(db).stdout.startswith("m: pick EBS 64 at lr 5e-5: the best on validation")  # the answer first
    assert out["test_accuracy"] == pytest.approx(0.70)  # reported, never used to choose
    other = next(c for c in out["candidates"] if c["label"] == "EBS 256")
    assert other["as_good_as_best"] is False and other["deficit"]["evidence"] == "seeds and examples"
    assert other["deficit"]["value"] == pytest.approx(0.20) and other["deficit"]["upper"] > 0.20
    # The test McNemar is there for the record: 256 is better on test, and that changes nothing.
    b, c = other["mcnemar_test_discordant"]
    assert c > b and other["mcnemar_test_p"] == pytest.approx(stats.mcnemar_exact(b, c))


def test_the_cheapest_shown_within_the_margin_wins_and_a_tie_goes_to_the_larger_ebs(db):
    """256 and 1024 miss one validation example that 64 gets right (a 0.5-point deficit, every seed alike): within
    a 2-point margin, not within 1 point (the bound: 0.5 + 1.645·0.5 on 200 examples). 16 is 30 points behind."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed in (1, 2, 3):
            add_run(store, 64, seed, val=0.90, test=0.90, seconds=300)
            add_run(store, 256, seed, val=0.895, test=0.89, seconds=100)
            add_run(store, 1024, seed, val=0.895, test=0.88, seconds=101)  # the same counts as 256: a tie
            add_run(store, 16, seed, val=0.60, test=0.60, seconds=10)  # fastest, but clearly worse
    result = pick(db, "--margin", "0.02")
    assert "pick: EBS 1024" in result.stdout
    assert result.stdout.startswith("m: pick EBS 1024 at lr 5e-5: within 2 points of the best, EBS 64 (deficit 0.5, "
                                    "95% bound 1.3; 3 seeds)")
    assert "16 is not shown within 2 points (deficit 30.0" in result.stdout
    out = json.loads(pick(db, "--json", "--margin", "0.02").stdout)["picks"][0]
    assert out["pick"] == "EBS 1024" and out["best_on_validation"] == "EBS 64" and out["margin"] == 0.02
    assert {c["label"]: c["as_good_as_best"] for c in out["candidates"]} == {
        "EBS 64": True, "EBS 256": True, "EBS 1024": True, "EBS 16": False}
    # Its test accuracy with a 95% interval: binomial noise on 200 examples plus the spread over seeds.
    mean, low, high = stats.mean_accuracy_ci([0.88, 0.88, 0.88], N)
    assert out["test_accuracy"] == pytest.approx(mean) and out["test_accuracy_ci95"] == pytest.approx([low, high])
    assert high - low == pytest.approx(2 * 1.959964 * stats.accuracy_se(0.88, N), rel=1e-5)
    # The default margin, one point, is below their bound: the best stands, and the sentence says why.
    default = json.loads(pick(db, "--json").stdout)["picks"][0]
    assert default["pick"] == "EBS 64" and default["margin"] == 0.01
    assert "EBS 1024 costs no more but is not shown within 1 point of it (deficit 0.5, 95% bound 1.3" in default["answer"]


def test_one_seed_is_bounded_by_the_examples_alone_and_warns(db):
    """One seed each, 256's errors nested in 64's (4 of 200 examples apart): a 2-point deficit whose bound sees
    the validation examples only, 2 + 1.645·sqrt(0.02·0.98/200) = 3.6 points."""
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 64, 1, val=0.90, test=0.90, seconds=100)
        add_run(store, 256, 1, val=0.88, test=0.91, seconds=50, val_offset=0)
    out = json.loads(pick(db, "--json").stdout)["picks"][0]
    other = next(c for c in out["candidates"] if c["label"] == "EBS 256")
    assert other["deficit"]["evidence"].startswith("examples (one seed each")
    assert other["deficit"]["value"] == pytest.approx(0.02)
    assert other["deficit"]["upper"] == pytest.approx(0.02 + 1.645 * (0.02 * 0.98 / N) ** 0.5, abs=0.002)
    assert out["pick"] == "EBS 64" and not other["as_good_as_best"]
    assert any("seed-to-seed variation was not measured" in w for w in out["warnings"])
    wide = json.loads(pick(db, "--json", "--margin", "0.05").stdout)["picks"][0]
    assert wide["pick"] == "EBS 256"  # within 5 points: shown, and half the steps
    assert "(deficit 2.0, 95% bound 3.6; one seed each: seed-to-seed variation not measured)" in wide["answer"]
    assert "warning: one seed per cell" in pick(db).stdout


def test_val_loss_metric_selects_the_lowest_loss(db):
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, wobble in ((1, 0.0), (2, 0.01), (3, -0.01)):
            add_run(store, 64, seed, val=0.90, test=0.9, seconds=100, val_loss=0.50 + wobble)
            add_run(store, 256, seed, val=0.85, test=0.9, seconds=100, val_loss=0.30 + wobble)
    assert json.loads(pick(db, "--json").stdout)["picks"][0]["best_on_validation"] == "EBS 64"
    out = json.loads(pick(db, "--json", "--metric", "val_loss").stdout)["picks"][0]
    assert out["best_on_validation"] == "EBS 256" and out["metric"] == "val_loss"


@pytest.mark.parametrize("args, fragment", [
    (["--metric", "test_accuracy"], "unknown --metric 'test_accuracy'; choose one of: val_accuracy, val_loss"),
    (["--by", "seed"], "unknown --by 'seed'"),
    (["--alpha", "1.5"], "--alpha must be between 0 and 0.5"),
])
def test_bad_pick_input_is_one_line_and_exit_2(db, args, fragment):
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 64, 1, val=0.9, test=0.9, seconds=1)
    result = pick(db, *args, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- beside the empirical pick: the noise scale and the critical batch size ---------------------------


def test_noise_scale_and_critical_batch_size_beside_the_pick(db):
    """Steps to validation accuracy 0.9 follow S(B) = 100·(1 + 64/B) exactly: 500, 200 and 125 steps at
    EBS 16, 64 and 256, so B_crit = 64; the measured B_simple of epoch 1 is 50, 60 and 400 (median 60:
    one run far off, as a large EBS's first epoch can be, does not move it)."""
    with Store.open(resolve_db_url(str(db))) as store:
        for ebs, noise in ((16, 50.0), (64, 60.0), (256, 400.0)):
            s_of_b = 100 * (1 + 64 / ebs)
            # Evaluations at S/2 and S (--eval-every), then the epoch's end at 2S.
            add_run(store, ebs, 1, val=0.9, test=0.9, seconds=100, noise_scale=noise,
                    evals=((round(s_of_b / 2), 0.5), (round(s_of_b), 0.9)), steps=round(2 * s_of_b))
    out = json.loads(pick(db, "--json", "--target", "0.9").stdout)["picks"][0]
    noise = out["noise_scale"]
    assert (noise["runs"], noise["epoch_1"], noise["epoch_1_range"], noise["nearest_tried"]) == (3, 60.0, [50.0, 400.0], 64)
    assert "B_simple ≈ 60 in epoch 1 (median of 3 runs, 50–400)" in noise["text"]
    assert "EBS 64 is the tried size nearest it" in noise["text"]
    assert "(measured on length-sorted micro-batches: if anything, too high)" in noise["text"]  # --group-by-length
    assert noise["text"].endswith("A hint for the EBS range of the next sweep, not the answer")  # what to do with it
    [critical] = out["critical_batch_size"]
    assert [p["steps"] for p in critical["steps_to_target"]] == pytest.approx([500, 200, 125])
    assert critical["b_crit"] == pytest.approx(64) and critical["s_min"] == pytest.approx(100)
    assert critical["e_min"] == pytest.approx(6400) and critical["nearest_tried"] == 64
    # Every EBS ties on validation and takes as long, so the tie goes to the largest, 256; both signals point
    # to 64, and each "another signal" line says what that means, what validation found at 64, and what to do.
    assert out["pick"] == "EBS 256"
    verdict = "on validation EBS 64 was shown within 1 point of the best too, and the pick costs less. Train at the pick"
    assert out["reconciled"] == [
        f"the noise scale (B_simple ≈ 60) suggests EBS 64 (smaller batches would make better use of each sample), "
        f"but the pick is EBS 256: {verdict}",
        f"the critical batch size (B_crit ≈ 64) suggests EBS 64 (smaller batches would make better use of each "
        f"sample), but the pick is EBS 256: {verdict}"]
    text = pick(db, "--target", "0.9").stdout
    assert "B_crit ≈ 64; EBS 64 is the tried size nearest it" in text
    assert "another signal: the noise scale (B_simple ≈ 60) suggests EBS 64" in text
    assert "noise scale: B_simple ≈ 60" in text

    # The default target is 99% of the best validation accuracy seen (0.9 -> 0.891), interpolated
    # between evaluations: S/2 + (0.391 / 0.4)·S/2 = 0.98875·S, so B_crit stays 64.
    default = json.loads(pick(db, "--json").stdout)["picks"][0]["critical_batch_size"][0]
    assert default["target"] == pytest.approx(0.891) and "99% of the best seen, 0.9000" in default["target_rule"]
    assert default["b_crit"] == pytest.approx(64, rel=1e-3)


def test_without_a_measurement_pick_best_says_why(db):
    """EBS 8 at micro-batch 8 is k = 1: no B_simple, and the pick says it could not be measured, and why."""
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 8, 1, val=0.9, test=0.9, seconds=100)
        add_run(store, 16, 1, val=0.9, test=0.9, seconds=90)
    text = pick(db).stdout
    assert "noise scale: not measured" in text and "k = 1: one micro-batch per optimizer step" in text
    assert "not recorded" in text  # EBS 16 has k = 2 but no measurement: a run from before it was measured
    assert "never reached" not in text and "critical batch size" in text  # both reach 0.891 at the epoch end


def test_a_target_out_of_range_is_bad_input(db):
    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 8, 1, val=0.9, test=0.9, seconds=100)
    before = db.read_bytes()
    result = pick(db, "--target", "90", code=2)
    assert "--target is a validation accuracy in (0, 1], got 90;" in result.stderr
    assert db.read_bytes() == before


def test_another_signal_says_what_validation_found_at_the_ebs_it_points_to_and_what_to_do():
    from types import SimpleNamespace

    from accumbench.analysis.answer import reconcile
    from accumbench.deficit import DeficitBound, Margin

    def candidate(ebs, as_good=True, deficit=None):
        return SimpleNamespace(effective_batch_size=ebs, as_good=as_good, deficit=deficit)

    behind = DeficitBound(0.03, 0.045, 0.015, 0.95, "seeds and examples", (3, 3), 200)
    best, picked, worse = candidate(64), candidate(256), candidate(16, as_good=False, deficit=behind)
    noise = SimpleNamespace(first=70.0, nearest=64)
    answer = SimpleNamespace(chosen=picked, best=best, candidates=[best, picked, worse], noise=noise, critical=[],
                             evidence=Margin(), metric="val_accuracy")
    assert reconcile(answer) == [
        "the noise scale (B_simple ≈ 70) suggests EBS 64 (smaller batches would make better use of each sample), but "
        "the pick is EBS 256: EBS 64 was the best on validation, and the pick is shown within 1 point of it at less "
        "cost. Train at the pick"]
    answer.noise = SimpleNamespace(first=12.0, nearest=16)
    assert reconcile(answer)[0].endswith("on validation EBS 16 was not shown within 1 point of the best (deficit 3.0, "
                                         "95% bound 4.5; 3 seeds). Train at the pick; to test EBS 16, run more "
                                         "seeds")
    answer.noise = SimpleNamespace(first=300.0, nearest=256)  # it agrees with the pick: nothing to say
    assert reconcile(answer) == []


def _equal_on_validation(db: Path) -> tuple:
    """EBS 64, 256 and 1024 shown within a point of each other (3 seeds each, half a point apart, the same
    predictions per seed: a bound of 0 + t(0.95, 4)·sqrt(2·0.005²/3) = 0.9 points), trained on the same 100
    samples in 16, 4 and 1 optimizer steps: by counts, 1024 is the cheapest."""
    from accumbench.analysis.runs import load_predictions, load_runs

    with Store.open(resolve_db_url(str(db))) as store:
        for seed, wobble in ((1, 0.0), (2, 0.005), (3, -0.005)):
            for ebs, steps in ((64, 16), (256, 4), (1024, 1)):
                add_run(store, ebs, seed, val=0.90 + wobble, test=0.90, seconds=100, steps=steps)
    with Store.open_readonly(resolve_db_url(str(db))) as store:
        data = load_runs(store)
        return data, load_predictions(store, data)


def _with_timings(data, timings: dict[int, list[list[float]]]):
    """The same runs with their seconds per sample replaced: per EBS, one list of per-epoch values per seed."""
    runs = data.runs.copy()
    per_run = [timings[ebs][seed - 1] for ebs, seed in zip(runs["effective_batch_size"], runs["seed"])]
    runs["seconds_per_sample"] = [tuple(values) for values in per_run]
    runs["train_seconds"] = [sum(values) * 100 for values in per_run]
    return type(data)(runs, data.epochs, data.evals, data.diverged)


def test_the_pick_does_not_move_when_timings_move_within_their_noise(db):
    import random

    from accumbench.analysis.pick import pick_best

    data, predictions = _equal_on_validation(db)
    [first] = pick_best(data, predictions)
    assert first.chosen.label == "EBS 1024" and "the same on every machine" in first.justification
    rng = random.Random(0)
    for _ in range(50):  # a loaded machine: every epoch anywhere from 0.5x to 2.5x a nominal second per sample
        timings = {ebs: [[rng.uniform(0.5, 2.5) for _ in range(2)] for _ in range(3)] for ebs in (64, 256, 1024)}
        [again] = pick_best(_with_timings(data, timings), predictions)
        assert again.chosen.label == "EBS 1024" and again.justification == first.justification


def test_measured_seconds_decide_only_far_beyond_their_spread(db):
    from types import SimpleNamespace

    from accumbench.analysis.cost import cheapest
    from accumbench.analysis.pick import pick_best

    data, predictions = _equal_on_validation(db)
    # EBS 64 trains 3x faster per sample, its 3 runs within 1% of each other: far beyond the noise.
    def runs(*means):
        return [[m, m] for m in means]  # two epochs per run
    steady = {64: runs(0.010, 0.0101, 0.0099), 256: runs(0.030, 0.0303, 0.0297), 1024: runs(0.030, 0.0301, 0.0299)}
    [measured] = pick_best(_with_timings(data, steady), predictions)
    assert measured.chosen.label == "EBS 64"
    assert "64 is the cheapest of the three as measured: 3.00x faster per sample than 1024, far beyond their " \
           "run-to-run spread (±1%)" in measured.justification
    # The same means with runs 60% apart: not far beyond that, so the counts decide again.
    noisy = {64: runs(0.004, 0.016, 0.010), 256: runs(0.030, 0.030, 0.030), 1024: runs(0.012, 0.048, 0.030)}
    [counted] = pick_best(_with_timings(data, noisy), predictions)
    assert counted.chosen.label == "EBS 1024"
    # One run each (one seed): its epochs agree, but they share one moment's load; a demo trained beside
    # another job measured 2.7x between two such runs. No run-to-run spread, so the counts decide.
    small, large = (SimpleNamespace(label=f"EBS {ebs}", effective_batch_size=ebs, samples=100, steps=100 / ebs,
                                    seconds_per_sample=[[seconds, seconds * 1.01]])
                    for ebs, seconds in ((64, 0.01), (1024, 0.027)))
    assert cheapest([small, large]).chosen is large


def test_the_answer_in_one_sentence_says_what_the_pick_saves():
    from types import SimpleNamespace

    import pandas as pd

    from accumbench.analysis.answer import sentence
    from accumbench.deficit import DeficitBound, Margin

    def candidate(ebs, samples, steps, deficit=None, lr=1e-4):
        return SimpleNamespace(label=f"EBS {ebs}", effective_batch_size=ebs, runs=pd.DataFrame({"lr": [lr]}),
                               samples=samples, steps=steps, deficit=deficit, as_good=True, metric_mean=0.9)

    close = DeficitBound(0.001, 0.006, -0.004, 0.95, "seeds and examples", (3, 3), 872)
    best, cheap = candidate(64, 1000, 16), candidate(256, 1000, 4, deficit=close, lr=2e-4)
    answer = SimpleNamespace(chosen=cheap, best=best, candidates=[best, cheap], metric="val_accuracy", cost=None,
                             evidence=Margin())
    assert sentence(answer) == ("EBS 256 at lr 2e-4: within 1 point of the best, EBS 64 (deficit 0.1, 95% bound 0.6; "
                                "3 seeds), with 4.0x fewer optimizer steps")
    cheap.samples = 250  # --budget steps: the same steps on a quarter of the samples
    assert sentence(answer).endswith("with 4.0x fewer samples")
    answer.cost = SimpleNamespace(measured_speedup=2.6)
    assert sentence(answer).endswith("and 2.6x faster per sample to train, as measured")
    answer.chosen = best
    assert sentence(answer) == ("EBS 64 at lr 1e-4: the best on validation (validation accuracy 0.9000), and the "
                                "cheapest of the 2 shown within 1 point of it")
    # Not shown within the margin: the best stands, and the sentence says why the cheaper cell was not taken.
    cheap.as_good, cheap.samples = False, 1000
    cheap.deficit = DeficitBound(0.003, 0.021, -0.015, 0.95, "seeds and examples", (2, 2), 872)
    assert sentence(answer) == ("EBS 64 at lr 1e-4: the best on validation (validation accuracy 0.9000); EBS 256 has "
                                "4.0x fewer optimizer steps but is not shown within 1 point of it (deficit 0.3, "
                                "95% bound 2.1; 2 seeds)")


def test_the_headline_draws_the_deficits_pick_best_decided_on(db):
    """Its data, not its pixels: one point per EBS with the deficit to the best and its bounds as pick-best
    computed them, the margin, the pick marked, and every EBS shown within the margin as good."""
    from accumbench.analysis.headline import headline
    from accumbench.analysis.pick import pick_best

    data, predictions = _equal_on_validation(db)
    [answer] = pick_best(data, predictions)
    out = json.loads(pick(db, "--json").stdout)["picks"][0]
    shown = headline(answer)
    assert [p.effective_batch_size for p in shown.points] == [64, 256, 1024]
    assert shown.margin == 0.01 and shown.margin_words == "1 point" and shown.confidence == 0.95
    bounds = {c["effective_batch_size"]: c["deficit"] for c in out["candidates"]}
    for point in shown.points:
        found = bounds[point.effective_batch_size]
        expected = (0.0, 0.0, 0.0) if found is None else (found["value"], found["lower"], found["upper"])
        assert (point.deficit, point.low, point.high) == pytest.approx(expected)
        assert point.seeds == 3 and point.as_good
    assert [p.effective_batch_size for p in shown.points if p.picked] == [out["effective_batch_size"]] == [1024]
    assert [p.optimizer_steps for p in shown.points] == [16, 4, 1]


@pytest.mark.parametrize("metric, drawn_margin, unit", [("val_accuracy", 1.0, "points"),
                                                       ("val_loss", 2.0, "% of the best's loss")])
def test_the_headline_figure_draws_deficits_in_its_axis_unit(db, metric, drawn_margin, unit):
    """One point of accuracy is drawn at 1 on a 'points' axis, and the loss's 2% margin at 2 on a '%' axis (it
    was once drawn at 0.02 there)."""
    pytest.importorskip("matplotlib")
    from accumbench.analysis.headline import headline
    from accumbench.analysis.pick import pick_best
    from accumbench.analysis.runs import load_predictions, load_runs
    from accumbench.present.plots import _headline_figure

    _equal_on_validation(db)
    with Store.open_readonly(resolve_db_url(str(db))) as store:
        data = load_runs(store, metric=metric)
        predictions = load_predictions(store, data)
    [answer] = pick_best(data, predictions, metric=metric)
    shown = headline(answer)
    top = _headline_figure(shown.model, [shown]).axes[0]
    [margin_line] = [line for line in top.get_lines() if line.get_linestyle() == "--"]
    assert list(margin_line.get_ydata()) == pytest.approx([drawn_margin, drawn_margin])
    assert top.get_ylabel() == f"deficit to the best ({unit})"
    picked = [p for p in shown.points if p.picked]
    [star] = [line for line in top.get_lines() if line.get_marker() == "*"]
    assert list(star.get_ydata()) == pytest.approx([100 * p.deficit for p in picked])


def test_with_one_seed_the_headline_bound_is_the_examples_alone(db):
    from accumbench.analysis.headline import headline
    from accumbench.analysis.pick import pick_best
    from accumbench.analysis.runs import load_predictions, load_runs

    with Store.open(resolve_db_url(str(db))) as store:
        add_run(store, 64, 1, val=0.90, test=0.90, seconds=100)
        add_run(store, 256, 1, val=0.80, test=0.91, seconds=50, val_offset=100)
    with Store.open_readonly(resolve_db_url(str(db))) as store:
        data = load_runs(store)
        [answer] = pick_best(data, load_predictions(store, data))
    points = {p.effective_batch_size: p for p in headline(answer).points}
    assert points[64].picked and points[64].deficit == 0.0 and not points[256].as_good
    assert points[256].deficit == pytest.approx(0.10) and points[256].high > points[256].deficit > points[256].low


def test_measured_seconds_never_compare_runs_of_different_sweeps():
    """Two sweeps trained at other times (one beside a test suite) see loads no spread within either saw:
    only counts compare them."""
    from types import SimpleNamespace

    import pandas as pd

    from accumbench.analysis.cost import cheapest

    def candidate(ebs, seconds, sweep):
        return SimpleNamespace(label=f"EBS {ebs}", effective_batch_size=ebs, samples=100, steps=100 / ebs,
                               seconds_per_sample=[[seconds, seconds], [seconds * 1.01, seconds * 1.01]],
                               runs=pd.DataFrame({"sweep_id": [sweep, sweep]}))

    quiet_small, loaded_large = candidate(16, 0.01, sweep=1), candidate(256, 0.019, sweep=2)
    assert cheapest([quiet_small, loaded_large]).chosen is loaded_large  # fewest steps, by counts
    together_large = candidate(256, 0.019, sweep=1)
    assert cheapest([quiet_small, together_large]).chosen is quiet_small  # one sweep: its clock may decide
