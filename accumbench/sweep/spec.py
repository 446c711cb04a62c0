"""A sweep as the user asked for it: the grid's axes, the options its cells share, and how to run it.

    preset < YAML file < flags -> SweepSpec: axes, shared options, one RunConfig per grid point (a cell,
    named by its config_hash), checked whole before anything is written (bad input: one UserError)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from accumbench.config import CONFIG_KEYS, LIST_SEPARATORS, RunConfig, check_value, coerce_field
from accumbench.config_files import FileProblems, read_yaml_mapping
from accumbench.errors import UserError
from accumbench.formatting import format_lr, plain_number, unknown_choice
from accumbench.optim_scaling import RULE_OPTIONS
from accumbench.race_rule import RaceRule, check_rule
from accumbench.sweep.presets import PRESETS
from accumbench.vocabulary import RACE_AFTER, RACE_ALPHA, RACE_GUARD

# The grid's axes: the plural name (flag and YAML key) of each RunConfig field a sweep can vary, with what
# its values look like (for the error line when one is wrong), outermost first. Cells are ordered so that
# one model/backend's EBS comparison completes early, and a seed's whole lr x EBS grid before the next seed:
# one seed already gives a tuned answer. A new axis is its RunConfig field and one entry here.
_AXIS_TABLE = (
    ("models", "model", "bert,modernbert"),
    ("backends", "backend", "torch,accelerate"),
    # the optimizer's scaling rules: axes named like their RunConfig field, shown in a cell's description
    ("lr_scaling", "lr_scaling", "none,sqrt"),
    ("scaling_rule", "scaling_rule", "none,sde"),
    ("beta1_scaling", "beta1_scaling", "none,half-life"),
    ("beta2_scaling", "beta2_scaling", "none,half-life"),
    ("eps_scaling", "eps_scaling", "none,sqrt"),
    ("weight_decay_scaling", "weight_decay_scaling", "none,timescale"),
    ("seeds", "seed", "42,43,44"),
    ("lrs", "lr", "1e-5,3e-5,1e-4"),
    ("effective_batch_sizes", "effective_batch_size", "64,256,1024"),
    # EBS schedules: arms beside the fixed EBS (not crossed with them); auto spans the EBS axis, smallest to largest.
    ("ebs_schedule", "ebs_schedule", "16@0,64@1,256@3;auto"),
)
AXES = {axis: field_name for axis, field_name, _ in _AXIS_TABLE}  # plural -> RunConfig field
AXIS_EXAMPLES = {axis: example for axis, _, example in _AXIS_TABLE}
# The axes spelled like their field take their sweep flag from the RunConfig option itself, comma-separated.
SAME_NAMED_AXES = tuple(axis for axis, field_name in AXES.items() if axis == field_name)
SWEEP_OPTIONS = {"name": None, "preset": None, "max_retries": 1, "stale_after": 600.0, "fail_fast": False,
                 "race": False, "race_alpha": RACE_ALPHA, "race_after": RACE_AFTER, "race_metric": "val_accuracy",
                 "race_margin": None, "race_guard": RACE_GUARD}


@dataclass(frozen=True)
class SweepSpec:
    """A sweep as the user asked for it: grid axes, the options every cell shares, and how to run it."""

    axes: dict[str, tuple[Any, ...]]  # RunConfig field -> values
    options: dict[str, Any]  # RunConfig field -> value, the same for every cell
    name: str | None = None
    preset: str | None = None
    max_retries: int = 1
    stale_after: float = 600.0
    fail_fast: bool = False
    # --race: stop arms shown worse than their group's best by more than the margin (sweep/race.py). How a
    # sweep runs, not what its cells are: the same grid raced or not is the same sweep (the same grid hash).
    race: bool = False
    race_alpha: float = RACE_ALPHA
    race_after: int = RACE_AFTER
    race_metric: str = "val_accuracy"
    race_margin: float | None = None  # None: the metric's own margin
    race_guard: str = RACE_GUARD
    cells: tuple[RunConfig, ...] = field(default=(), compare=False)

    @property
    def grid_hash(self) -> str:
        """Names the set of cells: the same grid however it was spelled (preset, YAML, flags, order)."""
        hashes = sorted(cell.config_hash for cell in self.cells)
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]

    @property
    def sweep_name(self) -> str:
        """--name, or one derived from the grid: rerunning the same command resumes the same sweep."""
        return self.name or f"{self.preset or 'sweep'}-{self.grid_hash[:8]}"

    @property
    def race_rule(self) -> RaceRule:
        return RaceRule(self.race_alpha, self.race_margin, self.race_after, self.race_guard)

    def to_json(self) -> str:
        race = {"race": self.race, **self.race_rule.to_json(), "race_metric": self.race_metric} if self.race else {}
        return json.dumps({"preset": self.preset, "axes": {k: list(v) for k, v in self.axes.items()},
                           "options": self.options, **race}, sort_keys=True)

    @property
    def heartbeat_seconds(self) -> float:
        """Beat four times per --stale-after (at most every 15 s), so a live run is never taken for dead."""
        return min(15.0, self.stale_after / 4)

    def grid_shape(self) -> str:
        """'2 models x 3 EBS x 4 lrs x 3 seeds = 72 cells' (what the console shows; see grid_shape)."""
        return grid_shape(self)

    def claim_order(self) -> list[RunConfig]:
        """The cells in the order workers claim them: as given, or with --race racing's (analysis/racing.py)."""
        if not self.race:
            return list(self.cells)
        from accumbench.analysis.racing import claim_order  # pandas: only for a raced sweep

        return claim_order(self.cells)

    def describe(self, config: RunConfig) -> str:
        """One of its cells in a few words (see describe)."""
        return describe(config, self)



