"""Cast once per optimizer step: both backends run a group's micro-batches inside one autocast region, so each
fp32 weight is cast to bf16 once per group instead of once per micro-batch, and every loss and gradient stays
bit-identical to an autocast region per micro-batch (how the loops ran before, and how most loops run)."""

from __future__ import annotations

import pytest
from conftest import demo_classifier

from accumbench.config import BACKENDS


def _setup(tiny_bert, n: int):
    return demo_classifier(tiny_bert, n, seed=3, max_length=32, dropout=0.1)


class _WeightCasts:
    """Counts autocast's casts of the model's parameters (aten._to_copy of a parameter's storage)."""

    def __init__(self, model) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        storages = {p.data_ptr() for p in model.parameters()}
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in storages:
                    counter.casts += 1
                return func(*args, **(kwargs or {}))

        self.casts, self.mode = 0, Mode()


def _linear_parameters(model) -> int:
    """What bf16 autocast casts: the weights and biases of linear layers (embeddings and norms stay fp32)."""
    import torch

    return sum(len(list(m.parameters())) for m in model.modules() if isinstance(m, torch.nn.Linear))


def _per_micro_batch_autocast(model, group, batch_for) -> tuple[list, float]:
    """The reference: an autocast region per micro-batch, backward outside it. (grads, loss sum)."""
    import torch

    from accumbench.backends.base import micro_batch_loss

    loss_sum = 0.0
    for micro in group.micro_batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = micro_batch_loss(model, batch_for(micro.indices))
        (loss * micro.weight).backward()
        loss_sum += loss.detach().double().item() * len(micro)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads, loss_sum


@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_a_group_in_one_autocast_region_is_bit_identical_and_casts_each_weight_once(tiny_bert, backend_name):
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup, build_backend

    model, batch_for = _setup(tiny_bert, 40)
    # 40 samples in micro-batches of 12: 12/12/12/4, the ragged last one weighted 4/40.
    group = accumulation.cut_group(list(range(40)), 12)
    torch.manual_seed(7)
    expected_grads, expected_loss = _per_micro_batch_autocast(model, group, batch_for)
    backend = build_backend(backend_name, model, BackendSetup(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, total_steps=1,
        precision="bf16", accumulation_steps=4, micro_batch_size=12))
    casts = _WeightCasts(model)
    torch.manual_seed(7)  # the same dropout masks as the reference's
    with casts.mode:
        _, loss_sum, _ = next(iter(backend.accumulated([group], batch_for)))
    assert loss_sum.item() == expected_loss
    for got, expected in zip((p.grad for p in model.parameters()), expected_grads):
        assert torch.equal(got, expected)
    # Every linear layer's weight and bias is cast once for the group, not once per micro-batch (4 times here).
    assert casts.casts == _linear_parameters(model)
    backend.close()


def test_the_reference_really_casts_per_micro_batch(tiny_bert):
    """The cast counter sees the k-fold casting that a region per micro-batch does (so the test above can fail)."""

    from accumbench import accumulation

    model, batch_for = _setup(tiny_bert, 40)
    casts = _WeightCasts(model)
    with casts.mode:
        _per_micro_batch_autocast(model, accumulation.cut_group(list(range(40)), 12), batch_for)
    assert casts.casts == 4 * _linear_parameters(model)


def test_the_next_group_casts_the_stepped_weights_again(tiny_bert):
    """The cache ends with the group: after an optimizer step the next group's forward uses the new weights,
    exactly as a fresh autocast region over the stepped model computes it."""
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup, build_backend, micro_batch_loss

    model, batch_for = _setup(tiny_bert, 24)
    backend = build_backend("torch", model, BackendSetup(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, total_steps=2,
        precision="bf16", accumulation_steps=2, micro_batch_size=12))
    group = accumulation.cut_group(list(range(24)), 12)
    model.eval()  # no dropout: the same group twice differs only by the step between
    steps = backend.accumulated([group, group], batch_for)
    _, first, _ = next(steps)
    backend.optimizer_step(None)
    assert not torch.is_autocast_enabled("cpu")  # the region ended with the group
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stepped = sum(micro_batch_loss(model, batch_for(m.indices))[0].double().item() * len(m)
                      for m in group.micro_batches)
    _, second, _ = next(steps)
    assert second.item() == stepped != first.item()
    backend.close()
