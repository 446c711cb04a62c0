"""--ebs-schedule: an effective batch size that changes during training.

Gradient accumulation makes a growing EBS free: k changes at an optimizer-step boundary and nothing else
moves, and the accumulation plan (accumulation.py) weights every micro-batch by its share of its group, so
every step is still the exact gradient of its group's mean loss, the ragged last group of an epoch included.

Two kinds:

    16@0,64@1,256@3              explicit, by epochs trained: EBS 16 from the start, 64 after epoch 1,
                                 256 after epoch 3 (fractions cut mid-epoch: 64@1.5)
    16@0,64@step40,256@step100   explicit, by optimizer steps taken
    auto | auto:16-256           the EBS doubles at an epoch's end when that epoch's measured gradient noise
                                 scale B_simple (McCandlish et al. 2018) has passed it, from a start (default
                                 --effective-batch-size) up to a cap (default: none)

A change takes effect at the first group boundary at or after its point: a group is never cut in two.
Each stage's optimizer settings (lr, betas, eps, weight decay) follow the run's scaling rules at that EBS.

Only the standard library here: config.py validates schedules, and `accumbench --help` stays instant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from accumbench.errors import UserError

AUTO = "auto"
EPOCH, STEP = "epoch", "step"
EXAMPLE = "--ebs-schedule 16@0,64@1,256@3"
_STAGE = re.compile(r"^(\d+)@(step)?(\d+(?:\.\d+)?)$")
_AUTO = re.compile(r"^auto(?::(\d+)(?:-(\d+))?)?$")


@dataclass(frozen=True)
class Stage:
    effective_batch_size: int
    start: float  # epochs trained (unit epoch) or optimizer steps taken (unit step) when it begins


@dataclass(frozen=True)
class EbsSchedule:
    """The EBS of every optimizer step. For auto, `stages` are the ones decided so far (the start, then one
    per doubling) and grow as the run trains (with_stage)."""

    stages: tuple[Stage, ...]
    unit: str = EPOCH
    auto: bool = False
    cap: int | None = None  # auto: the largest EBS it may double to

    @property
    def start(self) -> int:
        return self.stages[0].effective_batch_size

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(stage.effective_batch_size for stage in self.stages)

    def ebs_at(self, epochs_done: float, steps_done: int) -> int:
        """The EBS of a group that starts after `epochs_done` epochs (fractional mid-epoch) and `steps_done` steps."""
        at = epochs_done if self.unit == EPOCH else steps_done
        return [stage for stage in self.stages if stage.start <= at + 1e-12][-1].effective_batch_size

    def with_stage(self, effective_batch_size: int, epochs_done: int) -> EbsSchedule:
        """auto: this schedule with one more stage, from the next epoch on."""
        return EbsSchedule((*self.stages, Stage(effective_batch_size, epochs_done)), self.unit, self.auto, self.cap)

    def next_auto_size(self, current: int, noise_scale: float | None, num_train: int) -> int | None:
        """auto: the doubled EBS when the epoch's B_simple has passed `current`, else None (at the cap, or when
        the doubled group would not fit in an epoch of `num_train` samples)."""
        if noise_scale is None or not math.isfinite(noise_scale) or noise_scale <= current:
            return None
        doubled = 2 * current
        if (self.cap is not None and doubled > self.cap) or doubled > num_train:
            return None
        return doubled

    def text(self) -> str:
        """The canonical spelling (what config_hash sees): '16@0,64@1,256@3', 'auto:16-256'."""
        if self.auto:
            return f"{AUTO}:{self.start}" + (f"-{self.cap}" if self.cap is not None else "")
        prefix = "step" if self.unit == STEP else ""
        return ",".join(f"{s.effective_batch_size}@{prefix if s.start else ''}{_number(s.start)}" for s in self.stages)

    def label(self) -> str:
        """For people: 'grow 16→64@1→256@3', 'grow 16→64@step40', 'auto 16→256' (the cap), 'auto 16→'."""
        if self.auto:
            return f"auto {self.start}→{self.cap or ''}"
        unit = "step" if self.unit == STEP else ""
        rest = "".join(f"→{s.effective_batch_size}@{unit}{_number(s.start)}" for s in self.stages[1:])
        return f"grow {self.start}{rest}"


def ebs_label(effective_batch_size: int, ebs_schedule: str | None) -> str:
    """A run's EBS arm for tables: '256', or its schedule's label ('grow 16→64@1→256@3', 'auto 16→256')."""
    return str(effective_batch_size) if ebs_schedule is None else parse_schedule(ebs_schedule, None).label()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_schedule(text: str, micro_batch_size: int | None, start: int | None = None) -> EbsSchedule:
    """An --ebs-schedule value, checked: UserError naming the problem and the fix. `micro_batch_size` None: not
    known yet (auto), so multiples are not checked. `start`: auto's first EBS when the text does not give one."""
    text = text.strip().replace(" ", "")
    if (auto := _AUTO.match(text)) is not None:
        first = int(auto.group(1)) if auto.group(1) else start
        cap = int(auto.group(2)) if auto.group(2) else None
        if first is None or first <= 0:
            raise UserError(f"--ebs-schedule {text} needs a starting EBS; pass e.g. auto:16-256")
        if cap is not None and cap < first:
            raise UserError(f"--ebs-schedule {text}: the cap {cap} is below the start {first}; pass e.g. auto:{first}-{first * 16}")
        _check_multiples(text, (first,), micro_batch_size)
        return EbsSchedule((Stage(first, 0),), EPOCH, auto=True, cap=cap)
    stages, units = [], set()
    for part in text.split(","):
        found = _STAGE.match(part)
        if found is None:
            raise UserError(f"--ebs-schedule: '{part}' is not EBS@EPOCH or EBS@stepN; write e.g. {EXAMPLE}, "
                            "16@0,64@step40 or auto")
        if found.group(2) or float(found.group(3)) != 0:  # the start, @0, is the same in both units
            units.add(STEP if found.group(2) else EPOCH)
        stages.append(Stage(int(found.group(1)), float(found.group(3))))
    if len(units) > 1:
        raise UserError(f"--ebs-schedule {text} mixes epochs and steps; give every point in one unit, e.g. {EXAMPLE}")
    unit = units.pop() if units else EPOCH
    if stages[0].start != 0:
        raise UserError(f"--ebs-schedule {text} must start at 0 (the EBS before the first change); e.g. {EXAMPLE}")
    starts = [s.start for s in stages]
    if any(later <= earlier for earlier, later in zip(starts, starts[1:])):
        raise UserError(f"--ebs-schedule {text}: the change points must increase ({', '.join(map(_number, starts))}); "
                        f"e.g. {EXAMPLE}")
    if unit == STEP and any(not s.is_integer() for s in starts):
        raise UserError(f"--ebs-schedule {text}: steps are whole numbers; e.g. 16@0,64@step40")
    _check_multiples(text, [s.effective_batch_size for s in stages], micro_batch_size)
    return EbsSchedule(tuple(stages), unit)


