"""The CLI documents itself: every command has an example, the README documents every command, the README and
the docs/ pages it links document every flag, the `train` flags contract is intact, and `--help` stays free of
heavy imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from accumbench.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [cmd.name or cmd.callback.__name__.replace("_", "-") for cmd in app.registered_commands]
TRAIN_FLAGS = """--model --dataset --backend --effective-batch-size --micro-batch-size --epochs --lr --optimizer
--scheduler --warmup-ratio --weight-decay --grad-clip --max-length --dropout --pooling --seed --max-train-samples
--max-eval-samples --text-column --label-column --drop-last --no-checkpoint --config --db --lr-scaling
--base-batch-size --budget --train-steps --data-seed --precision --text-pair-column --dataset-config
--positive-label""".split()
# The sweep contract: the grid axes, the sweep's own options, and every train option.
SWEEP_FLAGS = """--models --effective-batch-sizes --backends --seeds --lrs --lr-scaling --name --max-retries --stale-after
--fail-fast --preset --base-batch-size --budget --train-steps --warmup-ratio --config --db --dry-run --race --race-alpha
--race-after --race-metric""".split()
REPORT_FLAGS = "--sweep --status --format --columns --wide --output --plot --watch --curves --metric --margin --db".split()
PICK_FLAGS = ("--sweep --model --backend --metric --by --margin --alpha --target --protocol --compare-protocols --json --db "
              "--replay-race --race-alpha --race-after").split()
HEAVY = ("torch", "transformers", "datasets", "accelerate", "pandas", "sqlalchemy")


def mentions(text: str, flag: str) -> bool:
    """`flag` as a whole word: --lr is not found in '--lr-scaling' nor '--lrs'."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_mentions_takes_a_flag_as_a_whole_word():
    assert mentions("| `--lr 5e-5` |", "--lr") and mentions("--lr, --learning-rate", "--lr")
    assert not mentions("--lr-scaling sqrt --lrs 1e-4", "--lr") and not mentions("--no-checkpoint", "--checkpoint")


def _documentation() -> str:
    """The README and every docs/ page it links (the README keeps the first five minutes; the pages the rest)."""
    readme = (ROOT / "README.md").read_text()
    pages = sorted(set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme)))
    return "\n".join([readme, *((ROOT / page).read_text() for page in pages)])


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name
        if page.name != "architecture.md":
            assert "](../README.md)" in page.read_text(), page.name
    for linked in re.findall(r"\]\((docs/[\w.-]+)\)", readme):  # no link to a page that is not there
        assert (ROOT / linked).is_file(), linked


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0
    return result.output


def test_every_command_help_shows_an_example():
    assert {"train", "sweep", "report", "pick-best"} <= set(COMMANDS)
    assert "Example:" in _help()
    for command in COMMANDS:
        text = _help(command)
        assert "Example:" in text and f"accumbench {command} --" in text, command


def test_readme_documents_every_command_with_an_example():
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"accumbench {command} --" in readme, command
    assert "make demo" in readme and "make test" in readme


def test_train_flags_contract():
    text, readme = _help("train"), _documentation()
    for flag in TRAIN_FLAGS:
        assert mentions(text, flag) and mentions(readme, flag), flag


def test_report_takes_its_options_and_the_readme_documents_them():
    text, readme = _help("report"), _documentation()
    for flag in REPORT_FLAGS:
        assert mentions(text, flag) and mentions(readme, flag), flag
    from accumbench.present.tables import COLUMNS

    for name in COLUMNS:  # every --columns name is in the README's table of them
        assert f"`{name}`" in readme, name
    assert (ROOT / "docs" / "study-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](docs/study-page.png)" in readme


def test_pick_best_takes_its_options_and_the_readme_documents_them():
    text, readme = _help("pick-best"), _documentation()
    for flag in PICK_FLAGS:
        assert mentions(text, flag) and mentions(readme, flag), flag
    assert "accumbench pick-best --compare-protocols" in text and "accumbench pick-best --compare-protocols" in readme
    assert "accumbench sweep --preset tuned-study" in readme and "--lrs 3e-5,1e-4,3e-4" in _help("sweep")


def test_sweep_takes_the_grid_and_every_train_option():
    text, readme = _help("sweep"), _documentation()
    for flag in SWEEP_FLAGS:
        assert mentions(text, flag) and mentions(readme, flag), flag
    for flag in TRAIN_FLAGS:  # the singular axes (--model, --seed, ...) are their plurals' aliases
        assert mentions(text, flag), flag


def test_help_of_every_command_does_not_import_heavy_libraries():
    """`accumbench --help` and `accumbench COMMAND --help` for every command the app registers, in one fresh
    process: the heavy modules are listed after each, so the first command that imports one is named."""
    assert {"predict", "export", "check-ga"} <= set(COMMANDS)  # derived from the app, not a copy of its list
    code = (
        "import json, sys\n"
        "from accumbench.cli.app import main\n"
        f"for args in {[[]] + [[command] for command in COMMANDS]!r}:\n"
        "    try:\n        main([*args, '--help'])\n    except SystemExit:\n        pass\n"
        f"    print(json.dumps([' '.join(args), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seen = [json.loads(line) for line in out.splitlines() if line.startswith('["')]
    assert seen == [[command, []] for command in ["", *COMMANDS]]


def test_python_dash_m_runs_the_same_app():
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "accumbench", "--help"], capture_output=True, text=True, check=True,
                         env=env).stdout
    listed = re.findall(r"^│ ([a-z][a-z-]*) ", out, flags=re.MULTILINE)  # the first word of each row of the commands box
    assert listed == COMMANDS, out
