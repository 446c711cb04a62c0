"""--group-by-length: each optimizer group sorted by length before it is cut into micro-batches.
Less padding, and the same samples in every group, hence the same gradient."""

from __future__ import annotations

import pytest
from conftest import query
from test_accumulation import _accumulated_gradient, _full_batch_gradient, _relative_error, _tiny_float64_setup
from test_train import train_cli

from accumbench.accumulation import cut_group, plan_epoch
from accumbench.data.pipeline import token_counts

LENGTHS = [(7 * i) % 61 + 3 for i in range(1000)]  # 3..63 tokens, scattered over the indices


def test_grouping_keeps_every_group_and_sorts_it_longest_first():
    plain = plan_epoch(1000, 64, 16, seed=1, epoch=1)
    grouped = plan_epoch(1000, 64, 16, seed=1, epoch=1, lengths=LENGTHS)
    assert [len(g) for g in grouped] == [64] * 15 + [40]  # the ragged tail stays ragged
    for a, b in zip(plain, grouped):
        assert sorted(a.indices) == sorted(b.indices)  # the same samples form each step
        assert [LENGTHS[i] for i in b.indices] == sorted((LENGTHS[i] for i in a.indices), reverse=True)
        assert [mb.weight for mb in a.micro_batches] == [mb.weight for mb in b.micro_batches]


def test_grouping_cuts_padding():
    def padding(groups):
        real, padded = token_counts((mb.indices for g in groups for mb in g.micro_batches), LENGTHS)
        return 1 - real / padded

    plain = padding(plan_epoch(1000, 256, 16, seed=1, epoch=1))
    grouped = padding(plan_epoch(1000, 256, 16, seed=1, epoch=1, lengths=LENGTHS))
    assert plain > 0.4 and grouped < 0.1  # 45% and 5% here


def test_token_counts_known_answer():
    # [3, 5] pads to 2 x 5 = 10 tokens with 8 real; [4] is 4 of 4; empty micro-batches count nothing.
    assert token_counts([(0, 1), (2,), ()], [3, 5, 4]) == (12, 14)


def test_a_grouped_ragged_group_has_the_full_batch_gradient(tiny_bert):
    model, split, batch_for = _tiny_float64_setup(tiny_bert, n=50)
    indices = list(range(50))
    full = _full_batch_gradient(model, batch_for, indices)
    by_length = sorted(indices, key=lambda i: -split.lengths[i])
    grouped, plain = cut_group(by_length, 16), cut_group(indices, 16)  # 16/16/16/2 either way
    assert [mb.indices for mb in grouped.micro_batches] != [mb.indices for mb in plain.micro_batches]
    assert _relative_error(_accumulated_gradient(model, grouped, batch_for), full) < 1e-12
    assert _relative_error(_accumulated_gradient(model, plain, batch_for), full) < 1e-12


def test_runs_record_padding_and_grouping_only_changes_the_padding(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    train_cli(tiny_bert, db, "--pooling", "mean")
    train_cli(tiny_bert, db, "--pooling", "mean", "--no-group-by-length")
    grouped, plain = (query(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", i) for i in (1, 2))
    for g, p in zip(grouped, plain):
        assert 0 <= g["padding_fraction"] < p["padding_fraction"] < 1
        assert g["tokens_per_second"] > 0
        # Same groups, same gradients (dropout 0; mean pooling ignores padding): the same run.
        assert g["train_loss"] == pytest.approx(p["train_loss"], rel=1e-4)
        assert g["val_loss"] == pytest.approx(p["val_loss"], rel=1e-4)
    configs = [row[0] for row in query(db, "SELECT config_json FROM runs ORDER BY id")]
    assert '"group_by_length": true' in configs[0] and '"group_by_length": false' in configs[1]
