"""The two backends compute the same thing: the same steps, the same losses, the same validation
curve, also with a ragged last group, and also spread over two processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app

COMMON = ["--dataset", "demo", "--max-train-samples", "200", "--max-eval-samples", "64", "--max-length", "32",
          "--epochs", "2", "--dropout", "0", "--effective-batch-size", "32", "--lr", "1e-3", "--no-checkpoint"]


def _train(db: Path, *args) -> None:
    result = CliRunner().invoke(app, ["train", *COMMON, "--db", str(db), *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)


def _steps(db: Path, run_id: int) -> list:
    return query(db, "SELECT step, epoch, samples_seen, loss, grad_norm, lr FROM steps WHERE run_id = ? ORDER BY step", run_id)


def _floats(values) -> list:
    """Floats from raw sqlite3 values: NaN is stored as the text 'NaN' (B_simple beyond resolution)."""
    return [float(v) for v in values]


def _epochs(db: Path, run_id: int) -> list:
    return query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", run_id)


def test_torch_and_accelerate_take_the_same_steps(tiny_bert, tmp_path):
    """200 samples at EBS 32 = 4 x 8: six full groups and a ragged one of 8 every epoch."""
    db = tmp_path / "runs.db"
    _train(db, "--model", tiny_bert, "--backend", "torch", "--micro-batch-size", "8")
    _train(db, "--model", tiny_bert, "--backend", "accelerate", "--micro-batch-size", "8")
    torch_steps, accelerate_steps = _steps(db, 1), _steps(db, 2)
    assert len(torch_steps) == len(accelerate_steps) == 2 * 7
    assert [s["samples_seen"] for s in torch_steps][:7] == [32, 64, 96, 128, 160, 192, 200]
    for a, b in zip(torch_steps, accelerate_steps):
        assert (a["step"], a["epoch"], a["samples_seen"]) == (b["step"], b["epoch"], b["samples_seen"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == a["lr"]
    # The gradient noise scale: the same micro-batch norms in both loops (the ragged tail group of
    # one micro-batch has none: k = 1 there).
    noise = "micro_grad_sq, noise_grad_sq, noise_trace, noise_scale"
    torch_noise, accelerate_noise = ([tuple(r) for r in query(db, f"SELECT {noise} FROM steps WHERE run_id = ? "
                                                                  "ORDER BY step", run_id)] for run_id in (1, 2))
    assert [row[0] is None for row in torch_noise] == [False] * 6 + [True] + [False] * 6 + [True]
    for a, b in zip(torch_noise, accelerate_noise):
        assert b == a if a[0] is None else _floats(b) == pytest.approx(_floats(a), rel=1e-4, nan_ok=True)
    for a, b in zip(_epochs(db, 1), _epochs(db, 2)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["optimizer_steps"] == a["optimizer_steps"]
        assert a["noise_steps"] == b["noise_steps"] == 6
        noise = ("noise_scale", "noise_trace", "noise_grad_sq")
        assert _floats(b[c] for c in noise) == pytest.approx(_floats(a[c] for c in noise), rel=1e-4, nan_ok=True)
    runs = query(db, "SELECT backend, accumulation_steps, world_size, precision FROM runs ORDER BY id")
    assert [tuple(r) for r in runs] == [("torch", 4, 1, "no"), ("accelerate", 4, 1, "no")]


def test_with_dropout_both_backends_draw_the_same_masks(tiny_bert, tmp_path):
    """Dropout on (in the head, 0.3): the backends must consume torch's generator identically, or
    every step after the first differs. (Iterating a DataLoader draws a seed from the global
    generator; the Accelerate backend's loader has its own.)"""
    db = tmp_path / "runs.db"
    for backend in ("torch", "accelerate"):
        _train(db, "--model", tiny_bert, "--backend", backend, "--micro-batch-size", "8", "--dropout", "0.3")
    torch_steps, accelerate_steps = _steps(db, 1), _steps(db, 2)
    assert [s["loss"] for s in accelerate_steps] == pytest.approx([s["loss"] for s in torch_steps], rel=1e-6)
    assert [e["val_loss"] for e in _epochs(db, 2)] == pytest.approx([e["val_loss"] for e in _epochs(db, 1)], rel=1e-6)


def test_the_ragged_tail_is_exact_in_both_backends(tiny_bert, tmp_path):
    """The tail group of 8 is one micro-batch of 8 at micro 8 (stock Accelerate would weight it 1/4),
    and one of 8 at micro 32: both backends at both micro-batch sizes agree."""
    db = tmp_path / "runs.db"
    for backend in ("torch", "accelerate"):
        for micro in (32, 8):
            _train(db, "--model", tiny_bert, "--backend", backend, "--micro-batch-size", micro)
    reference = [e["val_loss"] for e in _epochs(db, 1)]
    for run_id in (2, 3, 4):
        assert [e["val_loss"] for e in _epochs(db, run_id)] == pytest.approx(reference, rel=1e-4)
    tail_losses = [[s["loss"] for s in _steps(db, run_id) if s["samples_seen"] in (200, 400)] for run_id in (1, 2, 3, 4)]
    for losses in tail_losses[1:]:
        assert losses == pytest.approx(tail_losses[0], rel=1e-5)


def test_bf16_runs_in_both_backends(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    for backend in ("torch", "accelerate"):
        _train(db, "--model", tiny_bert, "--backend", backend, "--micro-batch-size", "8", "--precision", "bf16")
    a, b = (_epochs(db, i) for i in (1, 2))
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=5e-2)  # bf16 rounding, not exactness
    assert [r[0] for r in query(db, "SELECT precision FROM runs")] == ["bf16", "bf16"]


# --- two processes on the CPU (gloo) --------------------------------------------------------------


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


# A warmup-and-decay schedule, so a scheduler that advances once per process (stock Accelerate) shows.
SCHEDULE = ["--scheduler", "linear", "--warmup-ratio", "0.2"]


def _launch(kind: str, db: Path, model: str) -> subprocess.CompletedProcess:
    """The launchers users run: torchrun for the torch backend, accelerate launch for Accelerate."""
    train = ["train", *COMMON, *SCHEDULE, "--model", model, "--micro-batch-size", "8", "--db", str(db)]
    if kind == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
               "-m", "accumbench", *train, "--backend", "torch"]
    else:
        # --multi_gpu, not --cpu: accelerate's --cpu launcher starts several processes only through
        # mpirun. On a machine without CUDA the processes still run on the CPU, over gloo.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", _free_port(), "-m", "accumbench", *train, "--backend", "accelerate"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("backend", ["torch", "accelerate"])
