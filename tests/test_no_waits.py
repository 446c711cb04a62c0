"""Nothing in a group makes the host wait for the device. A host-device sync shows on any device as the op
that reads a tensor's value into Python (aten._local_scalar_dense: .item(), float(t), `if t.all()`), so
the CPU can count what would stall a GPU's launch queue."""

from __future__ import annotations

import pytest
from conftest import demo_classifier

from accumbench.config import BACKENDS


class _Reads:
    """Counts the ops that read a tensor's value into Python, and the code they came from."""

    def __init__(self) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        reads = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in reads and not _host_only():
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.count, self.mode = 0, Mode()

    def __enter__(self) -> _Reads:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def _host_only() -> bool:
    """Reads of tensors that live on the host on any machine: a DataLoader draws its workers' base seed from
    its CPU generator once per epoch (Accelerate's loader), and torch's CPU Adam keeps its step count on the
    host (the fused CUDA kernel keeps it on the GPU)."""
    import traceback

    return any(frame.filename.endswith("torch/utils/data/dataloader.py") or "/torch/optim/" in frame.filename
               for frame in traceback.extract_stack())


def _setup(model_dir: str, n: int):
    return demo_classifier(model_dir, n, seed=5, max_length=128, dropout=0.1, pooling="mean")


@pytest.mark.parametrize("backend_name", list(BACKENDS))
@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_modernbert"])
def test_a_group_of_padded_micro_batches_reads_nothing_from_the_device(request, model_fixture, backend_name):
    """Both backends, BERT and ModernBERT (two masks), micro-batches with padding, and the micro-batch norms
    gathered as on a GPU (batched): not one value is read while the group is accumulated."""
    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup, build_backend
    from accumbench.backends.grad_norms import MicroBatchGradNorms

    model, batch_for = _setup(request.getfixturevalue(model_fixture), 40)
    group = accumulation.cut_group(list(range(40)), 12)  # 12/12/12/4
    assert all(batch_for(m.indices)["attention_mask"] is not None for m in group.micro_batches)  # padded
    backend = build_backend(backend_name, model, BackendSetup(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, total_steps=1,
        precision="bf16", accumulation_steps=4, micro_batch_size=12))
    backend.noise_norms = MicroBatchGradNorms(model.parameters(), backend.device, batched=True)
    steps = backend.accumulated([group], batch_for)
    with _Reads() as reads:
        _, loss_sum, _ = next(steps)
    assert reads.count == 0
    assert loss_sum.item() > 0
    backend.close()


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_modernbert"])
def test_a_2d_mask_would_have_made_the_encoder_ask(request, model_fixture):
    """What the prebuilt mask saves: transformers' own mask building reads `.all()` of a 2D mask (once per mask:
    BERT builds one, ModernBERT two), and the prebuilt one gives the same hidden states, bit for bit."""
    import torch

    from accumbench.model import encoder_mask

    model, batch_for = _setup(request.getfixturevalue(model_fixture), 12)
    batch = batch_for(range(12))
    encoder = model.encoder.eval()
    with _Reads() as reads, torch.no_grad():
        stock = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert reads.count == (2 if model_fixture == "tiny_modernbert" else 1)
    with _Reads() as reads, torch.no_grad():
        mask = encoder_mask(encoder.config, batch["attention_mask"])
        prebuilt = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    assert reads.count == 0
    real = batch["attention_mask"].bool()
    assert torch.equal(stock[real], prebuilt[real])


def test_an_epoch_reads_the_device_once_per_optimizer_step(tiny_bert, monkeypatch):
    """Between groups the loop reads each step's numbers once, a step late: loss, correct, the micro-batch
    norms and the gradient norm in one tensor, one tolist(), however many micro-batches the step has."""
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup, build_backend

    model, batch_for = _setup(tiny_bert, 48)
    backend = build_backend("torch", model, BackendSetup(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="linear", warmup_ratio=0.0, total_steps=3,
        accumulation_steps=2, micro_batch_size=8))
    backend.measure_noise_scale()
    backend.noise_norms.batched = True  # as on a GPU: CPU norms read embedding rows with torch.unique
    groups = accumulation.plan_epoch(48, 16, 8, seed=0, epoch=1)
    tolist, lists = torch.Tensor.tolist, []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: lists.append(t.shape) or tolist(t))  # reads without dispatch
    with _Reads() as reads:
        stats = backend.train_epoch(groups, batch_for, 1, grad_clip=1.0, steps_before=0, samples_before=0)
    assert stats.optimizer_steps == 3 and stats.steps[-1]["noise_trace"] is not None
    assert reads.count == 0
    assert lists == [torch.Size([4])] * stats.optimizer_steps  # loss, correct, norms' sum, grad norm (counts: host)
    backend.close()
