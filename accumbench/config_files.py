"""Run configurations from YAML files with flags on top: the files checked whole, one line per wrong value.

Only the standard library and PyYAML (imported when a file is read), so `accumbench --help` stays instant.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from accumbench.config import CONFIG_KEYS, FIX_SUFFIX, RunConfig, check_value, coerce_field, option_flag
from accumbench.errors import UserError
from accumbench.trainer_names import trainer_hint


def check_file_value(name: str, value: Any, path: Path, overridden: bool) -> Any:
    """A config file's value for field `name`, converted and checked on its own; the UserError names the
    file (and says so when a flag would have overridden the value: the file is wrong all the same)."""
    try:
        converted = coerce_field(name, value)
        check_value(name, converted)
    except UserError as exc:
        raise file_error(path, exc, option_flag(name) if overridden else None) from None
    return converted


def file_error(path: Path, exc: UserError, overriding_flag: str | None) -> UserError:
    """A config file's wrong value as one line: where, what, the fix, and that a flag does not excuse it."""
    problem = str(exc).removesuffix(FIX_SUFFIX)
    fix = "" if "; " in problem else "; fix the file"  # most messages name their fix already
    anyway = f" (even though {overriding_flag} on the command line overrides it)" if overriding_flag else ""
    return UserError(f"in {path}: {problem}{fix}{anyway}")


def read_yaml_mapping(path: Path, what: str, known: tuple[str, ...], unknown_hint: str) -> dict[str, Any]:
    """Read a YAML file that must be a mapping whose keys are all in `known` (run and sweep files).
    An unknown key is named with a "did you mean" suggestion, or else `unknown_hint`."""
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
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
            hint = trainer_hint(str(key)) or (f"did you mean '{close[0]}'?" if close else unknown_hint)
            raise UserError(f"unknown key '{key}' in {path}; {hint}")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a run YAML file: a mapping whose keys are RunConfig field names."""
    return read_yaml_mapping(path, "config file", CONFIG_KEYS, f"valid keys: {', '.join(CONFIG_KEYS)}")


def build_config(config_file: Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the YAML file, then every override that is not None (the flags the user gave).
    The file is checked whole first: a wrong value in it is an error even where a flag overrides it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {}
    if config_file:
        values = {key: check_file_value(key, value, config_file, key in given)
                  for key, value in read_yaml(config_file).items()}
    values.update(given)
    return RunConfig(**values)
