"""The training step at static shapes (backends/static_step.py), which --compile and --cuda-graphs use: every
micro-batch padded to (micro-batch size) x (a length in steps of 32), weighted by rows, and still exact. The
graph path runs here through its eager stand-in (the same recorded functions, replayed by calling them), so
everything but the capture itself is checked on the CPU; tests/test_cuda_graphs.py checks the capture on a GPU."""

from __future__ import annotations

import re

import pytest
from conftest import demo_classifier

from accumbench.backends.static_step import static_length

SETUP = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, micro_batch_size=16, max_length=128)


def _setup(model_dir: str, n: int, max_length: int = 128):
    model, batch_for = demo_classifier(model_dir, n, seed=11, max_length=max_length, pooling="mean")
    return model.double(), batch_for  # fp64: exactness down to summation order


def _backend(model, **kwargs):
    from accumbench.backends.base import BackendSetup, build_backend

    return build_backend("torch", model, BackendSetup(**{**SETUP, "scheduler": "constant", "total_steps": 1, **kwargs}))


def test_static_lengths_are_steps_of_32_up_to_max_length():
    assert [static_length(w, 128) for w in (1, 32, 33, 64, 100, 128)] == [32, 32, 64, 64, 128, 128]
    assert [static_length(w, 100) for w in (33, 97, 100)] == [64, 100, 100]  # --max-length itself is a shape


def test_pad_batch_weights_real_rows_and_masks_padding():
    import torch

    from accumbench.backends.static_step import pad_batch

    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "labels": torch.tensor([1, 0])}
    padded = pad_batch(batch, rows=4, length=4, weight=0.25, real_rows=2)
    assert padded["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # Padding rows attend to their first position only, so their softmax has a real entry.
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert padded["row_weights"].tolist() == [0.125, 0.125, 0.0, 0.0] and padded["real"].tolist() == [1, 1, 0, 0]
    assert padded["labels"].tolist() == [1, 0, 0, 0]
    full = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": None, "labels": torch.tensor([1, 0])}
    assert pad_batch(full, rows=3, length=4, weight=1.0, real_rows=2)["attention_mask"] is None  # no padded column


@pytest.mark.parametrize("path", ["static_shapes", "cuda_graphs"])
@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_modernbert"])
def test_a_ragged_group_at_static_shapes_has_the_mean_loss_gradient(request, model_fixture, path):
    """50 samples at micro-batch 16: 16/16/16/2, the last padded with 14 rows of weight 0, all padded to 32-multiples.
    In fp64 the accumulated gradient equals the full batch's mean-loss gradient (one unpadded pass)."""
    import torch
    import torch.nn.functional as F

    from accumbench import accumulation

    model, batch_for = _setup(request.getfixturevalue(model_fixture), 50)
    full = batch_for(list(range(50)))
    loss = F.cross_entropy(model(full["input_ids"], full["attention_mask"]), full["labels"])
    loss.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    backend = _backend(model, **{path: True})
    _, loss_sum, _ = next(iter(backend.accumulated([accumulation.cut_group(list(range(50)), 16)], batch_for)))
    assert loss_sum.item() == pytest.approx(loss.item() * 50, rel=1e-12)
    for p, expected in zip(model.parameters(), reference):
        assert torch.allclose(p.grad, expected, rtol=1e-9, atol=1e-13)


def _epochs(model_dir, **path):
    """Two epochs of 44 samples at EBS 16 (ragged last group of 12), micro-batch 8, a linear lr decay, clipping
    and the noise scale: the step rows and final weights."""
    import torch

    from accumbench import accumulation

    torch.manual_seed(0)  # the same head for every path
    model, batch_for = _setup(model_dir, 44)
    backend = _backend(model, scheduler="linear", total_steps=6, micro_batch_size=8, **path)
    backend.measure_noise_scale()
    rows = []
    for epoch in (1, 2):
        groups = accumulation.plan_epoch(44, 16, 8, seed=0, epoch=epoch)
        rows += backend.train_epoch(groups, batch_for, epoch, grad_clip=0.5, steps_before=len(rows), samples_before=0).steps
    backend.close()
    return rows, [p.detach().clone() for p in model.parameters()], backend


@pytest.mark.parametrize("path", ["static_shapes", "cuda_graphs"])
def test_recorded_steps_train_as_the_eager_loop(tiny_bert, path):
    """Static shapes and the graph stand-in take the eager loop's steps: the same losses, gradient norms, lrs of a
    decaying schedule (read by the recorded step from a device tensor), noise scale and final weights."""
    import torch

    eager_rows, eager_weights, _ = _epochs(tiny_bert)
    rows, weights, backend = _epochs(tiny_bert, **{path: True})
    assert [r["lr"] for r in rows] == [r["lr"] for r in eager_rows] and len(rows) == 6
    for key in ("loss", "grad_norm", "micro_grad_sq", "noise_trace"):
        assert [r.get(key) for r in rows] == pytest.approx([r.get(key) for r in eager_rows], rel=1e-9, abs=1e-12)
    for got, expected in zip(weights, eager_weights):
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
    if path == "cuda_graphs":
        graphs = backend.step_graphs
        # One recording per (rows, length, mask) shape met, and one of the optimizer step (after Adam's first step).
        assert graphs.graphs.captures == len(graphs.micro_steps) + 1
        assert {shape[0] for shape in graphs.micro_steps} == {8} and graphs.step is not None


def test_gradients_set_to_none_are_put_back_as_zeros(tiny_bert):
    """A recorded backward adds into the .grad tensors it was recorded with; code that sets .grad to None (check-ga
    between backends) gets those same tensors back, zeroed, instead of a replay writing where no one reads."""
    import torch

    from accumbench import accumulation

    model, batch_for = _setup(tiny_bert, 16)
    backend = _backend(model, cuda_graphs=True, micro_batch_size=8)
    group = accumulation.cut_group(list(range(16)), 8)
    next(iter(backend.accumulated([group], batch_for)))
    first = [p.grad.clone() for p in model.parameters()]
    held = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    next(iter(backend.accumulated([group], batch_for)))
    assert all(p.grad is grad for p, grad in zip(model.parameters(), held))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), first))  # not 2x: zeroed in between


