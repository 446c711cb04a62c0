"""The tuned protocol: every EBS at its own best learning rate, then EBS against EBS.

Known answers on run stores built through the store API (the nested pick against the pooled one, the
edge-of-grid warning, the lr scaling exponent), the helpers' arithmetic, and a tiny-model sweep over
`--lrs` end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench import stats
from accumbench.analysis.tuning import next_lr, parabola_vertex
from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FAILED, FINISHED, Store, resolve_db_url

N = 200  # validation and test examples


def add_run(store: Store, ebs: int, lr: float, seed: int, val: float, seconds: float = 100.0, test: float = 0.8,
            lr_scaling: str = "none", diverged: bool = False) -> int:
    """A finished run (or one that diverged in its first epoch) of model 'm' at (EBS, lr, seed)."""
    config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42, epochs=1,
                       lr=lr, lr_scaling=lr_scaling)
    run_id = store.create_run(**run_columns(config), num_test_samples=N, num_val_samples=N)
    if diverged:
        store.finish_run(run_id, FAILED, "diverged at step 3")
        return run_id
    store.add_epoch(run_id, epoch=1, train_loss=0.3, train_accuracy=0.9, val_loss=1 - val, val_accuracy=val,
                    test_loss=1 - test, test_accuracy=test, optimizer_steps=10, samples_seen=100,
                    epoch_seconds=seconds + 1, train_seconds=seconds, eval_seconds=1, samples_per_second=100 / seconds,
                    peak_memory_mb=100.0)
    store.update_run(run_id, best_epoch=1)
    labels, right = [1] * N, round(val * N)
    store.save_predictions(run_id, "validation", 1, "validation-42", labels, [1] * right + [0] * (N - right))
    right = round(test * N)
    store.save_predictions(run_id, "test", 1, "test-42", labels, [1] * right + [0] * (N - right))
    store.finish_run(run_id, FINISHED)
    return run_id


def cli(db: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, [*args, "--db", str(db)], env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def pick_json(db: Path, *args: str) -> dict:
    return json.loads(cli(db, "pick-best", "--json", *args).stdout)["picks"][0]


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "runs.db"


# --- the nested pick is not the pooled pick ----------------------------------------------------------


def biased_store(db: Path) -> None:
    """EBS 16's best lr (1e-3) is the best cell (0.900). EBS 32 at lr 3e-4 gets the very same validation examples
    right (0.8995 recorded, 180 of 200 like EBS 16's): shown within a point of it, and the cheapest cell. EBS 32
    at lr 1e-3 has the higher mean (0.8998), so tuning picks it as EBS 32's lr, but its seeds spread ± 5
    points: nothing shows it within a point.
    Pooled, EBS 32 at lr 3e-4 is the pick. Tuned, EBS 32 competes at lr 1e-3, is not shown as good, and
    EBS 16 is the pick: the lr choice, made on means, changes the EBS answer."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, small, large in ((1, 0.0, 0.0), (2, 0.001, 0.05), (3, -0.001, -0.05)):
            add_run(store, 16, 1e-3, seed, val=0.90 + small, seconds=100)
            add_run(store, 16, 3e-4, seed, val=0.85 + small, seconds=100)
            add_run(store, 32, 1e-3, seed, val=0.8998 + large, seconds=60)
            add_run(store, 32, 3e-4, seed, val=0.8995, seconds=50)


def test_the_nested_pick_differs_from_the_pooled_pick(db):
    biased_store(db)
    pooled = pick_json(db, "--protocol", "pooled")
    assert pooled["protocol"] == "pooled" and pooled["pick"] == "EBS 32 lr 3e-4"
    assert pooled["best_on_validation"] == "EBS 16 lr 1e-3"

    tuned = pick_json(db)  # tuned is the default: every EBS has two lrs
    assert tuned["protocol"] == "tuned" and tuned["pick"] == "EBS 16" and tuned["lr"] == pytest.approx(1e-3)
    assert [(b["effective_batch_size"], b["lr"]) for b in tuned["best_lr_per_ebs"]] == [(16, 1e-3), (32, 1e-3)]
    [ebs32] = [c for c in tuned["candidates"] if c["effective_batch_size"] == 32]
    # 180, 190 and 170 examples right against 180 in every seed: no deficit on average, a 10-point spread.
    assert ebs32["deficit"]["value"] == pytest.approx(0.0) and ebs32["deficit"]["upper"] > 0.05
    assert not ebs32["as_good_as_best"]
    assert len(tuned["candidates"]) == 2  # stage 2 sees one cell per EBS
    assert tuned["justification"].startswith("each EBS at its best lr on validation, then EBS against EBS")

    text = cli(db, "pick-best").stdout
    assert "pick: EBS 16" in text and "tuned protocol" in text and "stage 1: the best lr of each EBS" in text


def test_compare_protocols_shows_that_the_answer_changes(db):
    biased_store(db)
    out = json.loads(cli(db, "pick-best", "--compare-protocols", "--json").stdout)["comparisons"][0]
    rows = {row["name"]: (row["protocol"], row["pick"], row["effective_batch_size"]) for row in out["protocols"]}
    assert rows == {
        "single lr 3e-4": ("single lr", "EBS 32", 32),  # 0.8995 is the best of 0.8995 and 0.85
        "single lr 1e-3": ("single lr", "EBS 16", 16),  # 0.8998 ± 0.05 is not shown within a point of 0.90
        "pooled": ("pooled", "EBS 32 lr 3e-4", 32),
        "tuned": ("tuned", "EBS 16", 16),
    }
    assert out["answer_changes"] is True and out["effective_batch_sizes_picked"] == [16, 32]
    text = cli(db, "pick-best", "--compare-protocols").stdout
    assert "the EBS picked depends on the protocol" in text
    assert "EBS 16 under single lr 1e-3, tuned; EBS 32 under single lr 3e-4, pooled" in text
    assert "tuned: each EBS at its best lr on validation, then EBS against EBS" in text


def test_one_lr_per_ebs_stays_pooled_and_compare_says_so(db):
    with Store.open(resolve_db_url(str(db))) as store:
        for seed in (1, 2):
            add_run(store, 16, 1e-4, seed, val=0.80 + seed / 100)
            add_run(store, 32, 1e-4, seed, val=0.82 + seed / 100, seconds=50)
    out = pick_json(db)
    assert out["protocol"] == "pooled" and out["best_lr_per_ebs"] == [] and out["pick"] == "EBS 32"
    comparison = json.loads(cli(db, "pick-best", "--compare-protocols", "--json").stdout)["comparisons"][0]
    assert [row["name"] for row in comparison["protocols"]] == ["single lr 1e-4"]
    assert comparison["answer_changes"] is False and comparison["text"] == "every protocol picks EBS 32"
    # Forced, the tuned protocol gives the same answer: there is no lr to choose.
    assert pick_json(db, "--protocol", "tuned")["pick"] == "EBS 32"


def test_scaling_rules_are_protocols_of_their_own(db):
    """sqrt scaling from 1e-4 at EBS 64 trains EBS 16 at 5e-5 and EBS 256 at 2e-4; beside it the plain
    1e-4 at every EBS. Each is a protocol in the comparison, and tuned takes the better rate per EBS."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed in (1, 2, 3):
            wobble = (seed - 2) / 1000
            add_run(store, 16, 1e-4, seed, val=0.80 + wobble, seconds=100)
            add_run(store, 256, 1e-4, seed, val=0.70 + wobble, seconds=30)
            add_run(store, 16, 1e-4, seed, val=0.83 + wobble, seconds=100, lr_scaling="sqrt")  # lr 5e-5
            add_run(store, 256, 1e-4, seed, val=0.75 + wobble, seconds=30, lr_scaling="sqrt")  # lr 2e-4
    comparison = json.loads(cli(db, "pick-best", "--compare-protocols", "--json").stdout)["comparisons"][0]
    names = [row["name"] for row in comparison["protocols"]]
    assert names == ["single lr 1e-4", "sqrt scaling of 1e-4 at EBS 64", "pooled", "tuned"]
    tuned = pick_json(db)
    assert [(b["effective_batch_size"], b["lr"]) for b in tuned["best_lr_per_ebs"]] == [
        (16, pytest.approx(5e-5)), (256, pytest.approx(2e-4))]


# --- the edge of the grid ------------------------------------------------------------------------------


def test_the_edge_warning_appears_exactly_at_the_grids_ends(db):
    """lrs 1e-5, 3e-5, 1e-4 at three EBS: the best is the smallest at EBS 16, inside at EBS 64, the
    largest at EBS 256. Only the two ends warn, each naming the next rate one grid step out."""
    best = {16: 1e-5, 64: 3e-5, 256: 1e-4}
    with Store.open(resolve_db_url(str(db))) as store:
        for ebs, top in best.items():
            for lr in (1e-5, 3e-5, 1e-4):
                for seed in (1, 2):
                    add_run(store, ebs, lr, seed, val=(0.9 if lr == top else 0.8) + seed / 1000)
    out = pick_json(db)
    edges = {b["effective_batch_size"]: (b["lr"], b["edge"], b["suggested_lr"]) for b in out["best_lr_per_ebs"]}
    assert edges == {16: (1e-5, "smallest", 3e-6), 64: (3e-5, None, None), 256: (1e-4, "largest", 3e-4)}
    assert [w for w in out["warnings"] if "tried" in w] == [
        "EBS 16: best lr 1e-5 is the smallest tried; add 3e-6", "EBS 256: best lr 1e-4 is the largest tried; add 3e-4"]
    [fit] = out["lr_scaling_fit"]
    assert fit["alpha"] is None and fit["at_edge"] == [16, 256]
    assert "not fitted: needs 3 EBS whose best lr lies inside the grid, has 1" in fit["text"]
    text = cli(db, "pick-best").stdout
    assert "warning: EBS 256: best lr 1e-4 is the largest tried; add 3e-4" in text
    assert "EBS 64: best lr" not in text


def test_a_diverged_larger_lr_bounds_the_grid(db):
    """At EBS 64 the best finished lr is the largest that finished, but 1e-3 was tried and diverged: the
    optimum is bracketed, so no warning asks to try a larger rate."""
    with Store.open(resolve_db_url(str(db))) as store:
        for seed in (1, 2):
            add_run(store, 64, 1e-4, seed, val=0.80)
            add_run(store, 64, 3e-4, seed, val=0.85)
            add_run(store, 64, 1e-3, seed, val=0.0, diverged=True)
            add_run(store, 16, 1e-4, seed, val=0.80)
    [ebs16, ebs64] = pick_json(db)["best_lr_per_ebs"]
    assert ebs64["lr"] == pytest.approx(3e-4) and ebs64["edge"] is None and ebs64["warning"] is None
    assert [(t["lr"], t["seeds"], t["diverged"]) for t in ebs64["lrs_tried"]] == [
        (1e-4, 2, 0), (3e-4, 2, 0), (1e-3, 0, 2)]
    assert not ebs64["refined"]  # a diverged neighbour has no metric to fit a parabola through
    grid = json.loads(cli(db, "report", "--format", "json").stdout)["lr_grids"][0]
    cells = {(r["base_lr"], c["effective_batch_size"]): c for r in grid["rows"] for c in r["cells"]}
    assert cells[(1e-3, 64)]["diverged"] and cells[(3e-4, 64)]["best"] and not cells[(1e-4, 64)]["best"]


# --- the lr scaling exponent -----------------------------------------------------------------------------


def test_alpha_is_recovered_from_a_known_scaling_law(db):
    """lr*(EBS) = 1e-4 · (EBS/64)^0.5 · e^noise (noise sd 0.1 in log lr), and validation accuracy a
    parabola in log lr around it with seed noise. The refined best lrs must give alpha = 0.5 ± 0.05."""
    rng = random.Random(7)
    grid = [1e-5 * 2 ** i for i in range(9)]  # 1e-5 .. 2.56e-3, factor 2
    with Store.open(resolve_db_url(str(db))) as store:
        for ebs in (16, 32, 64, 128, 256, 512, 1024):
            optimum = 1e-4 * (ebs / 64) ** 0.5 * math.exp(rng.gauss(0, 0.1))
            for lr in grid:
                for seed in (1, 2):
                    val = 0.9 - 0.02 * math.log(lr / optimum) ** 2 + rng.gauss(0, 0.001)
                    add_run(store, ebs, lr, seed, val=val)
    out = pick_json(db)
    assert all(b["edge"] is None and b["refined"] for b in out["best_lr_per_ebs"])
    [fit] = out["lr_scaling_fit"]
    assert fit["alpha"] == pytest.approx(0.5, abs=0.05)
    low, high = fit["alpha_ci95"]
    assert low < 0.5 < high and high - low < 0.3
    assert len(fit["points"]) == 7
    assert f"your data: lr ∝ EBS^{fit['alpha']:.2f}" in fit["text"] and "sqrt predicts 0.5, linear 1" in fit["text"]
    assert "lr scaling: your data: lr ∝ EBS^" in cli(db, "pick-best").stdout


def test_parabola_vertex_next_lr_and_the_line_fit_known_answers():
    # y = -(x - 0.3)^2 through x = -1, 0, 1: the vertex is 0.3.
    assert parabola_vertex(-1, -1.69, 0, -0.09, 1, -0.49) == pytest.approx(0.3)
    assert parabola_vertex(0, 1.0, 1, 1.0, 2, 1.0) == 1  # flat: no vertex, the middle point stays
    assert parabola_vertex(0, 0.0, 1, 1.0, 2, 1.0) == pytest.approx(1.5)  # a tie with the neighbour: between
    assert next_lr(1e-4, 3e-5) == pytest.approx(3e-4) and next_lr(1e-5, 3e-5) == pytest.approx(3e-6)
    assert next_lr(3e-4, 1e-4) == pytest.approx(1e-3) and next_lr(2e-4, 1e-4) == pytest.approx(5e-4)
    assert next_lr(1.1e-4, 1e-4) == pytest.approx(1.2e-4)  # a fine grid keeps its step
    fit = stats.fit_line([0, 1, 2, 3], [1, 3, 5, 7])
    assert (fit.slope, fit.intercept, fit.slope_se) == pytest.approx((2.0, 1.0, 0.0))
    # Residuals +-0.1 around y = 2x: slope se = sqrt((0.04 / 2) / 5) on x = 0..3, t(0.975, 2) = 4.302653.
    fit = stats.fit_line([0, 1, 2, 3], [0.1, 1.9, 4.1, 5.9])
    assert fit.slope == pytest.approx(1.96) and fit.df == 2
    se = math.sqrt(sum(r * r for r in (0.1 - 0.06, 1.9 - 2.02, 4.1 - 3.98, 5.9 - 5.94)) / 2 / 5)
    assert fit.slope_se == pytest.approx(se)
    assert fit.slope_ci95 == pytest.approx((1.96 - 4.302653 * se, 1.96 + 4.302653 * se))
    line = stats.fit_line([0, 1, 2], [0.0, 1.1, 1.9])  # one degree of freedom: t(0.975, 1) = 12.7062047
    assert line.slope_ci95[1] - line.slope == pytest.approx(12.7062047 * line.slope_se, rel=1e-7)


# --- the report's lr x EBS table ---------------------------------------------------------------------------


def test_report_shows_the_lr_by_ebs_table_with_the_best_marked(db, tmp_path):
    biased_store(db)
    grid = json.loads(cli(db, "report", "--format", "json").stdout)["lr_grids"][0]
    assert grid["effective_batch_sizes"] == [16, 32] and [r["base_lr"] for r in grid["rows"]] == [3e-4, 1e-3]
    best = {(r["base_lr"], c["effective_batch_size"]) for r in grid["rows"] for c in r["cells"] if c["best"]}
    assert best == {(1e-3, 16), (1e-3, 32)}
    cell = next(c for r in grid["rows"] if r["base_lr"] == 3e-4 for c in r["cells"] if c["effective_batch_size"] == 32)
    assert cell["mean"] == pytest.approx(0.8995) and cell["std"] == pytest.approx(0.0) and cell["seeds"] == 3
    text = CliRunner().invoke(app, ["report", "--db", str(db)], env={"COLUMNS": "80"}).stdout
    assert "m, torch: validation accuracy, lr x EBS (* best lr per EBS)" in text
    assert "0.900 ± 0.001 (3) *" in text and "0.900 ± 0.050 (3) *" in text
    markdown = cli(db, "report", "--format", "markdown").stdout
    assert "| lr | EBS 16 | EBS 32 |" in markdown and "| 1e-3 | 0.900 ± 0.001 (3) * | 0.900 ± 0.050 (3) * |" in markdown
    figures = tmp_path / "figures"
    out = cli(db, "report", "--plot", str(figures)).stdout
    assert (figures / "m-lr-grid.png").stat().st_size > 0 and "m-lr-grid.png" in out
    # The study table reads as the seed study's: by EBS, then lr, each EBS's best lr marked (* in text, bold on
    # the page, best_lr in CSV and JSON).
    cells = json.loads(cli(db, "report", "--format", "json").stdout)["cells"]
    assert [(c["effective_batch_size"], c["lr"], c["best_lr"]) for c in cells] == [
        (16, 3e-4, False), (16, 1e-3, True), (32, 3e-4, False), (32, 1e-3, True)]
    rows = [line.split()[1:5:2] for line in text.splitlines() if line.startswith("m ")]  # EBS and lr
    assert rows == [["16", "3e-4"], ["16", "1e-3"], ["32", "3e-4"], ["32", "1e-3"]]
    assert "1e-3 *" in text and "* marks each EBS's best lr on validation" in " ".join(text.split())
    page = tmp_path / "study.html"
    cli(db, "report", "--format", "html", "-o", str(page))
    assert page.read_text().count("<tr class='best'>") == 2 * 2  # the table, and the same under 'all columns'


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--lrs", "1e-4,abc"], "--lrs takes comma-separated values like 1e-5,3e-5,1e-4; 'abc' is not one"),
    (["--lrs", "1e-4,-3e-4"], "--lrs must be positive learning rates, got -3e-4"),
    (["--lrs", "0"], "--lrs must be positive learning rates, got 0"),
    (["--lrs", ","], "--lrs is empty"),
    (["--lr", "1e-4", "--lrs", "1e-4,3e-4"], "--lr and --lrs both given on the command line"),
])
def test_bad_lrs_are_one_line_exit_2_and_nothing_written(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not db.exists()


def test_lr_and_lrs_together_in_a_sweep_file_are_refused(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("lr: 1.0e-4\nlrs: [1.0e-4, 3.0e-4]\n")
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "'lr' and 'lrs' both given in" in result.stderr
    sweep_file.write_text("lrs: [1.0e-4, 3.0e-4]\nmodels: [minilm]\n")
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--dry-run"], env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "2 lrs = 2 cells" in result.output
    # A flag overrides the file's grid, as every flag does.
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--lr", "5e-5", "--dry-run"],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "= 1 cell" in result.output and "5e-5" in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--protocol", "best"], "unknown --protocol 'best'; choose one of: tuned, pooled"),
    (["--protocol", "tuned", "--compare-protocols"], "--compare-protocols shows every protocol; drop --protocol"),
])
def test_bad_protocol_is_one_line_and_exit_2(db, args, fragment):
    biased_store(db)
    before = db.read_bytes()
    result = cli(db, "pick-best", *args, code=2)
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before


def test_the_tuned_study_preset_is_the_seed_grid_at_four_lrs(tmp_path, monkeypatch):
    from accumbench.sweep.spec import build_spec

    spec = build_spec(preset="tuned-study")
    assert len(spec.cells) == 2 * 3 * 4 * 3
    assert spec.axes["lr"] == (1e-5, 3e-5, 1e-4, 3e-4) and spec.axes["backend"] == ("torch",)
    assert spec.axes["seed"] == (42, 43, 44) and spec.axes["effective_batch_size"] == (64, 256, 1024)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["sweep", "--preset", "tuned-study", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--preset tuned-study needs" in result.stderr and "the Hugging Face Hub" in result.stderr
    assert not (tmp_path / "r.db").exists()


# --- end to end on a tiny model ------------------------------------------------------------------------------


def test_a_tiny_sweep_over_lrs_end_to_end(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    args = ["sweep", "--models", tiny_bert, "--dataset", "demo", "--max-train-samples", "48", "--max-eval-samples", "32",
            "--max-length", "32", "--epochs", "1", "--micro-batch-size", "8", "--no-checkpoint",
            "--effective-batch-sizes", "8,16", "--lrs", "1e-4,1e-3,1e-2", "--seeds", "1,2", "--db", str(db)]
    dry = CliRunner().invoke(app, [*args, "--dry-run"], env={"COLUMNS": "160"})
    assert dry.exit_code == 0 and "2 seeds x 3 lrs x 2 EBS = 12 cells" in dry.output
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    runs = query(db, "SELECT effective_batch_size, lr, base_lr, seed FROM runs WHERE status = 'FINISHED'")
    assert sorted((r["effective_batch_size"], r["lr"], r["seed"]) for r in runs) == sorted(
        (ebs, lr, seed) for ebs in (8, 16) for lr in (1e-4, 1e-3, 1e-2) for seed in (1, 2))
    assert all(r["lr"] == r["base_lr"] for r in runs)

    out = pick_json(db)
    assert out["protocol"] == "tuned"
    best = {b["effective_batch_size"]: b for b in out["best_lr_per_ebs"]}
    assert set(best) == {8, 16}
    for ebs, b in best.items():
        assert [t["lr"] for t in b["lrs_tried"]] == [1e-4, 1e-3, 1e-2] and all(t["seeds"] == 2 for t in b["lrs_tried"])
        means = {t["lr"]: t["metric_mean"] for t in b["lrs_tried"]}
        assert b["metric_mean"] == max(means.values()) and means[b["lr"]] == b["metric_mean"]
        # The mean over the cell's two seeds, read back from the store.
        recorded = query(db, "SELECT e.val_accuracy FROM runs r JOIN epochs e ON e.run_id = r.id AND e.epoch = r.best_epoch "
                             "WHERE r.effective_batch_size = ? AND r.lr = ?", ebs, b["lr"])
        assert b["metric_mean"] == pytest.approx(sum(r[0] for r in recorded) / 2)
    assert {c["effective_batch_size"] for c in out["candidates"]} == {8, 16} and len(out["candidates"]) == 2
    report = json.loads(cli(db, "report", "--format", "json").stdout)
    assert len(report["cells"]) == 6 and len(report["lr_grids"]) == 1
