"""How numbers and names read to people, in one notation everywhere (tables, the console, the study page)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from pathlib import Path


def format_lr(lr: float) -> str:
    """A learning rate as people write it, in one notation everywhere: 1e-5, 3e-5, 1.5e-4, 2e-3."""
    if not math.isfinite(lr) or lr == 0:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def plain_number(value: object) -> str:
    """A number in an error message as people write it: -1 (not -1.0 nor -1e0), 0.5, 1.5, 3e-5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    if not math.isfinite(value) or 1e-3 <= abs(value) < 1e4:
        return f"{value:g}"
    return format_lr(value)


def rate_key(lr: float) -> str:
    """Learning rates as keys: two cells trained at the same rate can reach it by different products
    (2e-4 x sqrt(1/4) and 1e-4 x 1), equal to about 1e-16 but not always bit for bit."""
    return f"{lr:.9e}"


def format_seconds(seconds: float) -> str:
    """A training time as people read it: 42s, 12m05s, 1h02m."""
    if seconds is None or seconds != seconds:  # None or NaN: not measured
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def short_model(model: str) -> str:
    """A local model directory by its last path component; aliases and hub ids as they are."""
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def portable(value: object) -> object:
    """A configuration value as a page handed to someone else shows it: a local path (/..., ./..., ~/...)
    by its last component, like short_model; anything else as it is."""
    return short_model(value) if isinstance(value, str) and value.startswith(("/", ".", "~")) else value


def short_group(group: str) -> str:
    """A pick's group ('/tmp/x/tiny-bert, torch') with a local model by its name ('tiny-bert, torch')."""
    return ", ".join(short_model(part) for part in group.split(", "))


def spread(std: float, digits: int, sep: str = " ± ") -> str:
    """The '± std' after a mean, or nothing where there is no spread (one seed: std is NaN)."""
    return "" if std is None or std != std else f"{sep}{std:.{digits}f}"


def slugify(model: str) -> str:
    """A file-name-safe stem for a model name.

    A local directory ("/tmp/x/tiny-bert", "./ckpt/", "~/m") is named by its last component
    ("tiny-bert"): its parents say where it lives, not what it is. A hub id keeps its organisation
    ("answerdotai/ModernBERT-base" -> "answerdotai_ModernBERT-base"), which tells models apart.
    Anything but letters, digits, '.', '_' and '-' then becomes '_'."""
    name = short_model(model.strip().replace("\\", "/"))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return slug or "model"


def unique_slugs(models: list[str]) -> dict[str, str]:
    """slugify for each model, with -2, -3, ... appended where two models (in the order given) would
    share a file. Compared case-insensitively, as on macOS and Windows file systems."""
    taken: set[str] = set()
    slugs = {}
    for model in models:
        base = slug = slugify(model)
        n = 1
        while slug.casefold() in taken:
            n += 1
            slug = f"{base}-{n}"
        taken.add(slug.casefold())
        slugs[model] = slug
    return slugs


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice a mistyped `value` most likely meant, or None: the one choice it begins (val_acc ->
    val_accuracy), else the nearest by difflib (troch -> torch, sqroot -> sqrt), letter case aside."""
    choices = [str(choice) for choice in choices]
    typed = str(value).strip().lower()
    if not typed:
        return None
    lowered = {choice.lower(): choice for choice in choices}
    begun = [choice for choice in choices if choice.lower().startswith(typed)]
    if len(begun) == 1:
        return begun[0]
    close = difflib.get_close_matches(typed, list(lowered), n=1)
    return lowered[close[0]] if close else None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """"; did you mean 'torch'?" after an error line, where a choice is close to `value`; else ""."""
    close = closest(value, choices)
    return f"; did you mean '{close}'?" if close is not None and close != value else ""


def unknown_choice(flag: str, value: object, choices: Iterable[str], note: str = "") -> str:
    """The one line for a value outside a closed set of choices, on a flag or in a YAML file: "unknown
    --backend 'troch'; choose one of: torch, accelerate; did you mean 'torch'?". `note` follows the choices."""
    choices = [str(choice) for choice in choices]
    return f"unknown {flag} '{value}'; choose one of: {', '.join(choices)}{note}{did_you_mean(value, choices)}"