def test_two_processes_match_one_process(tiny_bert, tmp_path, backend):
    """EBS 32 = 2 processes x 8 x 2: the ragged group of 8 lands on rank 0 only, rank 1 joins the
    all-reduce with a zero-weight stand-in, and the curve matches one process at EBS 32 = 8 x 4."""
    db = tmp_path / "runs.db"
    _train(db, "--model", tiny_bert, "--backend", backend, "--micro-batch-size", "8", *SCHEDULE)
    done = _launch(backend, db, tiny_bert)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run id 2 recorded") == 1  # only the main process reports
    runs = query(db, "SELECT status, world_size, accumulation_steps FROM runs ORDER BY id")
    assert [tuple(r) for r in runs] == [("FINISHED", 1, 4), ("FINISHED", 2, 2)]  # one run row, from rank 0 only
    for a, b in zip(_epochs(db, 1), _epochs(db, 2)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert (b["optimizer_steps"], b["samples_seen"]) == (a["optimizer_steps"], a["samples_seen"])
    one, two = _steps(db, 1), _steps(db, 2)
    assert len(one) == len(two) == 14
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)  # the schedule counts optimizer steps, once
    # The noise scale over two processes: each rank's micro-batch norms are summed in the step's
    # all-reduce (the stand-in of the ragged group counts for nothing), so it matches one process.
    for a, b in zip(_epochs(db, 1), _epochs(db, 2)):
        assert _floats([b["noise_scale"]]) == pytest.approx(_floats([a["noise_scale"]]), rel=1e-4, nan_ok=True)
        assert b["noise_steps"] == a["noise_steps"] == 6  # the tail group of 8 is one micro-batch: k = 1
    traces = [[r[0] for r in query(db, "SELECT noise_trace FROM steps WHERE run_id = ? ORDER BY step", run_id)]
              for run_id in (1, 2)]
    assert [t is None for t in traces[0]] == [t is None for t in traces[1]] == ([False] * 6 + [True]) * 2
    measured = [[t for t in trace if t is not None] for trace in traces]
    assert measured[1] == pytest.approx(measured[0], rel=1e-4) and min(measured[0]) > 0


