"""CUDA graphs on a GPU: the recorded step's gradients and training against eager, in bf16. PyTorch has open
reports of wrong gradients when graphs meet accumulation (pytorch#181723, #169545), so the graphed path is
compared with eager on the GPU itself, not only through the CPU's stand-in (tests/test_static_shapes.py).
Skipped where there is no CUDA GPU: bench/gpu_check.sh runs these checks, and times the paths, on one."""

from __future__ import annotations

import pytest
from conftest import demo_classifier

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(),
                                reason="needs a CUDA GPU with bf16")


def _setup(model_dir: str, n: int):
    return demo_classifier(model_dir, n, seed=13, max_length=128)


def _backend(model, **path):
    from accumbench.backends.base import BackendSetup, build_backend

    return build_backend("torch", model, BackendSetup(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="linear", warmup_ratio=0.0, total_steps=8,
        precision="bf16", micro_batch_size=16, max_length=128, **path))


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_modernbert"])
def test_a_graphed_ragged_group_has_eager_bf16_gradients(request, model_fixture):
    """50 samples in 16s (a ragged 2): the graphed gradient is the eager bf16 one, up to bf16 rounding (check-ga's
    bf16 tolerance), and replaying twice gives the same gradient twice."""
    from accumbench import accumulation
    from accumbench.runtime.check_ga import TOLERANCES

    model, batch_for = _setup(request.getfixturevalue(model_fixture), 50)
    model.eval()
    group = accumulation.cut_group(list(range(50)), 16)
    grads = {}
    for path in ({}, {"static_shapes": True}, {"cuda_graphs": True}):
        backend = _backend(model, **path)
        for replay in (1, 2):
            next(iter(backend.accumulated([group], batch_for)))
            grads[(str(path), replay)] = torch.cat([p.grad.float().flatten() for p in model.parameters()])
            model.zero_grad(set_to_none=True)
    eager = grads[("{}", 1)]
    graphed = grads[(str({"cuda_graphs": True}), 1)]
    assert ((graphed - eager).abs().max() / eager.abs().max()).item() <= TOLERANCES["bf16"]
    assert torch.equal(graphed, grads[(str({"cuda_graphs": True}), 2)])
    static = grads[(str({"static_shapes": True}), 1)]  # the same computation, run eagerly
    assert ((graphed - static).abs().max() / static.abs().max()).item() <= 1e-3


def test_graphed_training_follows_eager_training(tiny_bert):
    """Two epochs of 2 optimizer steps of 2 micro-batches, a decaying lr: the graphed run's step losses follow
    eager's in bf16 (from the second step on, the optimizer step is a replay too)."""
    from accumbench import accumulation

    losses = {}
    for name, path in (("eager", {}), ("graphs", {"cuda_graphs": True})):
        torch.manual_seed(0)
        model, batch_for = _setup(tiny_bert, 64)
        backend = _backend(model, **path)
        rows = []
        for epoch in (1, 2):
            groups = accumulation.plan_epoch(64, 32, 16, seed=0, epoch=epoch)
            rows += backend.train_epoch(groups, batch_for, epoch, None, len(rows), 0).steps
        losses[name] = [r["loss"] for r in rows]
        assert [r["lr"] for r in rows] == pytest.approx([1e-3 * (1 - i / 8) for i in range(4)])
    assert losses["graphs"] == pytest.approx(losses["eager"], rel=2e-2)
