"""`accumbench check-ga`: the accumulated gradient of each backend against the full batch."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.runtime import check_ga
from accumbench.runtime.check_ga import check_gradient_accumulation


def test_both_backends_are_exact_and_the_naive_rule_is_not(tiny_bert):
    torch_check, accelerate_check, static, naive = check_gradient_accumulation(tiny_bert, samples=50, micro_batch_size=16,
                                                                       max_length=48)
    assert (torch_check.name, accelerate_check.name, naive.name) == ("torch", "accelerate", "naive 1/4 rule")
    assert static.name == "torch, static shapes"  # what --compile trains at; CUDA graphs join on a GPU in bf16
    for check in (torch_check, accelerate_check, static):
        assert check.relative_deviation < 1e-5 and check.passed
        assert check.norm_ratio == pytest.approx(1.0, abs=1e-5)
    assert naive.relative_deviation > 1e-2 and naive.tolerance is None
    assert abs(naive.norm_ratio - 1) > 1e-2


def test_cli_prints_a_table_and_exits_0(tiny_bert):
    result = CliRunner().invoke(app, ["check-ga", "--model", tiny_bert, "--samples", "40", "--micro-batch-size", "16",
                                      "--max-length", "32"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS") == 3 and "naive 1/3 rule" in result.output and "FAIL" not in result.output


def test_cli_exits_1_when_a_backend_misses_the_tolerance(tiny_bert, monkeypatch):
    monkeypatch.setitem(check_ga.TOLERANCES, "no", 1e-15)  # float32 summation order alone exceeds this
    result = CliRunner().invoke(app, ["check-ga", "--model", tiny_bert, "--samples", "40", "--micro-batch-size", "16",
                                      "--backend", "torch", "--max-length", "32"], terminal_width=120)
    assert result.exit_code == 1
    assert "FAIL" in result.output and "accelerate" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--backend", "jax"], "unknown --backend 'jax'"),
    (["--samples", "16", "--micro-batch-size", "16"], "leaves nothing to accumulate"),
    (["--precision", "fp8"], "unknown --precision 'fp8'"),
])
def test_bad_input_exits_2(args, message):
    result = CliRunner().invoke(app, ["check-ga", *args])
    assert result.exit_code == 2 and message in result.stderr