def test_cuda_graphs_on_needs_a_gpu_in_one_clear_line(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["train", "--model", tiny_bert, "--max-train-samples", "32", "--epochs", "1",
                                      "--cuda-graphs", "on", "--db", str(db)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --cuda-graphs on needs a CUDA GPU; or pass --cuda-graphs auto (on only where graphs can run)"]
    assert not db.exists()


def test_a_sweep_with_cuda_graphs_on_stops_before_its_first_cell(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, ["sweep", "--model", tiny_bert, "--max-train-samples", "32", "--epochs", "1",
                                      "--effective-batch-size", "16,32", "--cuda-graphs", "on", "--db", str(db)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --cuda-graphs on needs a CUDA GPU; ")
    assert not db.exists()


@pytest.mark.parametrize("precision, backend, processes, why", [
    ("no", "torch", 1, "runs in bf16 only (this run's precision is no); add --precision bf16"),
    ("fp16", "torch", 1, "runs in bf16 only (this run's precision is fp16); add --precision bf16"),
    ("bf16", "accelerate", 1, "runs in the torch loop only; add --backend torch"),
    ("bf16", "torch", 2, "runs in one process only"),
])
def test_cuda_graphs_auto_stays_eager_where_graphs_cannot_run(monkeypatch, precision, backend, processes, why):
    """On a GPU: fp32, fp16 (its GradScaler decides on the host), Accelerate and several processes stay eager
    under auto, and `on` says why not. Without a GPU auto is off."""
    import torch

    from accumbench.backends.static_step import resolve_cuda_graphs
    from accumbench.errors import UserError

    assert resolve_cuda_graphs("auto", "bf16", "torch", 1) == ("on" if torch.cuda.is_available() else "off")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_cuda_graphs("auto", "bf16", "torch", 1) == "on"
    assert resolve_cuda_graphs("off", "bf16", "torch", 1) == "off"
    assert resolve_cuda_graphs("auto", precision, backend, processes) == "off"
    with pytest.raises(UserError, match="^" + re.escape(f"--cuda-graphs on {why}; ")):
        resolve_cuda_graphs("on", precision, backend, processes)


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_compile_trains_at_static_shapes_on_the_cpu(tiny_bert, tmp_path, mode):
    """--compile pads to static shapes, so each shape compiles once, and takes the eager run's steps (to fp32
    rounding); the run records --cuda-graphs as resolved (off without a GPU)."""
    import torch._dynamo
    from conftest import query
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    db = tmp_path / "runs.db"
    common = ["train", "--model", tiny_bert, "--max-train-samples", "40", "--max-eval-samples", "16", "--epochs", "1",
              "--max-length", "48", "--effective-batch-size", "16", "--micro-batch-size", "8", "--dropout", "0",
              "--no-checkpoint", "--db", str(db)]
    for extra in ([], ["--compile", "--compile-mode", mode]):
        torch._dynamo.reset()
        result = CliRunner().invoke(app, [*common, *extra])
        assert result.exit_code == 0, result.output
    compiled_shapes = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager, compiled = (query(db, "SELECT loss FROM steps WHERE run_id = ? ORDER BY step", r) for r in (1, 2))
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-5)
    runs = query(db, "SELECT cuda_graphs, config_json FROM runs ORDER BY id")
    assert [r["cuda_graphs"] for r in runs] == ["off", "off"] and f'"compile_mode": "{mode}"' in runs[1]["config_json"]
    # 3 groups of 16 at micro-batch 8 (the last 8), lengths 32 or 48, with or without a mask: at most 4 shapes.
    assert 1 <= compiled_shapes <= 4
