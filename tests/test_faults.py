"""Faults on purpose (the short version of bench/faults.py): random SIGKILLs of two workers, a disk that
fills during a checkpoint or a commit, a server that drops its connections, a checkpoint directory that
cannot be written. After each, the store must hold every cell's one FINISHED run with all its epochs, no
run left RUNNING, no orphan rows, and pass its integrity check. Also `sweep --workers` (and Ctrl-C
across its workers) and the cluster job files in examples/."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import query, wait_for
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.errors import StoreUnavailable
from accumbench.runtime.lifecycle import recorded_run
from accumbench.runtime.preparation import run_columns
from accumbench.store import FAILED, FINISHED, RESERVE_BYTES, Store, resolve_db_url
from accumbench.sweep.local import worker_environments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import faults  # noqa: E402  (bench/faults.py: the same audit and kill cycles as the benchmark)


def test_random_sigkills_of_two_workers_leave_every_cell_finished_once(tiny_bert, any_db, tmp_path):
    seed = int(os.environ.get("ACCUMBENCH_FAULTS_SEED", "1"))  # bench/repeat_signal_tests.py varies it
    result = faults.kill_cycles(tiny_bert, any_db, cycles=3, samples=200, seed=seed, work=tmp_path)
    assert faults.ok(result), result
    assert result["sigkills"] >= 1 and result["finisher_exit_code"] == 0
    # Every run the kills left behind was marked KILLED by a live worker's stale-heartbeat check.
    assert result["runs"] == result["cells"] + result["killed"] + result["failed"]


def _limited(file_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))


def _accumbench(args: list[str], limit: int | None = None) -> subprocess.CompletedProcess:
    """The real command in its own process; `limit`: the most bytes it may write to any one file."""
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "accumbench", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, preexec_fn=_limited(limit) if limit else None)


TINY = ["--dataset", "demo", "--max-train-samples", "96", "--max-eval-samples", "32", "--max-length", "32",
        "--micro-batch-size", "8", "--epochs", "1"]


def test_a_disk_full_during_a_checkpoint_fails_the_run_with_a_clear_error(tiny_bert, tmp_path):
    """The tiny model's checkpoint (~4.2 MB) is over a 3 MB file-size limit: the write fails, the partial
    file is removed, the run is FAILED with 'disk full while writing ...', and the database reads fine."""
    db = tmp_path / "runs.db"
    done = _accumbench(["train", "--model", tiny_bert, *TINY, "--db", str(db)], limit=3 * 2**20)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "the run failed: disk full while writing" in line and "model.safetensors" in line
    (run,) = query(db, "SELECT status, error FROM runs")
    assert run["status"] == "FAILED" and run["error"].startswith("disk full while writing")
    assert "File too large" in run["error"]
    assert not list((tmp_path / "checkpoints").rglob("*.partial"))  # the space is given back
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_a_disk_full_during_a_commit_stops_the_sweep_and_a_resume_completes_it(tiny_bert, tmp_path, clock_ahead):
    """The worker may not grow any file past 200 kB: its database's write-ahead log reaches that within
    the first cells, and the sweep stops with one error line. The store stays readable; with room again,
    the same command finishes every cell once."""
    db = tmp_path / "runs.db"
    args = ["sweep", "--models", tiny_bert, *TINY, "--no-checkpoint", "--effective-batch-sizes", "8,16",
            "--seeds", "1,2,3", "--stale-after", "1", "--max-retries", "3", "--db", str(db)]
    faulted = _accumbench(args, limit=200_000)
    assert faulted.returncode == 1, faulted.stdout + faulted.stderr
    errors = [line for line in faulted.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be written" in errors[0] and "is its disk full?" in errors[0]
    before = faults.audit(str(db), epochs=1)
    assert before["integrity"] == "ok" and before["orphan_rows"] == 0 and before["cells_finished_once"] < 6
    assert before["finished_with_all_epochs"] == before["cells_finished_once"] == len(
        query(db, "SELECT id FROM runs WHERE status = 'FINISHED'"))
    # A run its worker could not close goes stale after --stale-after 1 (the worker is gone): the resume runs
    # here, in this process, so that its claims can read a clock 2 s ahead instead of the test sleeping.
    clock_ahead(2)
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    after = faults.audit(str(db), epochs=1)
    assert faults.ok(after), after


def test_connections_the_server_drops_are_reconnected(postgres_url, capfd):
    """Every connection of the store terminated by the server (as a restart does to them): the next
    write notices, connects again, and succeeds; nothing is lost or written twice."""
    from sqlalchemy import create_engine, text

    with Store.open(postgres_url) as store:
        run_id = store.create_run(**run_columns(RunConfig(model="m")))
        store.heartbeat(run_id)  # a pooled connection, now idle
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(text("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        admin.dispose()
        assert killed >= 1
        store.add_epoch(run_id, epoch=1, train_loss=0.5, train_accuracy=0.5, val_loss=0.5, val_accuracy=0.5,
                        test_loss=0.5, test_accuracy=0.5, optimizer_steps=1, samples_seen=8, epoch_seconds=1.0,
                        train_seconds=1.0, eval_seconds=0.1, samples_per_second=8.0, peak_memory_mb=1.0)
        assert [e["epoch"] for e in store.epochs(run_id)] == [1]
        assert store.finish_run(run_id, FINISHED)


@pytest.mark.parametrize("where, fragment", [
    ("/proc/accumbench-checkpoints", "checkpoint directory /proc/accumbench-checkpoints is not writable"),
    ("FILE", "is not writable (File exists)"),
])
def test_a_checkpoint_directory_that_cannot_be_written_is_one_line_before_training(tiny_bert, tmp_path, where,
                                                                                   fragment):
    if where == "FILE":
        where = str(tmp_path / "in-the-way")
        Path(where).write_text("a file, not a directory")
    db = tmp_path / "runs.db"
    for command in (["train", "--model", tiny_bert], ["sweep", "--models", tiny_bert]):
        result = CliRunner().invoke(app, [*command, *TINY, "--checkpoint-dir", where, "--db", str(db)])
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "pass --checkpoint-dir DIR, or --no-checkpoint" in result.stderr
        assert not db.exists()


def test_the_store_keeps_space_in_reserve_for_recording_a_failure(tmp_path):
    db = tmp_path / "runs.db"
    with Store.open(resolve_db_url(str(db))) as store:
        reserve = tmp_path / ".runs.db-reserve"  # hidden, beside the database: on its disk
        assert reserve.stat().st_size == RESERVE_BYTES
        store.make_room()
        assert not reserve.exists()
    Store.open(resolve_db_url(str(db))).close()  # made again when there is room
    assert reserve.stat().st_size == RESERVE_BYTES


def test_a_reserve_under_its_old_name_is_hidden_not_made_twice(tmp_path):
    db, old, new = tmp_path / "runs.db", tmp_path / "runs.db-reserve", tmp_path / ".runs.db-reserve"
    old.write_bytes(b"\0" * RESERVE_BYTES)  # as accumbench kept it before
    kept = old.stat().st_ino
    Store.open(resolve_db_url(str(db))).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".runs.db-reserve", "runs.db"]
    assert new.stat().st_ino == kept and new.stat().st_size == RESERVE_BYTES  # the same file, renamed
    old.write_bytes(b"\0" * RESERVE_BYTES)  # an older accumbench on the same database made its own again
    with Store.open(resolve_db_url(str(db))) as store:
        store.make_room()  # a full disk: both give their space back
    assert not old.exists() and not new.exists()


def _fill(path: Path) -> None:
    """A file that takes every byte the disk has left."""
    with open(path, "wb", buffering=0) as ballast:  # unbuffered: nothing left to fail again at close
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    ballast.write(b"\0" * chunk)
            except OSError:
                continue


def test_on_a_full_disk_the_hidden_reserve_is_the_room_that_records_the_run_failed(tmp_path):
    """A real full disk (a 4 MiB tmpfs, as bench/faults.py's disk case mounts): once a file takes all free
    space the store cannot write (a heartbeat fails), yet the run is recorded FAILED, in the room that its
    reserve, .runs.db-reserve, gives back. With room again, the store makes the reserve again."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not faults.mount_tmpfs(disk, "4m"):
        pytest.skip("mounting a tmpfs needs root (bench/faults.py --only disk then falls back to ulimit -f)")
    try:
        db, reserve = disk / "runs.db", disk / ".runs.db-reserve"
        with Store.open(resolve_db_url(str(db))) as store:
            assert reserve.stat().st_size == RESERVE_BYTES
            run_id = store.create_run(**run_columns(RunConfig(model="m")))
            with pytest.raises(OSError, match="No space left"), recorded_run(store, run_id):
                _fill(disk / "ballast")
                with pytest.raises(StoreUnavailable, match="is its disk full"):
                    store.heartbeat(run_id)  # the disk is full: the store cannot write
                raise OSError(errno.ENOSPC, "No space left on device", str(disk / "model.safetensors"))
            assert not reserve.exists()  # given up for the write that recorded the run's end
            run = store.get_run(run_id)
            assert run["status"] == FAILED and run["error"].startswith("disk full while writing")
        (disk / "ballast").unlink()
        Store.open(resolve_db_url(str(db))).close()
        assert reserve.stat().st_size == RESERVE_BYTES
        assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    finally:
        faults.unmount(disk)


def test_worker_environments_one_gpu_each_or_the_cores_split():
    assert worker_environments(2, ["0", "1", "3"], 16) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    cpu = worker_environments(2, [], 16)
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["8", "8"] and all(e["CUDA_VISIBLE_DEVICES"] == "" for e in cpu)
    assert [e["OMP_NUM_THREADS"] for e in worker_environments(3, [], 2)] == ["1", "1", "1"]
    with pytest.raises(Exception, match="--workers 3 but 2 GPUs visible"):
        worker_environments(3, ["0", "1"], 16)


def test_two_local_workers_share_the_sweep_and_the_cores(tiny_bert, tmp_path):
    """`sweep --workers 2` on this CPU: two processes with one thread each (2 cores), every cell once."""
    db = tmp_path / "runs.db"
    args = ["sweep", "--models", tiny_bert, *TINY, "--no-checkpoint", "--effective-batch-sizes", "8,16,32",
            "--seeds", "1,2", "--workers", "2", "--db", str(db)]
    done = _accumbench(args)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sweep sweep-") and "starting 2 workers" in lines[0]
    assert any(line.startswith("[worker 1] ") for line in lines) and any(line.startswith("[worker 2] ") for line in lines)
    ran = [int(line.split(" run by this worker")[0].rsplit("(", 1)[1]) for line in lines if "run by this worker" in line]
    assert len(ran) == 2 and sum(ran) == 6
    assert lines[-1].endswith("2 workers ended with exit codes [0, 0]")
    runs = query(db, "SELECT status, device, config_hash FROM runs")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"FINISHED"} and len({r["config_hash"] for r in runs}) == 6
    # Each worker trained with its share of the cores (the device records the thread count).
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {r["device"] for r in runs} == {f"cpu ({os.uname().machine}, {threads} threads)"}
    # The same grid without --workers is the same sweep: nothing is left to run.
    again = CliRunner().invoke(app, args[:-4] + ["--db", str(db)])
    assert again.exit_code == 0 and "(0 run by this worker)" in again.output