def _check_multiples(text: str, sizes: Sequence[int], micro_batch_size: int | None) -> None:
    for size in sizes:
        if size <= 0:
            raise UserError(f"--ebs-schedule {text}: EBS {size} must be a positive integer")
        if micro_batch_size and size % micro_batch_size:
            lower = max(micro_batch_size, size // micro_batch_size * micro_batch_size)
            raise UserError(f"--ebs-schedule {text}: EBS {size} is not a multiple of micro-batch size {micro_batch_size}; "
                            f"use {lower} or {lower + micro_batch_size}, or change --micro-batch-size")


def normalized(text: str, effective_batch_size: int, micro_batch_size: int | str, budget: str, scheduler: str,
               noise_scale: bool) -> tuple[str | None, int]:
    """RunConfig's (ebs_schedule, effective_batch_size) for an --ebs-schedule value: the schedule's canonical text
    (None for a single stage, which is a fixed EBS) and its starting EBS. UserError where the run's other
    settings cannot go with it."""
    if not isinstance(micro_batch_size, int):
        raise UserError("--ebs-schedule needs a fixed --micro-batch-size (every stage must be a multiple of it); "
                        "pass e.g. --micro-batch-size 16")
    if budget != "epochs":
        raise UserError("--ebs-schedule changes EBS by epochs or steps of an epochs budget; use --budget epochs")
    schedule = parse_schedule(text, micro_batch_size, start=effective_batch_size)
    if schedule.auto:
        if scheduler != "constant":
            raise UserError(f"--ebs-schedule auto decides the EBS as it trains, so the steps a {scheduler} lr schedule "
                            "is sized in are unknown; use --scheduler constant or an explicit schedule")
        if not noise_scale:
            raise UserError("--ebs-schedule auto doubles the EBS on the measured noise scale; drop --no-noise-scale")
        if schedule.start // micro_batch_size < 2:
            raise UserError(f"--ebs-schedule auto measures B_simple from 2+ micro-batches a step, and EBS {schedule.start} "
                            f"is one micro-batch of {micro_batch_size}; use --micro-batch-size {schedule.start // 2} or less")
    elif len(schedule.stages) == 1:
        return None, schedule.start
    return schedule.text(), schedule.start


def parse_points(text: str, flag: str = "--save-states") -> tuple[str, tuple[int, ...]]:
    """Points of training, '0,1,3' (epochs trained; 0: before the first step) or 'step20,step40' (optimizer steps
    taken): (unit, increasing points). UserError otherwise."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    steps = [p.startswith("step") for p in parts]
    example = f"{flag} 0,1,2 or {flag} step20,step40"
    if not parts or any(steps) != all(steps):
        raise UserError(f"{flag} {text}: give epochs or steps, not both; e.g. {example}")
    try:
        points = tuple(int(p.removeprefix("step")) for p in parts)
    except ValueError:
        raise UserError(f"{flag} {text}: points are whole epochs or stepN; e.g. {example}") from None
    if any(p < 0 for p in points) or any(b <= a for a, b in zip(points, points[1:])):
        raise UserError(f"{flag} {text}: the points must be >= 0 and increasing; e.g. {example}")
    return (STEP if steps[0] else EPOCH), points
