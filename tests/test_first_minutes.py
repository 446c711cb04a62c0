"""The first five minutes (issue 31): a mistyped model, backend, rule or metric answers in a second or two with
one `error:` line that names the fix ("did you mean 'bert'?"), exit 2, and writes nothing; a hub id with the
network out of reach says so once, with none of huggingface_hub's retry lines. Each command runs as a user runs
it: a fresh process in an empty directory, with the network unreachable (every request goes to a proxy on a
closed port, so it is refused at once) and HF_HUB_OFFLINE unset."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

CLOSED_PORT = "http://127.0.0.1:9"
UNSET = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ACCUMBENCH_DB", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def _accumbench(tmp_path, *args, files=None):
    """(error lines, exit code, seconds, what the directory holds after) for one command in an empty directory."""
    work = tmp_path / "work"
    work.mkdir()
    for name, text in (files or {}).items():
        (work / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    env.update(HTTPS_PROXY=CLOSED_PORT, HTTP_PROXY=CLOSED_PORT, https_proxy=CLOSED_PORT, http_proxy=CLOSED_PORT,
               HF_HUB_CACHE=str(tmp_path / "hub-cache"))  # nothing cached: the hub would be needed
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "accumbench", *args], cwd=work, capture_output=True, text=True,
                          env=env, timeout=300)
    seconds = time.monotonic() - started
    left = sorted(path.name for path in work.iterdir() if path.name not in (files or {}))
    assert done.stdout == "", done.stdout
    return done.stderr.splitlines(), done.returncode, seconds, left


@pytest.mark.parametrize("typo, alias", [("robert", "bert"), ("bret", "bert"), ("modernbrt", "modernbert"),
                                         ("minlm", "minilm")])
def test_a_model_alias_typo_answers_in_seconds_without_the_network(tmp_path, typo, alias):
    lines, code, seconds, left = _accumbench(tmp_path, "train", "--model", typo)
    assert lines == [f"error: unknown --model '{typo}'; choose one of: bert, modernbert, minilm, a local "
                     f"save_pretrained directory or a hub id; did you mean '{alias}'?"]
    assert code == 2 and left == []  # no runs.db, no runs.db-reserve, no checkpoints
    assert seconds < 5, f"{seconds:.1f} s"  # the bound; it was 55 s of retries before


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unknown_hub_id_with_no_network_says_so_once(tmp_path, command):
    lines, code, _, left = _accumbench(tmp_path, command, "--model", "someone/nothing-here")
    assert len(lines) == 1, lines  # no "Retrying in 8s [Retry 5/5]" lines before it
    assert lines[0].startswith("error: model 'someone/nothing-here' could not be loaded (not cached here, and "
                               "https://huggingface.co is unreachable: ")
    assert lines[0].endswith("); use an alias (bert, modernbert, minilm), a local save_pretrained directory, "
                             "or a hub id (offline, only cached ones work)")
    assert "Retry" not in lines[0]
    assert code == 2 and left == []


@pytest.mark.parametrize("args, files, line", [
    (["train", "--backend", "troch"], None,
     "error: unknown --backend 'troch'; choose one of: torch, accelerate; did you mean 'torch'?"),
    (["train", "--config", "run.yaml"], {"run.yaml": "backend: troch\n"},
     "error: in run.yaml: unknown --backend 'troch'; choose one of: torch, accelerate; did you mean 'torch'?"),
    (["sweep", "--config", "sweep.yaml", "--dry-run"], {"sweep.yaml": "lr_scaling: [none, sqroot]\n"},
     "error: in sweep.yaml: unknown --lr-scaling 'sqroot'; choose one of: none, linear, sqrt; did you mean 'sqrt'?"),
    (["report", "--metric", "val_acc"], None,
     "error: unknown --metric 'val_acc'; choose one of: val_accuracy, val_loss, val_f1, val_mcc (selection is on "
     "validation); did you mean 'val_accuracy'?"),
])
def test_a_mistyped_choice_gets_did_you_mean(tmp_path, args, files, line):
    lines, code, _, left = _accumbench(tmp_path, *args, files=files)
    assert lines == [line]
    assert code == 2 and left == []


def test_a_sweep_wide_flag_is_named_not_a_cell(tmp_path):
    """--lr-scaling sqroot is wrong for every cell alike: the error names the flag, not 'the cell EBS 16'."""
    lines, code, _, left = _accumbench(tmp_path, "sweep", "--lr-scaling", "sqroot", "--effective-batch-sizes",
                                       "16,32", "--dry-run")
    assert lines == ["error: unknown --lr-scaling 'sqroot'; choose one of: none, linear, sqrt; did you mean 'sqrt'?"]
    assert code == 2 and left == []