def split_list(value: Any, separator: str = ",") -> list[Any]:
    """'64,256, 1024' -> ['64', '256', '1024']; a YAML list or a single value -> a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [value]


def read_sweep_yaml(path: Path, problems: FileProblems | None = None) -> dict[str, Any]:
    """A sweep file: grid axes (lists), shared run options, and sweep options, all as top-level keys."""
    return read_yaml_mapping(path, "sweep file", (*AXES, *SWEEP_OPTIONS, *CONFIG_KEYS),
                             f"grid keys: {', '.join(AXES)}", problems)


def read_sweep_file(path: Path, flags: dict[str, Any]) -> dict[str, Any]:
    """A sweep file read and checked whole, every key and value on its own: all its problems in one UserError."""
    problems = FileProblems(path)
    from_file = read_sweep_yaml(path, problems)
    check_sweep_file(from_file, path, flags, problems)
    return from_file


def build_spec(config_file: Path | None = None, **given: Any) -> SweepSpec:
    """Preset, then the YAML file, then the flags that were given (not None). Expands and validates
    every cell, so a bad value fails here, before anything is written."""
    values: dict[str, Any] = {}
    flags = {k: v for k, v in given.items() if v is not None}
    from_file = read_sweep_file(config_file, flags) if config_file else {}
    preset = given.get("preset") or from_file.get("preset")
    check_preset(preset)
    sources = [(PRESETS[preset], f"in --preset {preset}")] if preset is not None else []
    sources += [(from_file, f"in {config_file}"), (flags, "on the command line")]
    for source, where in sources:
        for axis, name in AXES.items():
            if name != axis and name in source and axis in source:
                raise UserError(_both_spellings(name, axis, where))
        for key, value in source.items():
            if key == "lr" and isinstance(value, (list, tuple)):
                raise UserError(_lr_list(value))
            # The singular spelling of an axis (model: bert in YAML, --lr 1e-4) sets a one-value axis.
            plural = next((axis for axis, name in AXES.items() if name == key), key)
            values[plural] = value
    if preset is not None:
        values["preset"] = preset

    axes = {name: axis_values(axis, values.pop(axis, getattr(RunConfig, name))) for axis, name in AXES.items()}
    sweep_options = {key: values.pop(key, default) for key, default in SWEEP_OPTIONS.items()}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            raise UserError(_one_value(key, value))
    options = values
    max_retries, stale_after = retry_options(sweep_options["max_retries"], sweep_options["stale_after"])
    race = race_options(sweep_options, axes)
    check_given_values(axes, options)
    axes["ebs_schedule"] = schedule_arms(axes["ebs_schedule"], axes["effective_batch_size"])

    cells: dict[str, RunConfig] = {}
    for point in product(*axes.values()):
        cell_values = {**options, **dict(zip(axes, point))}
        try:
            cell = RunConfig(**cell_values)
        except UserError as exc:
            where = ", ".join(f"{name}={value}" for name, value in zip(axes, point) if len(axes[name]) > 1)
            raise UserError(f"{exc} (in the cell {where})" if where else str(exc)) from None
        cells.setdefault(cell.config_hash, cell)
    if race["race"]:
        last_chance = min(cell.epochs for cell in cells.values() if cell.budget == "epochs") if any(
            cell.budget == "epochs" for cell in cells.values()) else None
        if last_chance is not None and race["race_after"] >= last_chance:
            raise UserError(f"--race-after {race['race_after']} leaves no epoch to stop early at with --epochs "
                            f"{last_chance} (a run that reaches its last epoch is finished); give --epochs "
                            f"{race['race_after'] + 1} or more" + (f", or --race-after {last_chance - 1}"
                                                                  if last_chance > 1 else ""))
    return SweepSpec(axes=axes, options=options, name=sweep_options["name"], preset=sweep_options["preset"],
                     max_retries=max_retries, stale_after=stale_after, fail_fast=bool(sweep_options["fail_fast"]),
                     **race, cells=tuple(cells.values()))


def schedule_arms(schedules: tuple[Any, ...], sizes: tuple[int, ...]) -> tuple[Any, ...]:
    """The schedule axis as arms beside the fixed EBS: None (each fixed EBS) first, then each schedule, a bare
    `auto` spanning the EBS axis (auto:16-256 for EBS 16,64,256). A schedule sets its cells' EBS, so crossed
    with the EBS axis it is one cell."""
    given = [s for s in schedules if s is not None]
    spans = f"{min(sizes)}-{max(sizes)}" if len(sizes) > 1 else f"{sizes[0]}"
    return (None, *dict.fromkeys(f"auto:{spans}" if s.strip() == "auto" else s for s in given))


def check_given_values(axes: dict[str, tuple[Any, ...]], options: dict[str, Any]) -> None:
    """Every value the user gave, each on its own (an axis's values, an option every cell shares), before
    the cells are built: a wrong one is named by its flag (unknown --lr-scaling 'sqroot'), not as if one cell
    of the grid were wrong. What only a cell's values together get wrong is named by its cell."""
    for name, values in axes.items():
        for value in values:
            check_value(name, value)
    for key, value in options.items():
        if key in CONFIG_KEYS:
            check_value(key, coerce_field(key, value))


def axis_values(axis: str, raw: Any) -> tuple[Any, ...]:
    """One grid axis ('64,256' or a YAML list) as RunConfig values, duplicates dropped, order kept;
    UserError naming the axis and an example when a value is not one."""
    name, flag, example = AXES[axis], "--" + axis.replace("_", "-"), AXIS_EXAMPLES[axis]
    items = split_list(raw, LIST_SEPARATORS[name])
    if not items:
        raise UserError(f"{flag} is empty; give at least one value, e.g. {flag} {example}")
    try:
        coerced = [coerce_field(name, item) for item in items]
    except UserError:
        bad = next(item for item in items if not _coerces(name, item))
        raise UserError(f"{flag} takes comma-separated values like {example}; {bad!r} is not one") from None
    if name == "lr":
        for lr in coerced:
            if not (lr > 0 and math.isfinite(lr)):
                raise UserError(f"{flag} must be positive learning rates, got {plain_number(lr)}; e.g. {flag} {example}")
    return tuple(dict.fromkeys(coerced))


def retry_options(max_retries: Any, stale_after: Any) -> tuple[int, float]:
    try:
        max_retries, stale_after = int(max_retries), float(stale_after)
    except (TypeError, ValueError):
        raise UserError("--max-retries must be an integer and --stale-after a number of seconds") from None
    if max_retries < 0:
        raise UserError(f"--max-retries must be >= 0, got {max_retries}; 0 never retries a failed cell")
    if not stale_after > 0:
        raise UserError(f"--stale-after must be a positive number of seconds, got {plain_number(stale_after)}; the default is 600")
    return max_retries, stale_after


def race_options(options: dict[str, Any], axes: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """--race and its rule (--race-alpha, --race-after, --race-margin, --race-guard, --race-metric), checked:
    the values always, the lr grid with --race."""
    race = race_switch(options["race"])
    rule = check_rule(options["race_alpha"], options["race_after"], options["race_margin"], options["race_guard"],
                      options["race_metric"])
    if race and len(axes["lr"]) < 2:
        raise UserError("--race stops runs whose lr is worse than their group's best lr, so it needs an lr grid; "
                        "add --lrs, e.g. --lrs 3e-5,1e-4,3e-4 (or drop --race)")
    return dict(race=race, race_alpha=rule.alpha, race_after=rule.after, race_metric=options["race_metric"],
                race_margin=rule.margin, race_guard=rule.guard)


def race_switch(race: Any) -> bool:
    if not isinstance(race, bool):
        raise UserError(f"'race' takes true or false, got {race!r}; e.g. race: true")
    return race


def check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS:
        raise UserError(unknown_choice("--preset", preset, PRESETS))


def check_sweep_file(from_file: dict[str, Any], path: Path, flags: dict[str, Any],
                     problems: FileProblems | None = None) -> None:
    """A sweep file on its own, before any flag is applied: every axis value, every run and sweep option,
    each on its own, and every problem reported at once (added to `problems`, if given, as well). A wrong
    value in it is an error even where a flag overrides it."""
    problems = problems or FileProblems(path)
    singular = {name: axis for axis, name in AXES.items()}
    for key, value in from_file.items():
        axis = key if key in AXES else singular.get(key)
        if axis is not None and axis != key and axis in from_file:
            problems.add(_both_spellings(key, axis, f"in {path}"))
        if isinstance(value, (list, tuple)) and (key == "lr" or (axis is None and key in CONFIG_KEYS)):
            problems.add(_lr_list(value) if key == "lr" else _one_value(key, value))
            continue
        overriding = next((k for k in (key, axis, AXES.get(axis or "", "")) if k in flags), None)
        with problems.checking(overriding and "--" + overriding.replace("_", "-")):
            _check_file_value(key, axis, value)
    problems.raise_any()


def _check_file_value(key: str, axis: str | None, value: Any) -> None:
    """One key's value from a sweep file, checked on its own (UserError)."""
    if axis is not None:
        for item in axis_values(axis, value):
            check_value(AXES[axis], item)
    elif key == "max_retries":
        retry_options(value, SWEEP_OPTIONS["stale_after"])
    elif key == "stale_after":
        retry_options(SWEEP_OPTIONS["max_retries"], value)
    elif key == "race":
        race_switch(value)
    elif key in ("race_alpha", "race_after", "race_metric", "race_margin", "race_guard"):
        race_options({**SWEEP_OPTIONS, key: value}, {"lr": ()})
    elif key == "preset":
        check_preset(value)
    elif key in CONFIG_KEYS:
        check_value(key, coerce_field(key, value))


def _both_spellings(name: str, axis: str, where: str) -> str:
    # --lr 1e-4 --lrs 1e-5,1e-4: one rate or a grid? Neither reading is safe to guess.
    return (f"{_spelling(name, where)} and {_spelling(axis, where)} both given {where}; keep "
            f"{_spelling(axis, where)} for a grid (e.g. {AXIS_EXAMPLES[axis]}) or {_spelling(name, where)} for one value")


def _lr_list(value: Any) -> str:
    return (f"'lr' takes one value in a sweep, got {value!r}; for a grid of learning rates "
            f"use 'lrs: [{', '.join(map(str, value))}]' (or --lrs {','.join(map(str, value))})")


def _one_value(key: str, value: Any) -> str:
    return f"'{key}' takes one value in a sweep, got {value!r}; the grid axes are: {', '.join(AXES)}"


def _spelling(key: str, where: str) -> str:
    """An option as the user wrote it: --lrs on the command line, lrs: in a file."""
    return f"--{key.replace('_', '-')}" if where == "on the command line" else f"'{key}'"


def _coerces(name: str, item: Any) -> bool:
    try:
        coerce_field(name, item)
    except UserError:
        return False
    return True


def grid_shape(spec: SweepSpec) -> str:
    """'2 models x 3 EBS x 4 lrs x 3 seeds = 72 cells': the axes that vary, and the cell count."""
    names = {"model": "models", "backend": "backends", "lr_scaling": "lr rules", "scaling_rule": "rule bundles",
             "beta1_scaling": "β1 rules", "beta2_scaling": "β2 rules", "eps_scaling": "ε rules",
             "weight_decay_scaling": "wd rules", "seed": "seeds", "lr": "lrs", "effective_batch_size": "EBS"}
    schedules = len(spec.axes.get("ebs_schedule", (None,))) - 1  # its first value, None, is the fixed EBS
    sizes = []
    for name, values in spec.axes.items():  # the schedules are EBS arms beside the fixed ones: '3 EBS + 2 schedules'
        if name == "effective_batch_size" and schedules:
            sizes.append(f"{len(values)} EBS + {schedules} schedule{'s' if schedules > 1 else ''}")
        elif len(values) > 1 and name != "ebs_schedule":
            sizes.append(f"{len(values)} {names[name]}")
    product_size = math.prod(len(values) for name, values in spec.axes.items()
                             if name not in ("ebs_schedule", "effective_batch_size"))
    product_size *= len(spec.axes["effective_batch_size"]) + schedules
    # Two grid points can name one configuration (one config_hash); it is then one cell.
    distinct = "" if product_size == len(spec.cells) else " distinct"
    return f"{' x '.join(sizes) or 'one point'} = {len(spec.cells)}{distinct} cell{'s' if len(spec.cells) != 1 else ''}"


def describe(config: RunConfig, spec: SweepSpec | None = None) -> str:
    """A cell in a few words: the values of the axes that vary (all of them without a spec)."""
    schedule = config.schedule
    parts = {"model": config.model,
             "effective_batch_size": schedule.label() if schedule else f"EBS {config.effective_batch_size}",
             "backend": config.backend, "seed": f"seed {config.seed}", "lr": f"lr {format_lr(config.scaled_lr)}"}
    if config.lr_scaling != "none":
        parts["lr"] += f" ({config.lr_scaling})"
    varies = {name for name in parts if spec is None or len(spec.axes[name]) > 1}
    if spec is not None and len(spec.axes.get("ebs_schedule", ())) > 1:
        varies.add("effective_batch_size")
    if spec is not None and any(len(spec.axes[name]) > 1 for name in RULE_OPTIONS):
        varies.add("lr")
        parts["rules"] = f"rules {config.rule_bundle}"
        varies.add("rules")
    shown = [name for name in parts if name in varies] or ["model", "effective_batch_size"]
    return ", ".join(parts[name] for name in shown)
