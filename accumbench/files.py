"""Files a command writes: the checks on an output path a user names, and writing aside then renaming.

Every file or directory accumbench writes for a reader (a report, a study page a browser reloads, predictions,
an export, a checkpoint, the token cache other workers read) is written beside its place and renamed into it:
a reader sees the old one or the new one, never half of one, and a write that fails (a full disk, Ctrl-C)
leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from accumbench.errors import UserError


def check_output_file(path: Path, flag: str, example: str) -> None:
    """A path given to `flag` must name a file (an existing one is replaced) in a directory that exists.
    `example` is a file name the message suggests when a directory was given."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {path / example}")
    if not path.absolute().parent.is_dir():
        raise UserError(f"{flag} {path}: directory {path.parent} does not exist; create it or choose another {flag}")


def write_aside(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial)` a file or a directory beside `path`, then rename it to `path` (a directory replaces only
    an empty one). On any failure, Ctrl-C included, the partial file or directory is removed."""
    partial = path.absolute().parent / f".{path.name}.{secrets.token_hex(4)}.partial"
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def write_text_aside(path: Path, text: str, flag: str) -> None:
    """`text` into `path`, written aside then renamed; a failure to write it is the user's to fix (another
    `flag`), so it is a UserError naming the file."""
    try:
        write_aside(path, lambda partial: partial.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another {flag}") from None
