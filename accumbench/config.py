"""The run configuration: one frozen, validated dataclass, readable from YAML with flags on top.

Only the standard library and PyYAML are imported here, so `accumbench --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from accumbench.errors import UserError
from accumbench.formatting import plain_number

BACKENDS = ("torch", "accelerate")
PRECISIONS = ("auto", "no", "bf16", "fp16")
AUTO = "auto"  # --micro-batch-size auto: the largest power of two that fits in memory (see micro_batch.py)
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("constant", "linear", "cosine")
POOLINGS = ("cls", "mean")
LR_SCALINGS = ("none", "linear", "sqrt")
BUDGETS = ("epochs", "steps")

# Fields that never change what a run computes, so they stay out of config_hash.
# The noise scale and evaluations between epochs' ends are measurements: they read the gradients and
# the model, and change no number of the training.
_NOT_HASHED = frozenset({"checkpoint", "checkpoint_dir", "log_with", "noise_scale", "noise_scale_every", "noise_scale_decay",
                         "eval_every"})
# Fields added after runs were first recorded, with the value every earlier run implicitly had:
# left out of config_hash at that value, so the hash of an earlier run still names the same
# configuration. (group_by_length is on by default now, but earlier runs trained without it.)
_EARLIER_RUNS_HAD = {"lr_scaling": "none", "base_batch_size": 64, "budget": "epochs", "train_steps": None,
                     "data_seed": None, "group_by_length": False, "compile": False, "text_pair_column": None,
                     "dataset_config": None, "positive_label": None}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Defaults follow the seed study where it had one."""

    model: str = field(default="minilm", metadata={"help": "Alias (bert, modernbert, minilm), hub id or local directory."})
    dataset: str = field(default="demo", metadata={"help": "demo, imdb, a hub dataset id, a local file or a directory."})
    backend: str = field(default="torch", metadata={"help": "Training loop: torch or accelerate."})
    effective_batch_size: int = field(default=64, metadata={"help": "Samples per optimizer step (EBS)."})
    micro_batch_size: Union[int, str] = field(default=16, metadata={"help": "Samples per forward/backward pass (EBS must be a multiple), or auto: the largest power of two that fits in memory, keeping EBS."})
    epochs: int = field(default=5, metadata={"help": "Passes over the training split."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate at --base-batch-size (all EBS when --lr-scaling none)."})
    lr_scaling: str = field(default="none", metadata={"help": "Scale --lr with EBS/--base-batch-size: none, linear or sqrt."})
    base_batch_size: int = field(default=64, metadata={"help": "The EBS at which --lr applies unscaled."})
    budget: str = field(default="epochs", metadata={"help": "epochs (every EBS runs --epochs) or steps (every EBS runs --train-steps)."})
    train_steps: Optional[int] = field(default=None, metadata={"help": "Optimizer steps to run with --budget steps."})
    optimizer: str = field(default="adam", metadata={"help": "adam or adamw."})
    scheduler: str = field(default="constant", metadata={"help": "constant, linear or cosine (sized in optimizer steps)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of optimizer steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (L2 for adam, decoupled for adamw)."})
    grad_clip: Optional[float] = field(default=None, metadata={"help": "Clip the accumulated gradient to this norm."})
    max_length: int = field(default=128, metadata={"help": "Truncate token sequences to this length."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout before the linear head."})
    pooling: str = field(default="cls", metadata={"help": "cls or mean pooling of the encoder output."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on a GPU that has it, else fp32), no, bf16 or fp16 (fp16 needs a CUDA GPU)."})
    seed: int = field(default=42, metadata={"help": "Seeds the sample order and the head (and the split, unless --data-seed)."})
    data_seed: Optional[int] = field(default=None, metadata={"help": "Seeds the 8:1:1 split alone (default: --seed)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training samples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N validation and test samples."})
    text_column: Optional[str] = field(default=None, metadata={"help": "Text column (default: auto-detect)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (default: auto-detect)."})
    text_pair_column: Optional[str] = field(default=None, metadata={"help": "Second text of a sentence pair, tokenized as a pair (default: auto-detect sentence1/sentence2, premise/hypothesis, question1/question2, question/sentence, sentence_a/sentence_b unless --text-column is given)."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "The hub dataset's configuration, e.g. mrpc for nyu-mll/glue."})
    positive_label: Optional[str] = field(default=None, metadata={"help": "The positive class of a two-label task, for F1 (default: the second label in sorted order, id 1)."})
    drop_last: bool = field(default=False, metadata={"help": "Drop the short last optimizer group of each epoch."})
    group_by_length: bool = field(default=True, metadata={"help": "Sort each optimizer group by length before cutting micro-batches: less padding, same gradient."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (pays off on a GPU for long runs)."})
    noise_scale: bool = field(default=True, metadata={"help": "Measure the gradient noise scale B_simple from the micro-batch gradients (runs of 2+ micro-batches per step)."})
    noise_scale_every: int = field(default=1, metadata={"help": "Write the noise scale into the steps table every N optimizer steps."})
    noise_scale_decay: float = field(default=0.99, metadata={"help": "EMA decay of the noise-scale averages, restarted every epoch."})
    eval_every: Optional[int] = field(default=None, metadata={"help": "Also evaluate validation every N optimizer steps (table evals), for steps-to-target; default: at epoch ends only."})
    checkpoint: bool = field(default=True, metadata={"help": "Save the best-validation model as safetensors."})
    checkpoint_dir: Optional[str] = field(default=None, metadata={"help": "Where checkpoints go (default: checkpoints/ beside the database)."})
    log_with: Optional[str] = field(default=None, metadata={"help": "Also log to a tracker: wandb, tensorboard or mlflow (default: off)."})

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        self._validate()

    @property
    def scaled_lr(self) -> float:
        """The learning rate the run uses: --lr scaled by EBS / --base-batch-size under the rule.

        linear (Goyal et al. 2017) keeps the per-sample step size; sqrt (Krizhevsky 2014, Hoffer et al.
        2017) keeps the update's noise scale, and is the usual choice for Adam."""
        ratio = self.effective_batch_size / self.base_batch_size
        factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]
        return self.lr * factor

    @property
    def split_seed(self) -> int:
        """The seed of the train/validation/test split."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def auto_micro_batch(self) -> bool:
        return self.micro_batch_size == AUTO

    @property
    def accumulation_steps(self) -> Optional[int]:
        """Micro-batches per optimizer step in one process: EBS / micro-batch size (None until auto is resolved)."""
        return None if self.auto_micro_batch else self.effective_batch_size // self.micro_batch_size

    def accumulation_steps_for(self, world_size: int) -> Optional[int]:
        """Micro-steps per optimizer step on each of `world_size` processes: EBS = world x micro x k."""
        per_step = world_size * (1 if self.auto_micro_batch else self.micro_batch_size)
        if self.effective_batch_size % per_step:
            micro = "" if self.auto_micro_batch else f" x micro-batch size {self.micro_batch_size} = {per_step}"
            raise UserError(
                f"effective batch size {self.effective_batch_size} is not a multiple of {world_size} processes"
                f"{micro}; use a multiple of {per_step} or change --micro-batch-size"
            )
        return None if self.auto_micro_batch else self.effective_batch_size // per_step

    def with_micro_batch_size(self, micro_batch_size: int) -> RunConfig:
        """This configuration with --micro-batch-size auto replaced by the size it resolved to."""
        return dataclasses.replace(self, micro_batch_size=micro_batch_size)

    def _validate(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        # What no single value can say: how the values go together.
        if not self.auto_micro_batch and self.effective_batch_size % self.micro_batch_size:
            lower = max(self.micro_batch_size, self.effective_batch_size // self.micro_batch_size * self.micro_batch_size)
            upper = lower + self.micro_batch_size
            raise UserError(
                f"effective batch size {self.effective_batch_size} is not a multiple of micro-batch size "
                f"{self.micro_batch_size}; use --effective-batch-size {lower} or {upper}, or change --micro-batch-size"
            )
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise UserError(f"--text-pair-column '{self.text_pair_column}' is also the --text-column; a pair needs "
                            "two different columns, e.g. --text-column premise --text-pair-column hypothesis")
        if self.budget == "steps" and self.train_steps is None:
            raise UserError("--budget steps needs the number of optimizer steps; pass e.g. --train-steps 200")
        if self.budget == "epochs" and self.train_steps is not None:
            raise UserError("--train-steps only applies with --budget steps; add --budget steps or drop --train-steps")

    def to_dict(self) -> dict[str, Any]:
        """All fields plus the derived accumulation_steps and scaled_lr, as stored in runs.config_json."""
        return {**dataclasses.asdict(self), "accumulation_steps": self.accumulation_steps, "scaled_lr": self.scaled_lr}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> RunConfig:
        """The config back from to_dict() output (runs.config_json, a checkpoint's accumbench.json)."""
        return cls(**{k: v for k, v in stored.items() if k not in _DERIVED})

    @property
    def config_hash(self) -> str:
        """Stable across processes and versions: sha256 of the sorted JSON of the result-changing fields."""
        hashed = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_HASHED}
        # Settings that cannot change the run say nothing: the same run must have one hash.
        if self.lr_scaling == "none":
            del hashed["base_batch_size"]
        if self.budget == "steps":
            del hashed["epochs"]
        if self.data_seed == self.seed:
            hashed["data_seed"] = None
        for name, default in _EARLIER_RUNS_HAD.items():
            if name in hashed and hashed[name] == default:
                del hashed[name]
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]


CONFIG_KEYS = tuple(f.name for f in fields(RunConfig))
_DERIVED = ("accumulation_steps", "scaled_lr")  # in to_dict() for readers, not fields


_POSITIVE = ("effective_batch_size", "micro_batch_size", "epochs", "max_length")
_POSITIVE_OR_NONE = ("max_train_samples", "max_eval_samples", "train_steps", "eval_every")
_CHOICES = {"backend": BACKENDS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "pooling": POOLINGS,
            "precision": PRECISIONS, "lr_scaling": LR_SCALINGS, "budget": BUDGETS}
# In [0, 1), with an example.
_UNIT_INTERVAL = {"warmup_ratio": "--warmup-ratio 0.1", "dropout": "--dropout 0.1", "noise_scale_decay": "0.99"}


TRACKERS = ("wandb", "tensorboard", "mlflow")  # --log-with
# Accelerate's TensorBoardTracker uses torch.utils.tensorboard (needs `tensorboard`) and falls back to tensorboardX.
TRACKER_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def require_tracker(log_with: Optional[str]) -> Optional[str]:
    """The installed package that provides the tracker `log_with` (None for no tracker); UserError for an
    unknown tracker, or one whose package is missing.

    find_spec locates a package without importing it, so this stays cheap."""
    if log_with is None:
        return None
    if log_with not in TRACKERS:
        raise UserError(f"unknown --log-with {log_with!r}; choose one of: {', '.join(TRACKERS)}")
    found = next((name for name in TRACKER_PACKAGES[log_with] if importlib.util.find_spec(name) is not None), None)
    if found is None:
        raise UserError(f"--log-with {log_with} needs the {log_with} package; pip install 'accumbench[{log_with}]'")
    return found


def check_value(name: str, value: Any) -> None:
    """One field's value (already of its type) on its own: UserError naming the problem and the fix.
    RunConfig checks every field so, and then how they go together; a config file is checked value by
    value before flags are applied, so a wrong value in it is an error even where a flag overrides it."""
    if name in _POSITIVE:
        if not (name == "micro_batch_size" and value == AUTO) and value <= 0:
            raise UserError(f"{_flag(name)} must be a positive integer, got {plain_number(value)}; pass a value >= 1")
    elif name in _POSITIVE_OR_NONE:
        if value is not None and value <= 0:
            raise UserError(f"{_flag(name)} must be a positive integer, got {plain_number(value)}; pass a value >= 1 or leave it out")
    elif name == "base_batch_size" and value <= 0:
        raise UserError(f"--base-batch-size must be a positive integer, got {plain_number(value)}; pass e.g. 64")
    elif name == "lr" and not (value > 0 and math.isfinite(value)):
        raise UserError(f"--lr must be a positive number, got {plain_number(value)}; pass e.g. --lr 5e-5")
    elif name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(f"unknown {_flag(name)} '{value}'; choose one of: {', '.join(_CHOICES[name])}")
    elif name in _UNIT_INTERVAL and not 0.0 <= value < 1.0:
        raise UserError(f"{_flag(name)} must be in [0, 1), got {plain_number(value)}; pass e.g. {_UNIT_INTERVAL[name]}")
    elif name == "noise_scale_every" and value <= 0:
        raise UserError(f"--noise-scale-every must be a positive integer, got {plain_number(value)}; pass e.g. 10")
    elif name == "weight_decay" and value < 0:
        raise UserError(f"--weight-decay must be >= 0, got {plain_number(value)}")
    elif name == "grad_clip" and value is not None and not value > 0:
        raise UserError(f"--grad-clip must be a positive norm, got {plain_number(value)}; leave it out to disable clipping")
    elif name == "log_with":
        require_tracker(value)


def check_file_value(name: str, value: Any, path: Path, overridden: bool) -> Any:
    """A config file's value for field `name`, converted and checked on its own; the UserError names the
    file (and says so when a flag would have overridden the value: the file is wrong all the same)."""
    try:
        converted = coerce_field(name, value)
        check_value(name, converted)
    except UserError as exc:
        raise file_error(path, exc, _flag(name) if overridden else None) from None
    return converted


def file_error(path: Path, exc: UserError, overriding_flag: Optional[str]) -> UserError:
    """A config file's wrong value as one line: where, what, the fix, and that a flag does not excuse it."""
    problem = str(exc).removesuffix(_FIX_SUFFIX)
    fix = "" if "; " in problem else "; fix the file"  # most messages name their fix already
    anyway = f" (even though {overriding_flag} on the command line overrides it)" if overriding_flag else ""
    return UserError(f"in {path}: {problem}{fix}{anyway}")


def coerce_field(name: str, value: Any) -> Any:
    """One value for the RunConfig field `name`, converted as flags and YAML values are."""
    return _coerce(name, value, next(f.type for f in fields(RunConfig) if f.name == name))


def base_type(annotation: str) -> str:
    """A field's type without Optional: "Optional[int]" -> "int"."""
    if annotation.startswith("Optional["):
        return annotation.removeprefix("Optional[").removesuffix("]")
    return annotation


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_FIX_SUFFIX = "; fix the value in the flag or the YAML file"


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Turn YAML/CLI values into the field's type, or explain which value is wrong."""
    if value is None:
        if annotation.startswith("Optional"):
            return None
        raise UserError(f"{_flag(name)} needs a value; remove the empty key or give one")
    base = expected = base_type(annotation)
    if base == "Union[int, str]":  # --micro-batch-size: a number, or auto
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        base, expected = "int", "int or auto"
    try:
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            # PyYAML reads "5e-5" (no dot) as a string, so accept numeric strings.
            return float(value)
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            raise ValueError
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        pass
    raise UserError(f"{_flag(name)} must be {expected}, got {value!r}{_FIX_SUFFIX}")


# Hugging Face TrainingArguments names that people bring from the Trainer: the accumbench option each one
# is (or stands for), and what to know about it. An unknown key or flag that is one of them gets that name
# back, rather than a list of every key.
TRAINER_NAMES = {
    "learning_rate": ("lr", ""),
    "num_train_epochs": ("epochs", ""),
    "per_device_train_batch_size": ("micro_batch_size", "the batch of one forward pass"),
    "gradient_accumulation_steps": ("effective_batch_size", "accumbench derives the steps: effective batch size = "
                                                            "micro-batch size x steps"),
    "max_steps": ("train_steps", "with budget steps"),
    "max_grad_norm": ("grad_clip", ""),
    "lr_scheduler_type": ("scheduler", ""),
    "warmup_steps": ("warmup_ratio", "a share of the optimizer steps"),
    "optim": ("optimizer", ""),
    "output_dir": ("checkpoint_dir", ""),
    "report_to": ("log_with", ""),
    "dataloader_drop_last": ("drop_last", ""),
    "model_name_or_path": ("model", ""),
    "bf16": ("precision", "precision bf16"),
    "fp16": ("precision", "precision fp16"),
    "eval_steps": ("eval_every", ""),
}


def trainer_hint(name: str, flag: bool = False) -> str | None:
    """'did you mean ...' for a Hugging Face Trainer name given as a YAML key (or, with flag, as a --flag);
    None for any other name."""
    trainer = name.lstrip("-").replace("-", "_")
    if trainer not in TRAINER_NAMES:
        return None
    ours, note = TRAINER_NAMES[trainer]
    spelled = _flag(ours) if flag else f"'{ours}'"
    return f"did you mean {spelled}? (the Hugging Face Trainer's {trainer}{': ' + note if note else ''})"


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


def build_config(config_file: Optional[Path] = None, **overrides: Any) -> RunConfig:
    """Defaults, then the YAML file, then every override that is not None (the flags the user gave).
    The file is checked whole first: a wrong value in it is an error even where a flag overrides it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {}
    if config_file:
        values = {key: check_file_value(key, value, config_file, key in given)
                  for key, value in read_yaml(config_file).items()}
    values.update(given)
    return RunConfig(**values)
