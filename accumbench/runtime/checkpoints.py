"""Where a run's best checkpoint goes, a check before training that it can be written there, and the
write itself (aside, then renamed: a reader never sees half a checkpoint).

    <checkpoint root>/<run id>/model.safetensors   the classifier (encoder + head), safetensors
                              /accumbench.json     its epoch, label names and configuration
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from accumbench.config import RunConfig
from accumbench.errors import UserError, first_line
from accumbench.files import write_aside
from accumbench.store import DEFAULT_DB, database_name, sqlite_path

# A checkpoint's two files (inference.py reads them back).
CHECKPOINT_WEIGHTS, CHECKPOINT_META = "model.safetensors", "accumbench.json"


def checkpoint_root(url: str, config: RunConfig | None = None) -> Path:
    """--checkpoint-dir, else checkpoints/ beside the SQLite file (./checkpoints for the default ./runs.db), else
    (a database server) in the cwd. Run ids are per database, so another database's runs keep a folder of their own
    in it, named after the database (checkpoints/sst2.db/, checkpoints/<server database>/): two stores in one
    folder would otherwise write their run 5's checkpoint and saved states over each other."""
    if config is not None and config.checkpoint_dir:
        return Path(config.checkpoint_dir).expanduser()
    path = sqlite_path(url)
    root = (path.parent if path else Path.cwd()) / "checkpoints"
    return root if path is not None and path.name == DEFAULT_DB else root / database_name(url)


def require_writable_checkpoints(url: str, config: RunConfig) -> None:
    """A run that keeps checkpoints checks, before anything trains, that it can write them: a read-only
    or missing-and-uncreatable directory is one error line, not a run that fails after its first epoch.

    It creates nothing that stays: the directory itself is made when the first checkpoint is written, so
    a run refused later for bad input (a missing dataset, an unknown model) leaves no empty checkpoints/.
    What is probed is what that write will do: a file in the directory if it exists, else a directory in
    its nearest existing parent (made and removed at once)."""
    if not config.checkpoint and config.save_states is None:
        return
    root = checkpoint_root(url, config).absolute()
    try:
        if root.is_dir():
            handle, probe = tempfile.mkstemp(dir=root, prefix=".accumbench-write-test-")
            os.close(handle)
            os.unlink(probe)
            return
        if root.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(root))
        parent = next(p for p in root.parents if p.exists())
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".accumbench-write-test-"))
    except OSError as exc:
        raise UserError(f"checkpoint directory {checkpoint_root(url, config)} is not writable "
                        f"({exc.strerror or exc}); make it writable, pass --checkpoint-dir DIR, or --no-checkpoint") from None


def save_checkpoint(model: Any, directory: Path, epoch: int, label_names: list[Any], config: RunConfig) -> Path:
    """The model's weights and what it takes to use them, into `directory`; returns the directory."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    meta = {"epoch": epoch, "label_names": label_names, "config": config.to_dict()}
    # Written aside, then renamed: a reader never sees half a checkpoint, and a write that fails (a full
    # disk) removes its partial file, so the space is back for the database to record the failure.
    for name, write in ((CHECKPOINT_WEIGHTS, lambda path: save_model(model, str(path))),
                        (CHECKPOINT_META, lambda path: path.write_text(json.dumps(meta, indent=2)))):
        try:
            write_aside(directory / name, write)
        except Exception as exc:
            # safetensors reports an I/O failure as its own error, "... (os error 28)": as an OSError with
            # that errno and the file, the run's error can say "disk full while writing ...". Any other
            # error is raised as it is.
            found = re.search(r"os error (\d+)", str(exc)) if not isinstance(exc, OSError) else None
            if found:
                raise OSError(int(found.group(1)), first_line(exc), str(directory / name)) from exc
            raise
    return directory