def test_bad_workers_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--workers", "0", "--dry-run", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2 and "--workers must be at least 1, got 0" in result.stderr


def test_the_cluster_job_files_start_workers_that_share_one_sweep(tiny_bert, tmp_path):
    """examples/: the SLURM array task (run with bash, as sbatch would) and the Kubernetes Job's
    container command, started at once as two workers of one sweep file on one database."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    grid = tmp_path / "sweep.yaml"
    grid.write_text(yaml.safe_dump({
        "models": [tiny_bert], "effective_batch_sizes": [8, 16], "seeds": [1, 2], "dataset": "demo",
        "max_train_samples": 96, "max_eval_samples": 32, "max_length": 32, "micro_batch_size": 8, "epochs": 1}))
    db = str(tmp_path / "runs.db")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCUMBENCH_DB": db,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    job = yaml.safe_load((root / "examples" / "k8s" / "sweep-job.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] > 1 and "completions" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"] for e in container["env"]} >= {"ACCUMBENCH_DB", "OMP_NUM_THREADS"}
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    command = [str(grid) if arg == f"{mounted['sweep']}/sweep.yaml" else arg for arg in container["command"]]
    assert command[:2] == ["accumbench", "sweep"] and str(grid) in command  # the ConfigMap's file, mounted

    slurm = subprocess.Popen(["bash", str(root / "examples" / "slurm" / "sweep.sbatch")], cwd=tmp_path,
                             env={**env, "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pod_worker = subprocess.Popen(command, cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [worker.communicate(timeout=600)[0] for worker in (slurm, pod_worker)]
    assert [slurm.returncode, pod_worker.returncode] == [0, 0], outputs
    assert outputs[0].startswith("accumbench worker 1 of job ? on ")
    ran = [int(out.split(" run by this worker")[0].rsplit("(", 1)[1]) for out in outputs]
    assert sum(ran) == 4
    runs = query(db, "SELECT status, config_hash, checkpoint_path FROM runs")
    assert len(runs) == 4 and {r["status"] for r in runs} == {FINISHED} and len({r["config_hash"] for r in runs}) == 4
    assert {r["checkpoint_path"] for r in runs} == {None}  # --no-checkpoint: nothing on the node's disk


def test_ctrl_c_reaches_every_local_worker_and_each_records_its_run_killed(tiny_bert, tmp_path):
    """`sweep --workers 2`, both workers paused mid-run (a RUNNING run with an epoch row each, held by
    the test entry paused_accumbench.py): one SIGINT to the parent, and both runs are KILLED, none left RUNNING."""
    import sqlite3

    from paused_accumbench import paused_command

    from accumbench.store import INTERRUPTED, KILLED

    db, pause = tmp_path / "runs.db", tmp_path / "pause"
    args = [*paused_command(pause), "sweep", "--models", tiny_bert, *TINY, "--no-checkpoint",
            "--effective-batch-sizes", "8,16", "--workers", "2", "--db", str(db)]
    parent = subprocess.Popen(args, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def paused_mid_run() -> int:
        try:
            return query(db, "SELECT COUNT(DISTINCT r.id) FROM runs r JOIN epochs e ON e.run_id = r.id "
                             "WHERE r.status = 'RUNNING'")[0][0]
        except sqlite3.OperationalError:  # the store is not made yet
            return 0

    try:
        wait_for(lambda: db.exists() and paused_mid_run() == 2, "both workers paused mid-run")
        parent.send_signal(signal.SIGINT)
        output, _ = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode == 130, output
    assert "2 workers ended with exit codes [130, 130]" in output
    assert [tuple(run) for run in query(db, "SELECT status, error FROM runs")] == [(KILLED, INTERRUPTED)] * 2
