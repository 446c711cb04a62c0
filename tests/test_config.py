"""The run configuration: validation, YAML with flags on top, and the stable config hash."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from accumbench.config import RunConfig
from accumbench.config_files import build_config
from accumbench.errors import UserError


def test_accumulation_steps_are_derived():
    assert RunConfig(effective_batch_size=256, micro_batch_size=64).accumulation_steps == 4
    assert json.loads(RunConfig(effective_batch_size=256, micro_batch_size=16).to_json())["accumulation_steps"] == 16


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(effective_batch_size=100, micro_batch_size=16), "use --effective-batch-size 96 or 112"),
        (dict(effective_batch_size=0), "--effective-batch-size must be a positive integer"),
        (dict(micro_batch_size=-8), "--micro-batch-size must be a positive integer"),
        (dict(epochs=0), "--epochs must be a positive integer"),
        (dict(lr=0.0), "--lr must be a positive number"),
        (dict(lr=-1e-5), "--lr must be a positive number"),
        (dict(max_length=0), "--max-length must be a positive integer"),
        (dict(max_train_samples=0), "--max-train-samples must be a positive integer"),
        (dict(optimizer="sgd"), "unknown --optimizer 'sgd'; choose one of: adam, adamw"),
        (dict(scheduler="step"), "choose one of: constant, linear, cosine"),
        (dict(pooling="max"), "choose one of: cls, mean"),
        (dict(dropout=1.0), "--dropout must be in [0, 1)"),
        (dict(warmup_ratio=1.5), "--warmup-ratio must be in [0, 1)"),
        (dict(grad_clip=0.0), "--grad-clip must be a positive norm"),
        (dict(epochs="five"), "--epochs must be int, got 'five'"),
        (dict(lr_scaling="cubic"), "unknown --lr-scaling 'cubic'; choose one of: none, linear, sqrt"),
        (dict(base_batch_size=0), "--base-batch-size must be a positive integer"),
        (dict(budget="steps"), "--budget steps needs the number of optimizer steps; pass e.g. --train-steps 200"),
        (dict(train_steps=100), "--train-steps only applies with --budget steps"),
        (dict(budget="steps", train_steps=0), "--train-steps must be a positive integer"),
        (dict(budget="tokens"), "unknown --budget 'tokens'; choose one of: epochs, steps"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(overrides, fragment):
    with pytest.raises(UserError) as err:
        RunConfig(**overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: bert\nlr: 3e-5\neffective_batch_size: 256\nmicro_batch_size: 64\ndrop_last: true\n")
    config = build_config(path, lr=1e-4, epochs=None)
    assert config.model == "bert"
    assert config.lr == 1e-4  # the flag wins
    assert config.epochs == 5  # the default stays where neither says anything
    assert config.effective_batch_size == 256 and config.accumulation_steps == 4
    assert config.drop_last is True
    assert isinstance(build_config(path).lr, float)  # PyYAML reads "3e-5" as a string


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("effective-batch-size: 64\n")
    with pytest.raises(UserError, match="unknown key 'effective-batch-size' in .*did you mean 'effective_batch_size'"):
        build_config(path)
    path.write_text("colour: blue\n")
    with pytest.raises(UserError, match="unknown key 'colour'.*valid keys: model, dataset"):
        build_config(path)


def test_missing_or_malformed_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        build_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a mapping"):
        build_config(listed)


def test_config_hash_tracks_only_result_changing_fields():
    base = RunConfig()
    assert base.config_hash == RunConfig().config_hash
    assert len(base.config_hash) == 16
    assert RunConfig(checkpoint=False).config_hash == base.config_hash
    for change in (dict(lr=1e-4), dict(seed=1), dict(effective_batch_size=128), dict(micro_batch_size=32),
                   dict(model="bert"), dict(max_eval_samples=10), dict(drop_last=True)):
        assert RunConfig(**change).config_hash != base.config_hash, change


def test_config_hash_is_stable_across_processes():
    """Python's str hash is salted per process; config_hash must not be."""
    code = "from accumbench.config import RunConfig; print(RunConfig(lr=2e-5).config_hash)"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {RunConfig(lr=2e-5).config_hash}


def test_lr_scaling_known_answers():
    assert RunConfig(lr=5e-5, effective_batch_size=256, lr_scaling="sqrt").scaled_lr == pytest.approx(1e-4, rel=1e-12)
    assert RunConfig(lr=5e-5, effective_batch_size=1024, lr_scaling="linear").scaled_lr == pytest.approx(8e-4, rel=1e-12)
    assert RunConfig(lr=5e-5, effective_batch_size=1024, lr_scaling="none").scaled_lr == 5e-5
    assert RunConfig(lr=1e-3, effective_batch_size=16, micro_batch_size=16, lr_scaling="linear",
                     base_batch_size=64).scaled_lr == pytest.approx(2.5e-4, rel=1e-12)  # scales down too
    assert json.loads(RunConfig(effective_batch_size=256, lr_scaling="sqrt").to_json())["scaled_lr"] == pytest.approx(1e-4)


def test_config_hash_of_earlier_runs_is_unchanged_by_later_fields():
    """Known answers computed by the accumbench that had no lr_scaling/budget/data_seed/group_by_length/
    compile fields and defaulted to precision "no": an earlier run's configuration must keep its hash,
    or sweeps would rerun it."""
    earlier = dict(precision="no", group_by_length=False)  # what every earlier run did
    assert RunConfig(**earlier).config_hash == "1b1878494661cbde"
    assert RunConfig(lr=2e-5, model="bert", effective_batch_size=256, **earlier).config_hash == "51b0240246335c22"
    # The new defaults name a different computation (grouped micro-batches; precision chosen per device).
    assert RunConfig().config_hash != RunConfig(**earlier).config_hash
    assert RunConfig(compile=False, **earlier).config_hash == "1b1878494661cbde"


def test_config_hash_ignores_settings_that_cannot_change_the_run():
    base = RunConfig()
    assert RunConfig(base_batch_size=256).config_hash == base.config_hash  # no scaling: the base is unused
    assert RunConfig(data_seed=42).config_hash == base.config_hash  # the split seed defaults to --seed
    assert RunConfig(data_seed=7).config_hash != base.config_hash
    steps = RunConfig(budget="steps", train_steps=100)
    assert RunConfig(budget="steps", train_steps=100, epochs=9).config_hash == steps.config_hash  # epochs unused
    assert RunConfig(lr_scaling="sqrt").config_hash != base.config_hash
    assert RunConfig(lr_scaling="sqrt", base_batch_size=32).config_hash != RunConfig(lr_scaling="sqrt").config_hash


def test_from_dict_round_trips_the_stored_config():
    config = RunConfig(lr_scaling="linear", budget="steps", train_steps=50, data_seed=3)
    assert RunConfig.from_dict(json.loads(config.to_json())) == config
