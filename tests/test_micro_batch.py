"""--micro-batch-size auto: the largest power of two that fits, with the EBS kept (fake OOM on CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import query
from test_train import train_cli

from accumbench.backends.base import micro_batch_loss
from accumbench.config import RunConfig
from accumbench.errors import UserError
from accumbench.runtime import preparation
from accumbench.runtime.micro_batch import candidate_sizes, find_micro_batch_size, memory_probe


def test_candidates_are_powers_of_two_that_divide_the_ebs():
    assert candidate_sizes(1024, 1) == [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert candidate_sizes(96, 1) == [32, 16, 8, 4, 2, 1]
    assert candidate_sizes(256, 4) == [64, 32, 16, 8, 4, 2, 1]  # each process's share
    assert candidate_sizes(1024, 1, cap=32) == [32, 16, 8, 4, 2, 1]
    assert candidate_sizes(24, 1) == [8, 4, 2, 1]


def test_the_largest_size_that_fits_is_picked_largest_first():
    tried = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 48

    assert find_micro_batch_size(256, 1, fits) == 32
    assert tried == [256, 128, 64, 32]  # stops at the first fit
    with pytest.raises(UserError, match="not even a micro-batch of 1"):
        find_micro_batch_size(256, 1, lambda size: False)


def _fake_oom_above(limit: int):
    """A loss that runs out of memory (as CUDA would) for micro-batches larger than `limit`."""

    def loss_fn(model, batch):
        if batch["input_ids"].shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return micro_batch_loss(model, batch)[0]

    return loss_fn


def test_probe_survives_out_of_memory_and_leaves_the_model_untouched():
    model = torch.nn.Linear(4, 2)
    wrapped = _Classifier(model)
    before = [p.detach().clone() for p in wrapped.parameters()]
    fits = memory_probe(wrapped, torch.device("cpu"), 8, None, _fake_oom_above(8))
    assert fits(8) and not fits(16)
    assert all(p.grad is None for p in wrapped.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, wrapped.parameters()))

    def broken(model, batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # a real bug is not mistaken for a full GPU
        memory_probe(wrapped, torch.device("cpu"), 8, None, broken)(4)


class _Classifier(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.embed, self.linear = torch.nn.Embedding(10, 4), linear

    def forward(self, input_ids, attention_mask):
        return self.linear(self.embed(input_ids).mean(dim=1))


def test_auto_keeps_the_ebs_and_records_the_size_it_picked(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setattr(preparation, "micro_batch_loss", lambda model, batch: (_fake_oom_above(8)(model, batch), None))
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--micro-batch-size", "auto", "--epochs", "1")
    (run,) = query(db, "SELECT * FROM runs")
    assert (run["effective_batch_size"], run["micro_batch_size"], run["accumulation_steps"]) == (32, 8, 4)
    assert json.loads(run["config_json"])["micro_batch_size"] == "auto"
    (epoch,) = query(db, "SELECT * FROM epochs")
    assert epoch["samples_seen"] == 200 and epoch["optimizer_steps"] == 7  # ceil(200 / 32): the EBS held


def test_auto_trains_the_same_steps_as_the_size_it_picked(tiny_bert, tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--micro-batch-size", "8", "--epochs", "1")
    monkeypatch.setattr(preparation, "micro_batch_loss", lambda model, batch: (_fake_oom_above(8)(model, batch), None))
    train_cli(tiny_bert, db, "--micro-batch-size", "auto", "--epochs", "1")
    fixed, auto = (query(db, "SELECT loss, grad_norm FROM steps WHERE run_id = ? ORDER BY step", i) for i in (1, 2))
    assert [v for r in auto for v in r] == pytest.approx([v for r in fixed for v in r], rel=1e-6)


def test_auto_is_parsed_and_validated():
    assert RunConfig(micro_batch_size="auto").auto_micro_batch
    assert RunConfig(micro_batch_size="AUTO", effective_batch_size=96).accumulation_steps is None
    assert RunConfig(micro_batch_size="16").micro_batch_size == 16
    with pytest.raises(UserError, match="--micro-batch-size must be int or auto"):
        RunConfig(micro_batch_size="big")
    assert RunConfig(micro_batch_size="auto").with_micro_batch_size(8).accumulation_steps == 8
