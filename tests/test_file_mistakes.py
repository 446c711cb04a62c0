"""Every mistake in a run or sweep file at once: one error line that names them all (how many, then each in
its usual words, joined by "; "), exit 2, and nothing written. A file with one mistake reads as it always has."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from accumbench.cli.app import app
from accumbench.config import CONFIG_KEYS


def _refused(tmp_path, monkeypatch, command: str, text: str, *flags: str) -> tuple[str, str]:
    """Run `accumbench COMMAND --config FILE` in an empty working directory: (the error line, the file's path)."""
    config, work = tmp_path / f"{command}.yaml", tmp_path / "work"
    config.write_text(text)
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, [command, "--config", str(config), *flags])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == "", result.stderr
    assert list(work.iterdir()) == [], "bad input must write nothing (no runs.db, no checkpoints)"
    return lines[0], str(config)


def test_two_trainer_keys_in_a_run_file_are_both_named(tmp_path, monkeypatch):
    line, config = _refused(tmp_path, monkeypatch, "train", "num_train_epochs: 3\nlearning_rate: 2e-5\n")
    assert line == (f"error: {config} has 2 problems: unknown key 'num_train_epochs'; did you mean 'epochs'? (the "
                    "Hugging Face Trainer's num_train_epochs); unknown key 'learning_rate'; did you mean 'lr'? (the "
                    "Hugging Face Trainer's learning_rate)")


def test_an_unknown_key_and_a_bad_value_are_both_named(tmp_path, monkeypatch):
    line, config = _refused(tmp_path, monkeypatch, "train", "epochz: 3\nepochs: -1\n", "--epochs", "1")
    assert line == (f"error: {config} has 2 problems: unknown key 'epochz'; did you mean 'epochs'?; --epochs must be a "
                    "positive integer, got -1; pass a value >= 1 (even though --epochs on the command line overrides it)")


def test_every_bad_value_in_a_run_file_is_named(tmp_path, monkeypatch):
    line, config = _refused(tmp_path, monkeypatch, "train", "backend: troch\nepochs: -1\ndropout: 1.5\nlr: fast\n")
    assert line.startswith(f"error: {config} has 4 problems: unknown --backend 'troch'; ")
    for problem in ("; --epochs must be a positive integer, got -1; pass a value >= 1; ",
                    "; --dropout must be in [0, 1), got 1.5; pass e.g. --dropout 0.1; ",
                    "; --lr must be float, got 'fast'; fix the file"):
        assert problem in line + "; ", line


def test_keys_without_a_suggestion_get_the_list_of_keys_once(tmp_path, monkeypatch):
    line, config = _refused(tmp_path, monkeypatch, "train", "colour: red\nflavour: mint\n")
    assert line == (f"error: {config} has 2 problems: unknown key 'colour'; unknown key 'flavour'; "
                    f"valid keys: {', '.join(CONFIG_KEYS)}")


def test_a_sweep_file_with_a_bad_axis_value_and_a_trainer_key(tmp_path, monkeypatch):
    line, config = _refused(tmp_path, monkeypatch, "sweep", "effective_batch_sizes: [16, 0]\nlearning_rate: 2e-5\n")
    assert line == (f"error: {config} has 2 problems: unknown key 'learning_rate'; did you mean 'lr'? (the Hugging Face "
                    "Trainer's learning_rate); --effective-batch-size must be a positive integer, got 0; pass a value >= 1")


def test_a_sweep_file_names_its_list_and_option_mistakes_too(tmp_path, monkeypatch):
    text = "lr: [1e-5, 2e-5]\nepochs: [1, 2]\nmax_retries: -1\nrace_after: 0\n"
    line, config = _refused(tmp_path, monkeypatch, "sweep", text, "--max-retries", "2")
    assert line == (f"error: {config} has 4 problems: 'lr' takes one value in a sweep, got ['1e-5', '2e-5']; for a grid "
                    "of learning rates use 'lrs: [1e-5, 2e-5]' (or --lrs 1e-5,2e-5); 'epochs' takes one value in a "
                    "sweep, got [1, 2]; the grid axes are: models, backends, lr_scaling, scaling_rule, beta1_scaling, "
                    "beta2_scaling, eps_scaling, weight_decay_scaling, seeds, lrs, effective_batch_sizes, ebs_schedule; --max-retries "
                    "must be >= 0, got -1; 0 never retries a failed cell (even though --max-retries on the command line "
                    "overrides it); --race-after must be at least 1, got 0: a run can stop after its first epoch at the "
                    "earliest; e.g. --race-after 1")


@pytest.mark.parametrize("command, text, expected", [
    ("train", "learning_rate: 2e-5\n",
     "error: unknown key 'learning_rate' in {config}; did you mean 'lr'? (the Hugging Face Trainer's learning_rate)"),
    ("train", "epochs: -1\n", "error: in {config}: --epochs must be a positive integer, got -1; pass a value >= 1"),
    ("train", "epochs: five\n", "error: in {config}: --epochs must be int, got 'five'; fix the file"),
    ("sweep", "seeds: [1, x]\n", "error: in {config}: --seeds takes comma-separated values like 42,43,44; 'x' is not one"),
    ("sweep", "epochs: [1, 2]\n", "error: 'epochs' takes one value in a sweep, got [1, 2]; the grid axes are: models, "
                                  "backends, lr_scaling, scaling_rule, beta1_scaling, beta2_scaling, eps_scaling, "
                                  "weight_decay_scaling, seeds, lrs, effective_batch_sizes, ebs_schedule"),
])
def test_one_mistake_reads_as_it_always_has(tmp_path, monkeypatch, command, text, expected):
    line, config = _refused(tmp_path, monkeypatch, command, text)
    assert line == expected.format(config=config)
