"""`accumbench sweep` end to end on a tiny BERT: grids, resuming, retries, divergence, the steps
budget, crashes (SIGKILL) and Ctrl-C, and two workers sharing one SQLite or PostgreSQL database."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import query, wait_for
from paused_accumbench import paused_command
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.runtime import engine
from accumbench.store import FAILED, FINISHED, INTERRUPTED, KILLED, RUNNING, STALE_ERROR, Store, resolve_db_url
from accumbench.sweep.spec import build_spec
from accumbench.sweep.worker import run_sweep
from accumbench.vocabulary import DONE, GAVE_UP

# Small and fast: 104 training samples (a ragged last group at EBS 16 and 32), 32 to evaluate, sequences cut
# to 32 tokens. A test whose arithmetic needs more passes its own --max-train-samples after these.
TINY_RUN = ["--dataset", "demo", "--max-train-samples", "104", "--max-eval-samples", "32", "--max-length", "32",
            "--epochs", "1", "--micro-batch-size", "8", "--lr", "1e-3", "--dropout", "0", "--no-checkpoint"]


def sweep_cli(model: str, db, *extra, code: int = 0):
    result = CliRunner().invoke(app, ["sweep", "--models", model, *TINY_RUN, "--db", str(db), *map(str, extra)])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def sweep_process(model: str, db, *extra, threads: int = 2, pause: Path | None = None) -> subprocess.Popen:
    """The real command in its own process (and process group), as a user or a cluster starts it. With
    `pause`, through the test entry paused_accumbench.py: its runs stop after each recorded epoch until that file
    is removed."""
    accumbench = [sys.executable, "-m", "accumbench"] if pause is None else paused_command(pause)
    args = [*accumbench, "sweep", "--models", model, *TINY_RUN, "--db", str(db), *map(str, extra)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def runs_of(db) -> list[dict]:
    with Store.open(resolve_db_url(str(db))) as store:
        return store.find_runs(status=None)


def assert_each_cell_finished_once(runs: list[dict], cells: int) -> None:
    finished = [run["config_hash"] for run in runs if run["status"] == FINISHED]
    assert len(finished) == cells and len(set(finished)) == cells, [(r["id"], r["status"]) for r in runs]


# --- the grid ------------------------------------------------------------------------------------


def test_grid_from_flags_yaml_and_preset(tmp_path):
    spec = build_spec(models="bert,modernbert", effective_batch_sizes="64, 256,1024", seeds="1,2,2",
                      backends="torch,accelerate", micro_batch_size=64)
    assert len(spec.cells) == 2 * 3 * 2 * 2  # the duplicate seed is dropped
    first = spec.cells[0]
    assert (first.model, first.backend, first.seed, first.effective_batch_size) == ("bert", "torch", 1, 64)
    assert [c.effective_batch_size for c in spec.cells[:3]] == [64, 256, 1024]  # EBS innermost
    assert len({c.config_hash for c in spec.cells}) == len(spec.cells)

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("preset: demo\neffective_batch_sizes: [16, 32]\nepochs: 3\nname: mine\nlr_scaling: sqrt\n")
    spec = build_spec(sweep_file, epochs=4)
    assert spec.name == "mine" and spec.preset == "demo"
    assert [c.effective_batch_size for c in spec.cells] == [16, 32]  # the file overrides the preset
    assert {c.epochs for c in spec.cells} == {4}  # and a flag overrides the file
    assert {c.model for c in spec.cells} == {"minilm"} and {c.lr_scaling for c in spec.cells} == {"sqrt"}

    study = build_spec(preset="seed-study")
    assert len(study.cells) == 2 * 3 * 2 * 3
    cell = study.cells[0]
    assert (cell.dataset, cell.split_seed, cell.max_length, cell.micro_batch_size, cell.epochs, cell.lr,
            cell.optimizer, cell.scheduler, cell.dropout) == ("imdb", 42, 128, 64, 5, 5e-5, "adam", "constant", 0.1)
    assert {c.seed for c in study.cells} == {42, 43, 44} and {c.split_seed for c in study.cells} == {42}
    # The grid, not its spelling, names the sweep: the same cells in another order are the same sweep.
    again = build_spec(preset="seed-study", seeds="44,43,42", backends="accelerate,torch")
    assert again.sweep_name == study.sweep_name == f"seed-study-{study.grid_hash[:8]}"


def test_lr_rules_known_answers_are_recorded_on_the_runs(tiny_bert, tmp_path):
    spec = build_spec(preset="seed-study", lr_scaling="none,linear,sqrt")
    lr = {(c.lr_scaling, c.effective_batch_size): c.scaled_lr for c in spec.cells}
    assert lr[("sqrt", 256)] == pytest.approx(1e-4, rel=1e-12)
    assert lr[("linear", 1024)] == pytest.approx(8e-4, rel=1e-12)
    assert lr[("sqrt", 1024)] == pytest.approx(2e-4, rel=1e-12) and lr[("linear", 64)] == 5e-5
    assert {lr[("none", ebs)] for ebs in (64, 256, 1024)} == {5e-5}

    db = tmp_path / "runs.db"
    sweep_cli(tiny_bert, db, "--effective-batch-sizes", "8,32", "--lr-scaling", "linear,sqrt", "--base-batch-size", "8",
              "--warmup-ratio", "0.5", "--scheduler", "linear")
    rows = query(db, "SELECT id, lr, base_lr, lr_scaling, base_batch_size, effective_batch_size FROM runs ORDER BY id")
    got = {(r["lr_scaling"], r["effective_batch_size"]): (r["lr"], r["base_lr"], r["base_batch_size"]) for r in rows}
    assert got == {("linear", 8): (1e-3, 1e-3, 8), ("linear", 32): (4e-3, 1e-3, 8),
                   ("sqrt", 8): (1e-3, 1e-3, 8), ("sqrt", 32): (pytest.approx(2e-3), 1e-3, 8)}
    # The warmup applies on top of the scaled rate: the peak step lr is the scaled one.
    run_id = next(r["id"] for r in rows if (r["lr_scaling"], r["effective_batch_size"]) == ("linear", 32))
    step_lrs = [r["lr"] for r in query(db, "SELECT lr FROM steps WHERE run_id = ? ORDER BY step", run_id)]
    assert step_lrs[0] == 0.0 and max(step_lrs) == pytest.approx(4e-3)


# --- resuming and retrying -------------------------------------------------------------------------


def test_rerunning_a_finished_sweep_runs_nothing(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    first = sweep_cli(tiny_bert, db, "--effective-batch-sizes", "8,16", "--seeds", "1,2")
    assert "4/4 cells finished (4 run by this worker)" in first.output
    runs = query(db, "SELECT * FROM runs ORDER BY id")
    assert len(runs) == 4 and {r["status"] for r in runs} == {FINISHED} and {r["attempt"] for r in runs} == {1}
    (sweep,) = query(db, "SELECT * FROM sweeps")
    assert {r["sweep_id"] for r in runs} == {sweep["id"]} and sweep["num_cells"] == 4
    assert json.loads(sweep["spec_json"])["axes"]["seed"] == [1, 2]

    again = sweep_cli(tiny_bert, db, "--seeds", "2,1", "--effective-batch-sizes", "16,8")  # the same grid
    assert "4 finished, 0 running elsewhere, 0 to run" in again.output
    assert "(0 run by this worker)" in again.output
    assert len(query(db, "SELECT id FROM runs")) == 4 and len(query(db, "SELECT id FROM sweeps")) == 1


def test_failed_cell_is_retried_then_given_up(tiny_bert, tmp_path):
    """A cell that crashes is retried up to --max-retries times; the attempts are recorded."""
    real_fit, calls = engine.fit, []

    def crashing_fit(run_id, prepared, *args, **kwargs):
        calls.append(prepared.config.effective_batch_size)
        if prepared.config.effective_batch_size == 16:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_fit(run_id, prepared, *args, **kwargs)

    db = str(tmp_path / "runs.db")
    spec = build_spec(models=tiny_bert, effective_batch_sizes="8,16", max_train_samples=104, max_eval_samples=32,
                      max_length=32, epochs=1, micro_batch_size=8, checkpoint=False, max_retries=2)
    result = run_sweep(spec, db=db, fit=crashing_fit)
    assert calls == [8, 16, 16, 16]  # 1 try + 2 retries
    assert [s.state for s in result.statuses] == [DONE, GAVE_UP] and not result.ok
    runs = query(Path(db), "SELECT status, attempt, error FROM runs WHERE effective_batch_size = 16 ORDER BY id")
    assert [(r["status"], r["attempt"]) for r in runs] == [(FAILED, 1), (FAILED, 2), (FAILED, 3)]
    assert runs[0]["error"] == "RuntimeError: CUDA out of memory (simulated)"

    # The bug is fixed (the engine's own fit); a larger --max-retries tries again.
    result = run_sweep(build_spec(**{**spec.options, "models": tiny_bert, "effective_batch_sizes": "8,16",
                                     "max_retries": 3}), db=db)
    assert [s.state for s in result.statuses] == [DONE, DONE] and result.ok and result.ran == 1


def test_diverged_run_is_recorded_and_the_sweep_finishes_the_rest(tiny_bert, tmp_path):
    """lr 100 trains; linear scaling from EBS 1 makes it 100 x 100 = 1e4 at EBS 100, which diverges."""
    db = tmp_path / "runs.db"
    args = ("--effective-batch-sizes", "100", "--micro-batch-size", "20", "--base-batch-size", "1", "--lr", "100",
            "--max-train-samples", "200")  # two steps an epoch at EBS 100
    result = sweep_cli(tiny_bert, db, *args, "--lr-scaling", "linear,none", code=1)
    assert "diverged at step" in result.output
    runs = query(db, "SELECT * FROM runs ORDER BY id")
    assert [(r["lr_scaling"], r["status"]) for r in runs] == [("linear", FAILED), ("none", FINISHED)]
    diverged = runs[0]
    step = int(diverged["error"].removeprefix("diverged at step "))
    steps = query(db, "SELECT step, loss FROM steps WHERE run_id = ? ORDER BY step", diverged["id"])
    evaluated = query(db, "SELECT * FROM epochs WHERE run_id = ? AND optimizer_steps = ?", diverged["id"], step)
    finite = lambda value: math.isfinite(float(value))  # noqa: E731 - sqlite3 reads a stored NaN as 'NaN'
    assert steps[-1]["step"] == step
    # The step's training loss, or the evaluation right after it, is NaN/inf; every earlier step was finite.
    assert not finite(steps[-1]["loss"]) or any(not finite(e["val_loss"]) or not finite(e["test_loss"]) for e in evaluated)
    assert all(finite(s["loss"]) for s in steps[:-1])
    # A divergence is a result, not a crash: resuming does not run the same lr into NaN again.
    again = sweep_cli(tiny_bert, db, *args, "--lr-scaling", "linear,none", code=1)
    assert "(0 run by this worker)" in again.output and len(query(db, "SELECT id FROM runs")) == 2

    fail_fast_db = tmp_path / "fail-fast.db"
    result = sweep_cli(tiny_bert, fail_fast_db, *args, "--lr-scaling", "linear,none", "--fail-fast", code=1)
    assert "stopped at the first failure" in result.output
    assert [r["status"] for r in query(fail_fast_db, "SELECT status FROM runs")] == [FAILED]  # none never ran


def test_steps_budget_gives_equal_optimizer_steps_across_ebs(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    sweep_cli(tiny_bert, db, "--effective-batch-sizes", "8,32,64", "--budget", "steps", "--train-steps", "10",
              "--max-train-samples", "200")
    runs = query(db, "SELECT * FROM runs ORDER BY effective_batch_size")
    assert [(r["budget"], r["train_steps"]) for r in runs] == [("steps", 10)] * 3
    # 200 samples: EBS 8 is 25 steps an epoch (1 epoch, cut at 10); EBS 32 is 7 (2 epochs: 7 + 3);
    # EBS 64 is 4 (3 epochs: 4 + 4 + 2). Evaluation happens at every epoch end, the last included.
    assert [r["epochs"] for r in runs] == [1, 2, 3]
    last = {r["effective_batch_size"]: query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", r["id"])
            for r in runs}
    assert {ebs: rows[-1]["optimizer_steps"] for ebs, rows in last.items()} == {8: 10, 32: 10, 64: 10}
    assert [row["samples_seen"] for row in last[64]] == [200, 400, 400 + 64 + 64]
    assert all(row["val_loss"] is not None for rows in last.values() for row in rows)
    assert len(query(db, "SELECT id FROM steps")) == 30


# --- crashes, Ctrl-C and parallel workers -----------------------------------------------------------


def paused_run(pause: Path, db: Path) -> int:
    """Wait until the worker's run has recorded an epoch and paused there; its run id. The run is then
    RUNNING with an epoch row, and stays so until the signal: nothing can finish first."""
    run_id, epoch = map(int, wait_for(lambda: pause.exists() and pause.read_text(), what="a paused run").split())
    (run,) = query(db, "SELECT r.status, COUNT(e.epoch) AS epochs FROM runs r JOIN epochs e ON e.run_id = r.id "
                       "WHERE r.id = ? GROUP BY r.id", run_id)
    assert (run["status"], run["epochs"]) == (RUNNING, epoch)
    return run_id


CELLS = ("--effective-batch-sizes", "8,16")


def test_sigkill_mid_run_then_resume_finishes_every_cell_once(tiny_bert, tmp_path, clock_ahead):
    db, pause = tmp_path / "runs.db", tmp_path / "pause"
    worker = sweep_process(tiny_bert, db, *CELLS, pause=pause)
    killed_run = paused_run(pause, db)
    os.killpg(worker.pid, signal.SIGKILL)  # no cleanup at all: the run stays RUNNING
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    (stuck,) = query(db, "SELECT * FROM runs WHERE status = 'RUNNING'")
    assert stuck["id"] == killed_run

    # A fresh worker with the default --stale-after (600 s) must leave a run that may be alive alone...
    # It runs the other cell and exits 0, saying that one cell is still running elsewhere.
    polite = sweep_cli(tiny_bert, db, *CELLS)
    assert "1 still running on other workers" in polite.output
    assert query(db, "SELECT status FROM runs WHERE id = ?", killed_run)[0]["status"] == RUNNING
    # ...and one that considers 1 s of silence dead takes the cell over. (The worker is dead, so its
    # heartbeat cannot move: to a claim whose clock is 2 s ahead the run is certainly stale, without a sleep.)
    clock_ahead(2)
    resumed = sweep_cli(tiny_bert, db, *CELLS, "--stale-after", "1")
    assert "heartbeat stale" in resumed.output
    runs = query(db, "SELECT * FROM runs ORDER BY id")
    assert_each_cell_finished_once([dict(r) for r in runs], cells=2)
    killed = query(db, "SELECT * FROM runs WHERE id = ?", killed_run)[0]
    assert killed["status"] == KILLED and killed["error"].startswith(STALE_ERROR)
    retry = next(r for r in runs if r["config_hash"] == killed["config_hash"] and r["status"] == FINISHED)
    assert retry["attempt"] == killed["attempt"] + 1
    assert query(db, "SELECT COUNT(*) AS n FROM runs WHERE status = 'RUNNING'")[0]["n"] == 0
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_ctrl_c_marks_the_run_killed_exits_130_and_resume_does_not_count_it(tiny_bert, tmp_path):
    db, pause = tmp_path / "runs.db", tmp_path / "pause"
    worker = sweep_process(tiny_bert, db, *CELLS, "--max-retries", "0", pause=pause)
    run_id = paused_run(pause, db)
    os.killpg(worker.pid, signal.SIGINT)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 130, output
    assert "run the same command to resume" in output
    run = query(db, "SELECT * FROM runs WHERE id = ?", run_id)[0]
    assert (run["status"], run["error"]) == (KILLED, INTERRUPTED)
    # With --max-retries 0 a failed cell is never retried, but a stopped one is resumed.
    sweep_cli(tiny_bert, db, *CELLS, "--max-retries", "0")
    assert_each_cell_finished_once([dict(r) for r in query(db, "SELECT * FROM runs")], cells=2)


def test_two_workers_at_once_run_every_cell_exactly_once(tiny_bert, any_db):
    """Two processes started together on a fresh database (SQLite file or PostgreSQL server)."""
    cells = ("--effective-batch-sizes", "8,16,32", "--seeds", "1,2")
    workers = [sweep_process(tiny_bert, any_db, *cells, threads=1) for _ in range(2)]  # one core each
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
        assert "database is locked" not in output and "Traceback" not in output
    runs = runs_of(any_db)
    assert len(runs) == 6  # no cell ran twice, none failed
    assert_each_cell_finished_once(runs, cells=6)
    ran = [int(out.split(" run by this worker")[0].rsplit("(", 1)[1]) for out in outputs]
    assert sum(ran) == 6
    print(f"cells run per worker on {any_db.split(':')[0]}: {ran}")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, fragment", [
    (["--preset", "nope"], "unknown --preset 'nope'; choose one of: seed-study, demo"),
    (["--effective-batch-sizes", "8,20"], "effective batch size 20 is not a multiple of micro-batch size 8"),
    (["--backends", "torch,jax"], "unknown --backend 'jax'"),
    (["--max-retries", "-1"], "--max-retries must be >= 0"),
    (["--stale-after", "0"], "--stale-after must be a positive number"),
    (["--seeds", ","], "--seeds is empty"),
])
def test_bad_sweep_input_is_one_line_and_exit_2_with_nothing_written(tiny_bert, tmp_path, extra, fragment):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--models", tiny_bert, *TINY_RUN, "--db", str(db), *extra])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not db.exists()


def test_bad_cell_value_names_the_cell(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--effective-batch-sizes", "64,100", "--seeds", "1,2",
                                      "--micro-batch-size", "16", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2
    assert "(in the cell seed=1, effective_batch_size=100)" in result.stderr


def test_list_for_a_shared_option_and_unknown_key_in_a_sweep_file(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("lr: [1e-5, 2e-5]\n")
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "'lr' takes one value in a sweep" in result.stderr
    sweep_file.write_text("model: [a, b]\nseedz: [1]\n")
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "unknown key 'seedz'" in result.stderr and "did you mean 'seed" in result.stderr
    assert not (tmp_path / "r.db").exists()


def test_unknown_model_is_refused_before_any_cell_is_claimed(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--models", f"{tiny_bert},./no-such-model", *TINY_RUN, "--db", str(db)])
    assert result.exit_code == 2 and "model directory ./no-such-model does not exist" in result.stderr
    assert not db.exists()


def test_same_name_with_another_grid_is_refused_without_writing(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    sweep_cli(tiny_bert, db, "--name", "study", "--effective-batch-sizes", "8")
    before = query(db, "SELECT id, status FROM runs")
    result = CliRunner().invoke(app, ["sweep", "--models", tiny_bert, *TINY_RUN, "--db", str(db), "--name", "study",
                                      "--effective-batch-sizes", "8,16"])
    assert result.exit_code == 2 and "sweep 'study' already exists with a different grid" in result.stderr
    assert query(db, "SELECT id, status FROM runs") == before


def test_seed_study_says_what_is_missing_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--preset", "seed-study", "--db", str(db)])
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    import torch

    if not torch.cuda.is_available():
        assert "needs a CUDA GPU (torch sees none) and the Hugging Face Hub" in message
    assert "bert, modernbert not cached, and HF_HUB_OFFLINE=1" in message and "--preset demo" in message
    assert not db.exists()


def test_sweep_refuses_to_run_under_torchrun(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["sweep", "--models", tiny_bert, *TINY_RUN, "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "one sweep per GPU with CUDA_VISIBLE_DEVICES" in result.stderr
    assert not (tmp_path / "r.db").exists()


def test_dry_run_lists_the_cells_and_touches_no_database(tmp_path):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--preset", "seed-study", "--lr-scaling", "none,sqrt", "--dry-run",
                                      "--db", str(db)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "72 cells (dry run" in result.output and "2e-4" in result.output  # sqrt at 1024: 5e-5 x 4
    assert not db.exists()
