"""Run configurations from YAML files with flags on top: the files checked whole, every problem in one line.

Only the standard library and PyYAML (imported when a file is read), so `accumbench --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accumbench.config import CONFIG_KEYS, FIX_SUFFIX, RunConfig, check_value, coerce_field, option_flag
from accumbench.errors import UserError
from accumbench.formatting import closest
from accumbench.trainer_names import trainer_hint


class FileProblems:
    """Every problem found in one file, so that one UserError names them all. A single problem reads as it
    always has; several read '<file> has N problems: <first>; <second>', each without the file's name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._found: dict[str, str] = {}  # a problem as listed -> as it reads alone

    def add(self, alone: str, listed: str | None = None) -> None:
        self._found.setdefault(listed or alone, alone)

    @contextmanager
    def checking(self, overriding_flag: str | None = None) -> Iterator[None]:
        """Run a check of one value from the file: its UserError becomes one of the file's problems (naming
        `overriding_flag` when a flag would have overridden the value: the file is wrong all the same)."""
        try:
            yield
        except UserError as exc:
            self.add(str(file_error(self.path, exc, overriding_flag)), _value_problem(exc, overriding_flag))

    def raise_any(self) -> None:
        """The UserError naming every problem found, if there is one."""
        if len(self._found) == 1:
            raise UserError(next(iter(self._found.values())))
        if self._found:
            raise UserError(f"{self.path} has {len(self._found)} problems: {'; '.join(self._found)}")


def file_error(path: Path, exc: UserError, overriding_flag: str | None) -> UserError:
    """A config file's wrong value as one line: where, what, the fix, and that a flag does not excuse it."""
    return UserError(f"in {path}: {_value_problem(exc, overriding_flag)}")


def _value_problem(exc: UserError, overriding_flag: str | None) -> str:
    problem = str(exc).removesuffix(FIX_SUFFIX)
    fix = "" if "; " in problem else "; fix the file"  # most messages name their fix already
    anyway = f" (even though {overriding_flag} on the command line overrides it)" if overriding_flag else ""
    return f"{problem}{fix}{anyway}"


def read_yaml_mapping(path: Path, what: str, known: tuple[str, ...], unknown_hint: str,
                      problems: FileProblems | None = None) -> dict[str, Any]:
    """Read a YAML file that must be a mapping whose keys are all in `known` (run and sweep files).
    Every unknown key is named, with a "did you mean" suggestion or else `unknown_hint` (given once when
    several keys need it); with `problems`, they are added there and the known keys returned."""
    import yaml

    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the --config path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0]
        raise UserError(f"{what} {path} is not valid YAML ({first_line}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of option: value; found {type(data).__name__}")
    found = problems or FileProblems(path)
    hints = {key: _key_hint(key, known) for key in data if key not in known}
    last_plain = [key for key, hint in hints.items() if hint is None][-1:]
    for key, hint in hints.items():
        listed_hint = hint or (unknown_hint if key in last_plain else None)
        found.add(f"unknown key '{key}' in {path}; {hint or unknown_hint}",
                  f"unknown key '{key}'" + (f"; {listed_hint}" if listed_hint else ""))
    if problems is None:
        found.raise_any()
    return {key: value for key, value in data.items() if key in known}


def _key_hint(key: Any, known: tuple[str, ...]) -> str | None:
    """The Trainer's name or a close match for an unknown key, as 'did you mean ...'; None if neither."""
    close = closest(str(key).replace("-", "_"), known)
    return trainer_hint(str(key)) or (f"did you mean '{close}'?" if close else None)


def read_yaml(path: Path, problems: FileProblems | None = None) -> dict[str, Any]:
    """Read a run YAML file: a mapping whose keys are RunConfig field names."""
    return read_yaml_mapping(path, "config file", CONFIG_KEYS, f"valid keys: {', '.join(CONFIG_KEYS)}", problems)


def build_config(config_file: Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the YAML file, then every override that is not None (the flags the user gave).
    The file is checked whole first, every key and value on its own, and every problem in it reported
    at once: a wrong value in it is an error even where a flag overrides it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {}
    if config_file:
        problems = FileProblems(config_file)
        for key, value in read_yaml(config_file, problems).items():
            with problems.checking(option_flag(key) if key in given else None):
                values[key] = coerce_field(key, value)
                check_value(key, values[key])
        problems.raise_any()
    values.update(given)
    return RunConfig(**values)
