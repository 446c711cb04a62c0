"""Every batch-size-dependent optimizer setting scaled with the EBS: known answers for every rule at kappa 4 and
1/4, the bundle, what the torch optimizer really holds and what the store records, the sweep axes, the rule
bundles of pick-best --compare-protocols, pick-best --save-config round trips, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.config import RunConfig
from accumbench.errors import UserError

# kappa = EBS / base: 4 is EBS 256 from base 64, 1/4 is EBS 16 from base 64.
UP, DOWN = dict(effective_batch_size=256, base_batch_size=64), dict(effective_batch_size=16, base_batch_size=64)


def test_every_rule_at_kappa_4_and_a_quarter_by_hand():
    # lr: sqrt doubles at kappa 4 and halves at 1/4; linear multiplies by kappa.
    assert RunConfig(lr=1e-4, lr_scaling="sqrt", **UP).optimizer_settings.lr == pytest.approx(2e-4, rel=1e-12)
    assert RunConfig(lr=1e-4, lr_scaling="sqrt", **DOWN).optimizer_settings.lr == pytest.approx(5e-5, rel=1e-12)
    assert RunConfig(lr=1e-4, lr_scaling="linear", **UP).optimizer_settings.lr == pytest.approx(4e-4, rel=1e-12)
    # beta ** kappa. 0.999^4 = 0.996005996001 (binomial: 1 - 4e-3 + 6e-6 - 4e-9 + 1e-12); 0.999^(1/4) = 0.99974990...
    up = RunConfig(adam_beta1=0.9, adam_beta2=0.999, beta1_scaling="half-life", beta2_scaling="half-life", **UP)
    assert up.optimizer_settings.beta2 == pytest.approx(0.996005996001, abs=1e-15)
    assert up.optimizer_settings.beta1 == pytest.approx(0.6561, abs=1e-15)  # 0.9^4
    down = RunConfig(adam_beta1=0.9, adam_beta2=0.999, beta1_scaling="half-life", beta2_scaling="half-life", **DOWN)
    assert down.optimizer_settings.beta2 == pytest.approx(0.9997499061952749, abs=1e-15)
    assert down.optimizer_settings.beta1 == pytest.approx(0.9740037464252967, abs=1e-15)  # 0.81^(1/8)...: sqrt(sqrt(0.9))
    assert down.optimizer_settings.beta1 ** 4 == pytest.approx(0.9, abs=1e-14)
    # The half-life in samples is the same: log(1/2)/log(beta) steps of EBS samples.
    half_life = lambda beta, ebs: math.log(0.5) / math.log(beta) * ebs  # noqa: E731
    assert half_life(up.optimizer_settings.beta2, 256) == pytest.approx(half_life(0.999, 64), rel=1e-12)
    # eps / sqrt(kappa): halves at 4, doubles at 1/4.
    assert RunConfig(adam_eps=1e-8, eps_scaling="sqrt", **UP).optimizer_settings.eps == pytest.approx(5e-9, rel=1e-12)
    assert RunConfig(adam_eps=1e-8, eps_scaling="sqrt", **DOWN).optimizer_settings.eps == pytest.approx(2e-8, rel=1e-12)
    # wd * kappa * lr_base / lr: at kappa 4 with lr x2 (sqrt) that is 2 wd; with the lr unscaled 4 wd; linear 1 wd.
    timescale = dict(weight_decay=0.01, weight_decay_scaling="timescale", optimizer="adamw")
    assert RunConfig(lr_scaling="sqrt", **timescale, **UP).optimizer_settings.weight_decay == pytest.approx(0.02)
    assert RunConfig(lr_scaling="none", **timescale, **UP).optimizer_settings.weight_decay == pytest.approx(0.04)
    assert RunConfig(lr_scaling="linear", **timescale, **UP).optimizer_settings.weight_decay == pytest.approx(0.01)
    assert RunConfig(lr_scaling="sqrt", **timescale, **DOWN).optimizer_settings.weight_decay == pytest.approx(0.005)
    # none leaves every setting where it was, at any kappa.
    plain = RunConfig(adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6, weight_decay=0.1, **UP).optimizer_settings
    assert (plain.lr, plain.beta1, plain.beta2, plain.eps, plain.weight_decay) == (5e-5, 0.8, 0.99, 1e-6, 0.1)


def test_sde_bundle_sets_its_rules_and_refuses_a_contradiction():
    sde = RunConfig(scaling_rule="sde", **UP)
    assert sde.rules == {"lr_scaling": "sqrt", "beta1_scaling": "half-life", "beta2_scaling": "half-life",
                         "eps_scaling": "sqrt", "weight_decay_scaling": "none"}
    assert sde.rule_bundle == "sde"
    spelled_out = RunConfig(lr_scaling="sqrt", beta1_scaling="half-life", beta2_scaling="half-life", eps_scaling="sqrt",
                            **UP)
    assert spelled_out.config_hash == sde.config_hash and spelled_out.rule_bundle == "sde"
    assert RunConfig(scaling_rule="sde", lr_scaling="sqrt", **UP).config_hash == sde.config_hash  # agreeing is fine
    with pytest.raises(UserError, match="--scaling-rule sde sets --lr-scaling sqrt, but --lr-scaling is linear"):
        RunConfig(scaling_rule="sde", lr_scaling="linear")
    assert RunConfig(beta2_scaling="half-life", lr_scaling="sqrt", **UP).rule_bundle == "sqrt lr, β2 half-life"
    assert RunConfig.from_dict(sde.to_dict()) == sde  # the stored config (with its scaled values) reads back


def test_config_hash_keeps_earlier_runs_and_says_nothing_of_rules_that_change_nothing():
    assert RunConfig().config_hash == "5b12823328d1de40"  # the default run's hash before these settings existed
    base = dict(effective_batch_size=64, base_batch_size=64)
    rules = dict(beta1_scaling="half-life", beta2_scaling="half-life", eps_scaling="sqrt")
    assert RunConfig(**rules, **base).config_hash == RunConfig().config_hash  # kappa 1: every rule is the identity
    assert RunConfig(**rules, **UP).config_hash != RunConfig(**UP).config_hash
    assert RunConfig(beta2_scaling="half-life", **UP).config_hash != RunConfig(beta1_scaling="half-life", **UP).config_hash
    assert RunConfig(adam_beta2=0.98).config_hash != RunConfig().config_hash


@pytest.mark.parametrize("backend", ["torch", "accelerate"])
def test_the_optimizer_holds_the_recorded_settings(tiny_bert, tmp_path, backend):
    """The values recorded on the run are the ones in the torch optimizer's param_groups, and the run's own."""
    from accumbench.runtime.preparation import make_backend, prepare

    config = RunConfig(model=tiny_bert, dataset="demo", backend=backend, effective_batch_size=32, micro_batch_size=8,
                       base_batch_size=8, scaling_rule="sde", weight_decay=0.01, weight_decay_scaling="timescale",
                       optimizer="adamw", max_train_samples=64, max_eval_samples=32, max_length=32, epochs=1,
                       checkpoint=False)
    optimizer = make_backend(prepare(config)).optimizer
    group = optimizer.param_groups[0]
    # kappa 4: lr x2, betas ^4, eps / 2, wd x 4 / 2.
    assert group["lr"] == pytest.approx(1e-4, rel=1e-12)
    assert group["betas"] == pytest.approx((0.6561, 0.996005996001), abs=1e-15)
    assert group["eps"] == pytest.approx(5e-9, rel=1e-12) and group["weight_decay"] == pytest.approx(0.02)

    db = tmp_path / "runs.db"
    flags = ["--model", tiny_bert, "--dataset", "demo", "--backend", backend, "--effective-batch-size", "32",
             "--micro-batch-size", "8", "--base-batch-size", "8", "--scaling-rule", "sde", "--weight-decay", "0.01",
             "--weight-decay-scaling", "timescale", "--optimizer", "adamw", "--max-train-samples", "64",
             "--max-eval-samples", "32", "--max-length", "32", "--epochs", "1", "--no-checkpoint"]
    result = CliRunner().invoke(app, ["train", *flags, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "adamw β1 0.6561, β2 0.996006, ε 5e-09, wd 0.02 (sde, wd timescale" in " ".join(result.output.split())
    (run,) = query(db, "SELECT * FROM runs")
    recorded = (run["lr"], run["beta1"], run["beta2"], run["eps"], run["weight_decay"])
    assert recorded == pytest.approx((group["lr"], *group["betas"], group["eps"], group["weight_decay"]), abs=1e-15)
    assert (run["lr_scaling"], run["beta1_scaling"], run["beta2_scaling"], run["eps_scaling"],
            run["weight_decay_scaling"]) == ("sqrt", "half-life", "half-life", "sqrt", "timescale")
    assert run["scaling_rule"] == "sde, wd timescale"
    assert json.loads(run["config_json"])["scaled_beta2"] == pytest.approx(0.996005996001, abs=1e-15)


def test_rules_are_sweep_axes_and_the_base_ebs_cell_is_shared(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--effective-batch-sizes", "16,64", "--micro-batch-size", "16",
                                      "--base-batch-size", "16", "--lr-scaling", "sqrt", "--scaling-rule", "none,sde",
                                      "--beta2-scaling", "none", "--dry-run"])
    assert result.exit_code == 0, result.output
    # 2 bundles x 2 EBS, but at EBS 16 (kappa 1) sqrt lr and sde train the same: one cell.
    assert "2 rule bundles x 2 EBS = 3 distinct cells" in result.output
    # '#  model  EBS  micro x k  backend  seed  rules  lr ...': the rules are the 9th word.
    rows = [line.split() for line in result.output.splitlines() if " minilm " in line]
    assert sorted((row[2], row[8]) for row in rows) == [("16", "sqrt"), ("64", "sde"), ("64", "sqrt")]


@pytest.mark.parametrize("flags, message", [
    (["--beta2-scaling", "quadratic"], "unknown --beta2-scaling 'quadratic'; choose one of: none, half-life"),
    (["--scaling-rule", "adam"], "unknown --scaling-rule 'adam'; choose one of: none, sde"),
    (["--eps-scaling", "linear"], "unknown --eps-scaling 'linear'; choose one of: none, sqrt"),
    (["--weight-decay-scaling", "sqrt"], "unknown --weight-decay-scaling 'sqrt'; choose one of: none, timescale"),
    (["--adam-beta2", "1"], "--adam-beta2 must be in (0, 1), got 1; pass e.g. --adam-beta2 0.999"),
    (["--adam-beta1", "0"], "--adam-beta1 must be in (0, 1), got 0; pass e.g. --adam-beta1 0.9"),
    (["--adam-beta1", "1.5"], "--adam-beta1 must be in (0, 1), got 1.5"),
    (["--adam-eps", "0"], "--adam-eps must be a positive number, got 0; pass e.g. --adam-eps 1e-8"),
    (["--adam-eps", "-1e-8"], "--adam-eps must be a positive number"),
    (["--scaling-rule", "sde", "--eps-scaling", "none", "--lr-scaling", "linear"], "--scaling-rule sde sets --lr-scaling"),
    (["--weight-decay-scaling", "timescale"], "--weight-decay-scaling timescale holds AdamW's timescale"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_bad_rules_and_settings_are_one_line_and_write_nothing(tmp_path, flags, message, command):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [command, *flags, "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_file_takes_the_rules_as_lists(tmp_path):
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump({"effective_batch_sizes": [16, 64], "micro_batch_size": 16, "base_batch_size": 16,
                                         "beta2_scaling": ["none", "half-life"], "adam_beta2": 0.98}))
    from accumbench.sweep.spec import build_spec

    spec = build_spec(spec_file)
    betas = sorted((c.effective_batch_size, round(c.optimizer_settings.beta2, 12)) for c in spec.cells)
    assert betas == [(16, 0.98), (64, round(0.98**4, 12)), (64, 0.98)]  # kappa 1: one cell


def test_rule_bundles_share_the_runs_that_trained_the_same_thing():
    import pandas as pd

    from accumbench.analysis.choice import rule_bundles

    plain_16, plain_64 = RunConfig(effective_batch_size=16), RunConfig(effective_batch_size=64)  # base 64, no rule
    scaled_16 = RunConfig(effective_batch_size=16, base_batch_size=16, beta2_scaling="half-life")  # kappa 1
    scaled_64 = RunConfig(effective_batch_size=64, base_batch_size=16, beta2_scaling="half-life")
    runs = pd.DataFrame({"run_id": [1, 2, 3], "config": [plain_16, plain_64, scaled_64]})
    bundles = {label: sorted(group["run_id"]) for label, group in rule_bundles(runs)}
    # The EBS 16 run without rules is what β2 half-life from EBS 16 trains there too (one config hash).
    assert scaled_16.config_hash == plain_16.config_hash
    assert bundles == {"none": [1, 2], "β2 half-life": [1, 3]}
    assert rule_bundles(runs[runs["run_id"] < 3]) == []  # one bundle: nothing to compare


def test_compare_protocols_adds_one_protocol_per_rule_bundle_and_the_report_shows_the_rules(tiny_bert, tmp_path):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [
        "sweep", "--model", tiny_bert, "--dataset", "demo", "--effective-batch-sizes", "8,16", "--micro-batch-size", "8",
        "--base-batch-size", "8", "--lrs", "1e-3,1e-2", "--beta2-scaling", "none,half-life", "--adam-beta2", "0.9",
        "--epochs", "1", "--max-train-samples", "48", "--max-eval-samples", "32", "--max-length", "16",
        "--no-checkpoint", "--no-noise-scale", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert len(query(db, "SELECT id FROM runs")) == 6  # EBS 8 (kappa 1) once per lr, EBS 16 per lr and bundle
    assert {(r["effective_batch_size"], round(r["beta2"], 12)) for r in query(db, "SELECT * FROM runs")} == {
        (8, 0.9), (16, 0.9), (16, 0.81)}

    result = CliRunner().invoke(app, ["pick-best", "--compare-protocols", "--json", "--db", str(db)])
    assert result.exit_code == 0, result.output
    [comparison] = json.loads(result.output)["comparisons"]
    by_name = {p["name"]: p for p in comparison["protocols"]}
    assert {"tuned", "tuned, rules none", "tuned, rules β2 half-life"} <= set(by_name)
    tried = {name: {b["effective_batch_size"]: [t["metric_mean"] for t in b["lrs_tried"]]
                    for b in by_name[name]["best_lr_per_ebs"]} for name in ("tuned, rules none", "tuned, rules β2 half-life")}
    # Both bundles tune EBS 8 on the same two runs; at EBS 16 each has its own two.
    assert tried["tuned, rules none"][8] == tried["tuned, rules β2 half-life"][8]
    assert set(tried["tuned, rules none"]) == set(tried["tuned, rules β2 half-life"]) == {8, 16}

    result = CliRunner().invoke(app, ["report", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "β2 half-life" in result.output and "β1/β2/ε/wd" in result.output and "0.9/0.81/" in result.output
