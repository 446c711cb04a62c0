"""The gradient noise scale: known answers for the estimator, the hooks that read each micro-batch's
gradient inside the accumulation loop, and the critical-batch-size fit."""

from __future__ import annotations

import copy
import math
import random
import statistics

import pytest
from conftest import demo_classifier

from accumbench.backends.grad_norms import MicroBatchGradNorms
from accumbench.noise_scale import (
    CriticalBatchFit,
    GroupNorms,
    NoiseScaleEMA,
    fit_critical_batch_size,
    nearest_tried,
    steps_to_target,
)

# --- linear regression, where B_simple has a closed form ----------------------------------------------
# x ~ N(0, I_d), y = x·w* + ε, ε ~ N(0, σ²), loss ½(x·w − y)², parameters w = w* + δ held fixed.
# The per-sample gradient is x(x·δ − ε): its mean is δ, so |G|² = |δ|², and
# tr(Σ) = E|x|²(x·δ − ε)² − |δ|² = (d+2)|δ|² + dσ² − |δ|² = (d+1)|δ|² + dσ².
D, SIGMA, DELTA_SQ = 10, 0.5, 0.8626
TRUE_B_SIMPLE = (D + 1) + D * SIGMA**2 / DELTA_SQ  # 13.898


def _linear_regression_run(steps: int, micro_sizes: list[int], loss_scale: float = 1.0, decay: float = 0.999,
                           seed: int = 0) -> tuple[float, list[float]]:
    """(B_simple from the EMAs, the per-step ratios S_est/|G|²_est) over `steps` groups cut into
    `micro_sizes`, measured through MicroBatchGradNorms exactly as the backends do: each micro-batch's
    loss weighted by n_micro/n_group, backpropagated into .grad, the hooks reading each backward."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(D, generator=generator, dtype=torch.float64)
    delta *= math.sqrt(DELTA_SQ) / delta.norm()
    w_star = torch.randn(D, generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    norms = MicroBatchGradNorms(model.parameters(), "cpu")
    ema, ratios, group_size = NoiseScaleEMA(decay), [], sum(micro_sizes)
    x_all = torch.randn(steps, group_size, D, generator=generator, dtype=torch.float64)
    y_all = x_all @ w_star + SIGMA * torch.randn(steps, group_size, generator=generator, dtype=torch.float64)
    for step in range(steps):
        model.zero_grad()
        start = 0
        for size in micro_sizes:
            x, y = x_all[step, start : start + size], y_all[step, start : start + size]
            start += size
            weight = size / group_size
            loss = 0.5 * ((model(x)[:, 0] - y) ** 2).mean()
            (loss * weight * loss_scale).backward()
            norms.micro_batch_done(size, weight)
        micro_sq_sum, inverse_size_sum, k = norms.take()
        group_sq = float(model.weight.grad.norm() ** 2)
        grad_sq, trace = GroupNorms(float(micro_sq_sum), inverse_size_sum, k, group_size, group_sq).estimates()
        ema.update(grad_sq, trace)
        ratios.append(trace / grad_sq)
    norms.close()
    return ema.noise_scale, ratios


def test_linear_regression_known_answer_and_not_a_mean_of_ratios():
    """b = 8, k = 16: the estimator lands within 2% of 13.898; a mean of per-step ratios lands ~4% high."""
    estimate, ratios = _linear_regression_run(steps=3000, micro_sizes=[8] * 16)
    assert estimate == pytest.approx(TRUE_B_SIMPLE, rel=0.02)
    mean_of_ratios = statistics.mean(ratios)
    assert mean_of_ratios == pytest.approx(14.46, rel=0.02)  # the biased way, for contrast
    assert abs(estimate - mean_of_ratios) / TRUE_B_SIMPLE > 0.02  # and the implementation is not it


def test_a_ragged_group_is_still_unbiased():
    """Micro-batches of 8 x 15 and a short 3 (a group of 123): 1/b is the mean of 1/b_j."""
    estimate, _ = _linear_regression_run(steps=2000, micro_sizes=[8] * 15 + [3], seed=1)
    assert estimate == pytest.approx(TRUE_B_SIMPLE, rel=0.03)
    # Treating the short micro-batch as a full one (b = 8) is measurably off: the harmonic mean matters.
    norms = GroupNorms(micro_sq_sum=16 * 2.0, inverse_size_sum=15 / 8 + 1 / 3, micro_batches=16, group_size=123,
                       group_sq=1.0)
    as_if_full = GroupNorms(32.0, 16 / 8, 16, 123, 1.0)
    assert norms.estimates()[1] != pytest.approx(as_if_full.estimates()[1], rel=0.05)


def test_scaling_the_loss_leaves_b_simple_unchanged():
    unscaled, _ = _linear_regression_run(steps=200, micro_sizes=[8] * 4, seed=2)
    scaled, _ = _linear_regression_run(steps=200, micro_sizes=[8] * 4, seed=2, loss_scale=1024.0)
    assert scaled == pytest.approx(unscaled, rel=1e-9)


def test_estimates_on_exact_norms():
    """k = 2 micro-batches of 4 in a group of 8: |G_small|² = 5, |G_big|² = 3 give
    |G|² = (8·3 − 4·5)/4 = 1 and S = (5 − 3)/(1/4 − 1/8) = 16."""
    assert GroupNorms(10.0, 0.5, 2, 8, 3.0).estimates() == pytest.approx((1.0, 16.0))
    assert not GroupNorms(5.0, 0.25, 1, 4, 5.0).usable  # k = 1: one batch size only
    assert not GroupNorms(math.inf, 0.5, 2, 8, 3.0).usable  # an fp16 overflow


def test_ema_is_bias_corrected_and_keeps_its_components_apart():
    ema = NoiseScaleEMA(decay=0.9)
    assert ema.noise_scale is None
    ema.update(grad_sq=2.0, trace=100.0)
    assert (ema.grad_sq, ema.trace, ema.noise_scale) == pytest.approx((2.0, 100.0, 50.0))  # no pull towards 0
    ema.update(grad_sq=0.5, trace=100.0)
    # (0.9·0.1·2 + 0.1·0.5) / (1 − 0.81) = 1.2105...; the ratio is of the averages, not an average of 50 and 200.
    assert ema.grad_sq == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 0.5) / 0.19)
    assert ema.noise_scale == pytest.approx(100.0 / ema.grad_sq)
    ema.update(grad_sq=-10.0, trace=1.0)
    assert math.isnan(ema.noise_scale)  # EMA(|G|²) <= 0: beyond what these batch sizes resolve


# --- the hooks inside the real accumulation loop ----------------------------------------------------------


def _tiny_setup(tiny_bert, n: int):
    return demo_classifier(tiny_bert, n, seed=3, max_length=24)


def _fresh_micro_norms(model, batches, precision: str) -> list[float]:
    """|g_j|² by a separate backward pass per micro-batch, on a copy: fp32 directly; fp16 through a
    GradScaler's own scale-and-unscale, as a user would."""
    import torch

    from accumbench.backends.base import micro_batch_loss

    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=precision == "fp16")
    out = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16"):
            loss, _ = micro_batch_loss(model, batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        out.append(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
        scaler.update()
    return out


@pytest.mark.parametrize("batched", [False, True], ids=["norm-in-hook", "batched-norm"])
@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_norms_gathered_in_the_loop_equal_fresh_backward_passes(tiny_bert, precision, batched):
    """One optimizer group through TorchBackend.train_epoch with the noise scale on: the mean |g_j|² it
    records equals separate backward passes (1e-5 relative), also under fp16 with a GradScaler at
    2^12, and the step's |G|² and tr(Σ) follow from it and the step's gradient norm. Both ways of
    taking the norms (in the hook, the CPU's; batched after the backward, CUDA's) are checked here."""
    import torch

    from accumbench import accumulation
    from accumbench.backends.base import BackendSetup
    from accumbench.backends.torch_loop import TorchBackend

    model, batch_for = _tiny_setup(tiny_bert, 50)  # fp32 weights; under fp16 autocast runs fp16 matmuls over them
    # fp32 path: a ragged group of 50 = 16 + 16 + 16 + 2; fp16: 4 x 8 (power-of-two weights stay exact in fp16).
    samples, micro = (50, 16) if precision == "no" else (32, 8)
    group = accumulation.cut_group(list(range(samples)), micro)
    batches = [batch_for(mb.indices) for mb in group.micro_batches]
    reference = _fresh_micro_norms(model, batches, precision)

    backend = TorchBackend(model, BackendSetup(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant",
                                               warmup_ratio=0.0, total_steps=1, precision=precision))
    if precision == "fp16":
        backend.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    backend.measure_noise_scale()
    assert backend.noise_norms.batched is False  # the CPU's default
    backend.noise_norms.close()
    backend.noise_norms = MicroBatchGradNorms(model.parameters(), "cpu", batched=batched)
    stats = backend.train_epoch([group], batch_for, 1, grad_clip=None, steps_before=0, samples_before=0)
    backend.close()
    row = stats.steps[0]
    assert row["micro_grad_sq"] == pytest.approx(statistics.mean(reference), rel=1e-5)
    # The step's estimates are App. A.1's formulas of those norms and the step's gradient norm. (From the
    # fresh passes' norms they agree only to ~1e-4 here: tr(Σ) is a difference of two nearly equal
    # squared norms, both about 206 at this random tiny model, where tr(Σ) is 1.8: 1e-6 in a norm is 1e-4 in it.)
    sizes = [len(mb) for mb in group.micro_batches]
    expected = GroupNorms(row["micro_grad_sq"] * len(sizes), sum(1 / s for s in sizes), len(sizes), samples,
                          row["grad_norm"] ** 2)
    assert (row["noise_grad_sq"], row["noise_trace"]) == pytest.approx(expected.estimates(), rel=1e-9)
    fresh = GroupNorms(sum(reference), sum(1 / s for s in sizes), len(sizes), samples, row["grad_norm"] ** 2)
    assert row["noise_trace"] == pytest.approx(fresh.estimates()[1], rel=1e-3)
    # One step's |G|² estimate can come out negative (it is a small difference of noisy norms): then
    # B_simple is NaN, "beyond resolution", never a negative batch size.
    if row["noise_grad_sq"] > 0:
        assert row["noise_scale"] == pytest.approx(row["noise_trace"] / row["noise_grad_sq"], rel=1e-12)
    else:
        assert math.isnan(row["noise_scale"])
    assert stats.noise_columns()["noise_steps"] == 1


def test_hooks_are_removed_on_close(tiny_bert):
    from accumbench.backends.base import BackendSetup
    from accumbench.backends.torch_loop import TorchBackend

    model, _ = _tiny_setup(tiny_bert, 8)
    backend = TorchBackend(model, BackendSetup(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="constant",
                                               warmup_ratio=0.0, total_steps=1))
    backend.measure_noise_scale()
    hooked = backend.noise_norms
    backend.close()
    assert hooked._handles == []
    assert all(not p._backward_hooks for p in model.parameters())


# --- the critical batch size ----------------------------------------------------------------------------

BATCHES = (16, 64, 256, 1024)


def test_fit_recovers_b_crit_exactly_from_the_model():
    """S(B) = 1000·(1 + 200/B): S_min = 1000 steps, E_min = 200,000 samples, B_crit = 200."""
    fit = fit_critical_batch_size([(b, 1000 * (1 + 200 / b)) for b in BATCHES])
    assert isinstance(fit, CriticalBatchFit)
    assert fit.s_min == pytest.approx(1000, rel=1e-9) and fit.e_min == pytest.approx(200_000, rel=1e-9)
    assert fit.b_crit == pytest.approx(200, rel=1e-9)
    assert fit.relative_rms_residual < 1e-12 and fit.b_crit_in_tried_range


def test_fit_with_5_percent_noise_lands_within_25_percent():
    """Multiplicative 5% noise on every S(B), 200 draws: B_crit within ±25% in at least 98% of them."""
    close = 0
    for seed in range(200):
        rng = random.Random(seed)
        fit = fit_critical_batch_size([(b, 1000 * (1 + 200 / b) * (1 + 0.05 * rng.gauss(0, 1))) for b in BATCHES])
        close += fit.b_crit is not None and abs(fit.b_crit / 200 - 1) <= 0.25
        assert 0 < fit.relative_rms_residual < 0.2
    assert close >= 196


def test_fit_of_the_wrong_shape_has_no_b_crit():
    assert fit_critical_batch_size([(16, 100), (64, 101), (256, 103)]).b_crit is None  # steps do not fall with B
    flat = fit_critical_batch_size([(16, 100), (64, 100), (256, 100)])
    assert flat.e_min == pytest.approx(0, abs=1e-6) and flat.b_crit is None  # E_min ~1e-29 is rounding
    early = fit_critical_batch_size([(16, 1000), (64, 900), (256, 890)])  # levels off at once
    assert early.b_crit == pytest.approx(2.2, abs=0.1) and not early.b_crit_in_tried_range  # an extrapolation
    assert fit_critical_batch_size([(16, 1600), (64, 400), (256, 100)]).b_crit is None  # S = 25,600/B: no floor yet
    with pytest.raises(ValueError, match="two effective batch sizes"):
        fit_critical_batch_size([(64, 10.0)])


def test_steps_to_target_interpolates_between_evaluations():
    points = [(10, 0.60), (20, 0.80), (30, 0.90)]
    assert steps_to_target(points, 0.85) == pytest.approx(25.0)
    assert steps_to_target(points, 0.60) == 10.0  # reached at the first evaluation
    assert steps_to_target([(10, 0.9)], 0.5) == 10.0  # no earlier evaluation to interpolate from
    assert steps_to_target(points, 0.95) is None


def test_nearest_tried_size_is_on_a_log_scale():
    assert nearest_tried(180, [64, 256, 1024]) == 256  # 180/64 = 2.8 against 256/180 = 1.4
    assert nearest_tried(120, [64, 256, 1024]) == 64  # 120/64 = 1.9 against 256/120 = 2.1


# --- end to end: the noise scale in a run, and evaluations between epochs' ends ------------------------

TRAIN = ["train", "--dataset", "demo", "--max-train-samples", "120", "--max-eval-samples", "48", "--max-length", "32",
         "--epochs", "2", "--effective-batch-size", "32", "--micro-batch-size", "8", "--lr", "1e-3", "--no-checkpoint"]


def _train(db, *args):
    from typer.testing import CliRunner

    from accumbench.cli.app import app

    result = CliRunner().invoke(app, [*TRAIN, "--db", str(db), *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_eval_every_evaluates_the_model_as_that_step_left_it(tiny_bert, tmp_path):
    """120 samples at EBS 32: 4 steps an epoch (the last of 24). --eval-every 3 evaluates at steps 3 and 6;
    the run trained for exactly 3 steps (--budget steps) ends with the same validation loss, and the
    evaluations change nothing in the training."""
    from conftest import query

    db = tmp_path / "runs.db"
    _train(db, "--model", tiny_bert, "--eval-every", "3")
    _train(db, "--model", tiny_bert, "--budget", "steps", "--train-steps", "3", "--epochs", "1")
    _train(db, "--model", tiny_bert)
    evals = query(db, "SELECT step, epoch, samples_seen, val_loss, val_accuracy FROM evals WHERE run_id = 1 ORDER BY step")
    assert [(e["step"], e["epoch"], e["samples_seen"]) for e in evals] == [(3, 1, 96), (6, 2, 120 + 64)]
    (three_steps,) = query(db, "SELECT val_loss, val_accuracy FROM epochs WHERE run_id = 2")
    assert evals[0]["val_loss"] == pytest.approx(three_steps["val_loss"], rel=1e-9)
    with_evals, without = (query(db, "SELECT val_loss, train_loss, noise_scale FROM epochs WHERE run_id = ? ORDER BY epoch", r)
                           for r in (1, 3))
    assert [tuple(r) for r in with_evals] == [tuple(r) for r in without]
    assert query(db, "SELECT COUNT(*) FROM evals WHERE run_id = 3")[0][0] == 0


def test_k_of_one_or_no_noise_scale_records_none(tiny_bert, tmp_path):
    from conftest import query

    db = tmp_path / "runs.db"
    _train(db, "--model", tiny_bert, "--micro-batch-size", "32")  # k = 1
    _train(db, "--model", tiny_bert, "--no-noise-scale")
    _train(db, "--model", tiny_bert, "--noise-scale-every", "2")
    for run_id in (1, 2):
        assert {r[0] for r in query(db, "SELECT noise_scale FROM epochs WHERE run_id = ?", run_id)} == {None}
        assert {r[0] for r in query(db, "SELECT micro_grad_sq FROM steps WHERE run_id = ?", run_id)} == {None}
    # Every 2nd step carries the noise columns (the ragged last group of 24 = 8 x 3 is measured too).
    rows = query(db, "SELECT step, micro_grad_sq FROM steps WHERE run_id = 3 ORDER BY step")
    assert [r["step"] for r in rows if r["micro_grad_sq"] is not None] == [2, 4, 6, 8]
    assert [r[0] for r in query(db, "SELECT noise_steps FROM epochs WHERE run_id = 3")] == [4, 4]
    # The hash ignores the measurement: the same training, the same cell of a sweep.
    hashes = [r[0] for r in query(db, "SELECT config_hash FROM runs ORDER BY id")]
    assert hashes[1] == hashes[2] != hashes[0]