def test_ebs_must_divide_over_the_processes(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert, "--effective-batch-size", "32",
                                      "--micro-batch-size", "8", "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 2
    assert "is not a multiple of 3 processes x micro-batch size 8 = 24" in result.stderr
    assert not (tmp_path / "runs.db").exists()


def test_fp16_steps_with_inf_gradients_are_skipped_and_counted(tiny_bert):
    """The GradScaler path on CPU (the CLI asks for CUDA for fp16; the mechanism is the same)."""
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup
    from accumbench.backends.torch_loop import TorchBackend
    from accumbench.data import pipeline
    from accumbench.data.demo import generate_demo_reviews
    from accumbench.model import TextClassifier, load_tokenizer_and_encoder

    tokenizer, encoder = load_tokenizer_and_encoder(tiny_bert)
    reviews = generate_demo_reviews(n=32, seed=2)
    split = pipeline.tokenize(pipeline.TextSplit(reviews["text"], reviews["label"]), tokenizer, 24)
    model = TextClassifier(encoder, 2, 0.0, "cls")
    backend = TorchBackend(model, BackendSetup(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="linear",
                                               warmup_ratio=0.0, total_steps=4, precision="fp16"))
    poisoned = {"left": 1}

    def poison(grad):  # the first optimizer step's gradient overflows
        if poisoned["left"]:
            poisoned["left"] -= 1
            return torch.full_like(grad, float("inf"))
        return grad

    model.head.weight.register_hook(poison)
    before = model.head.weight.detach().clone()
    groups = accumulation.plan_epoch(32, 16, 16, seed=0, epoch=1)  # 2 groups of one micro-batch each
    stats = backend.train_epoch(groups, lambda idx: pipeline.collate(split, idx, tokenizer.pad_token_id), 1,
                                grad_clip=None, steps_before=0, samples_before=0)
    assert stats.skipped_steps == 1 and stats.optimizer_steps == 2
    assert [s["lr"] for s in stats.steps] == [1e-3, 1e-3]  # the skipped step did not advance the schedule
    assert not torch.equal(model.head.weight, before)  # the second step was taken


def test_every_backend_of_the_table_is_built_one_way(tiny_bert):
    """config.BACKENDS is the one list of backends: each entry builds, as Class(model, BackendSetup), a Backend
    of its name (what runs, check-ga and the --backend choices use)."""
    from accumbench.backends.base import Backend, BackendSetup, build_backend
    from accumbench.config import BACKENDS, REFERENCE_BACKEND
    from accumbench.model import TextClassifier, load_tokenizer_and_encoder

    _, encoder = load_tokenizer_and_encoder(tiny_bert)
    setup = BackendSetup(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0,
                         total_steps=1)
    assert REFERENCE_BACKEND == "torch" and list(BACKENDS) == ["torch", "accelerate"]
    for name in BACKENDS:
        backend = build_backend(name, TextClassifier(encoder, 2, 0.0, "cls"), setup)
        assert isinstance(backend, Backend) and backend.name == name
        backend.close()
