"""The import-linter contracts bite: in a copy of the package, an `import sqlalchemy` or `import sqlite3`
planted in a module outside store/ breaks "Only the store speaks SQL", and the unmodified copy keeps
every contract. (`make test` runs lint-imports on the package itself; this proves it would fail.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SQL_CONTRACT = "Only the store speaks SQL"


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """accumbench/ and pyproject.toml copied into tmp_path (no caches)."""
    shutil.copytree(ROOT / "accumbench", tmp_path / "accumbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(copy: Path) -> subprocess.CompletedProcess:
    """lint-imports run on the copy: PYTHONPATH puts the copy's accumbench first, so grimp reads it and not
    the installed one; no cache, so nothing from an earlier run is reused."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=copy, env=env, capture_output=True, text=True)


def plant(module: Path, line: str) -> None:
    """A real, top-level import at the end of the module (after any `from __future__`)."""
    module.write_text(f"{module.read_text()}\n{line}  # planted by tests/test_layers.py\n")


def test_an_sql_import_outside_the_store_breaks_its_contract_and_the_copy_as_is_passes(package_copy):
    clean = lint_imports(package_copy)
    assert clean.returncode == 0 and "0 broken" in clean.stdout, clean.stdout + clean.stderr

    for module, sql in (("data.sources", "sqlalchemy"), ("analysis.cells", "sqlite3")):
        path = package_copy / "accumbench" / (module.replace(".", "/") + ".py")
        original = path.read_text()
        plant(path, f"import {sql}")
        planted = lint_imports(package_copy)
        assert planted.returncode == 1, planted.stdout + planted.stderr
        assert f"{SQL_CONTRACT} BROKEN" in planted.stdout and planted.stdout.count(" BROKEN") == 1, planted.stdout
        assert f"accumbench.{module} -> {sql}" in planted.stdout
        path.write_text(original)  # each plant is checked on its own
