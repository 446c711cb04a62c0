"""The run configuration: one frozen, validated dataclass, readable from YAML with flags on top.

Only the standard library and PyYAML are imported here, so `accumbench --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from accumbench.ebs_schedule import EbsSchedule, normalized, parse_points, parse_schedule
from accumbench.errors import UserError
from accumbench.formatting import plain_number, unknown_choice
from accumbench.optim_scaling import (
    BETA_SCALINGS,
    BUNDLES,
    EPS_SCALINGS,
    LR_SCALINGS,
    OTHER_RULE_FIELDS,
    RULE_FIELDS,
    SCALING_RULES,
    WEIGHT_DECAY_SCALINGS,
    OptimizerSettings,
    bundle_name,
    scaled_settings,
)


@dataclass(frozen=True)
class BackendEntry:
    """A training loop that --backend can name. Its class (a backends.base.Backend over the shared epoch loop,
    built as Class(model, BackendSetup)) is named, not imported: nothing heavy loads before a run builds it,
    and the report, which reads only the names, never loads torch."""

    loop: str  # "module:Class"


# The backend table: a run builds its --backend from it (runtime/preparation.py), check-ga checks every entry,
# and the report compares each backend with the first, the reference (analysis/cells.backend_comparison).
BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry("accumbench.backends.torch_loop:TorchBackend"),
    "accelerate": BackendEntry("accumbench.backends.accelerate_loop:AccelerateBackend"),
}
REFERENCE_BACKEND = next(iter(BACKENDS))

PRECISIONS = ("auto", "no", "bf16", "fp16")
AUTO = "auto"  # --micro-batch-size auto: the largest power of two that fits in memory (see micro_batch.py)
OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("constant", "linear", "cosine")
POOLINGS = ("cls", "mean")
BUDGETS = ("epochs", "steps")
CUDA_GRAPHS = ("auto", "on", "off")  # auto: on where graphs can run (backends/static_step.resolve_cuda_graphs)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # torch.compile's modes that leave graphs to us

# Fields that never change what a run computes, so they stay out of config_hash.
# The noise scale and evaluations between epochs' ends are measurements: they read the gradients and
# the model, and change no number of the training.
# --scaling-rule is a shorthand: the rules it sets are fields of their own, and those are hashed.
_NOT_HASHED = frozenset({"checkpoint", "checkpoint_dir", "log_with", "noise_scale", "noise_scale_every", "noise_scale_decay",
                         "eval_every", "scaling_rule", "save_states"})
# Fields added after runs were first recorded, with the value every earlier run implicitly had:
# left out of config_hash at that value, so the hash of an earlier run still names the same
# configuration. (group_by_length is on by default now, but earlier runs trained without it.)
_EARLIER_RUNS_HAD = {"lr_scaling": "none", "base_batch_size": 64, "budget": "epochs", "train_steps": None,
                     "data_seed": None, "group_by_length": False, "compile": False, "text_pair_column": None,
                     "dataset_config": None, "positive_label": None, "adam_beta1": 0.9, "adam_beta2": 0.999,
                     "adam_eps": 1e-8, "beta1_scaling": "none", "beta2_scaling": "none", "eps_scaling": "none",
                     "weight_decay_scaling": "none", "ebs_schedule": None, "cuda_graphs": "auto", "compile_mode": "default"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Defaults follow the seed study where it had one."""

    model: str = field(default="minilm", metadata={"help": "Alias (bert, modernbert, minilm), hub id or local directory."})
    dataset: str = field(default="demo", metadata={"help": "demo, imdb, a hub dataset id, a local file or a directory."})
    backend: str = field(default=REFERENCE_BACKEND, metadata={"help": f"Training loop: {' or '.join(BACKENDS)}."})
    effective_batch_size: int = field(default=64, metadata={"help": "Samples per optimizer step (EBS)."})
    micro_batch_size: Union[int, str] = field(default=16, metadata={"help": "Samples per forward/backward pass (EBS must be a multiple), or auto: the largest power of two that fits in memory, keeping EBS."})
    epochs: int = field(default=5, metadata={"help": "Passes over the training split."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate at --base-batch-size (all EBS when --lr-scaling none)."})
    lr_scaling: str = field(default="none", metadata={"help": "Scale --lr with EBS/--base-batch-size: none, linear or sqrt."})
    base_batch_size: int = field(default=64, metadata={"help": "The EBS at which --lr, --adam-beta1, --adam-beta2, --adam-eps and --weight-decay apply unscaled."})
    beta1_scaling: str = field(default="none", metadata={"help": "Scale --adam-beta1 with kappa = EBS/--base-batch-size: none, or half-life (beta1^kappa: the same half-life in samples)."})
    beta2_scaling: str = field(default="none", metadata={"help": "Scale --adam-beta2: none, or half-life (beta2^kappa, Marek et al. 2025)."})
    eps_scaling: str = field(default="none", metadata={"help": "Scale --adam-eps: none, or sqrt (eps/sqrt(kappa), Malladi et al. 2022)."})
    weight_decay_scaling: str = field(default="none", metadata={"help": "Scale --weight-decay: none, or timescale (wd*kappa*lr_base/lr: AdamW's timescale held, Bergsma et al. 2025; with --optimizer adamw)."})
    scaling_rule: str = field(default="none", metadata={"help": "A bundle of rules: sde sets --lr-scaling sqrt, --beta1-scaling and --beta2-scaling half-life, --eps-scaling sqrt (Malladi et al. 2022), over those left at none."})
    budget: str = field(default="epochs", metadata={"help": "epochs (every EBS runs --epochs) or steps (every EBS runs --train-steps)."})
    train_steps: Optional[int] = field(default=None, metadata={"help": "Optimizer steps to run with --budget steps."})
    optimizer: str = field(default="adam", metadata={"help": "adam or adamw."})
    scheduler: str = field(default="constant", metadata={"help": "constant, linear or cosine (sized in optimizer steps)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of optimizer steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (L2 for adam, decoupled for adamw) at --base-batch-size."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam's beta1 at --base-batch-size, in (0, 1)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam's beta2 at --base-batch-size, in (0, 1)."})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam's epsilon at --base-batch-size, > 0."})
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
    compile: bool = field(default=False, metadata={"help": "torch.compile the model, at static shapes (micro-batches padded to lengths in steps of 32): each shape compiles once."})
    compile_mode: str = field(default="default", metadata={"help": "torch.compile's mode with --compile: default, or max-autotune-no-cudagraphs (tuned kernels, a longer compile)."})
    cuda_graphs: str = field(default="auto", metadata={"help": "Replay each micro-batch's forward and backward, and the optimizer step, as CUDA graphs at static shapes: auto (on with a CUDA GPU, bf16, --backend torch and one process), on or off."})
    noise_scale: bool = field(default=True, metadata={"help": "Measure the gradient noise scale B_simple from the micro-batch gradients (runs of 2+ micro-batches per step)."})
    noise_scale_every: int = field(default=1, metadata={"help": "Write the noise scale into the steps table every N optimizer steps."})
    noise_scale_decay: float = field(default=0.99, metadata={"help": "EMA decay of the noise-scale averages, restarted every epoch."})
    eval_every: Optional[int] = field(default=None, metadata={"help": "Also evaluate validation every N optimizer steps (table evals), for steps-to-target; default: at epoch ends only."})
    ebs_schedule: Optional[str] = field(default=None, metadata={"help": "An EBS that changes as training goes: by epochs trained (16@0,64@1,256@3), by optimizer steps (16@0,64@step40), or auto[:START-CAP] (doubles at an epoch's end once the measured B_simple passes it). Sets --effective-batch-size to its start.", "separator": ";"})
    save_states: Optional[str] = field(default=None, metadata={"help": "Save the model and optimizer state at these epochs (0,1,2; 0 = before training) or steps (step20,step40), for accumbench branch."})
    checkpoint: bool = field(default=True, metadata={"help": "Save the best-validation model as safetensors."})
    checkpoint_dir: Optional[str] = field(default=None, metadata={"help": "Where checkpoints go (default: checkpoints/ beside the database)."})
    log_with: Optional[str] = field(default=None, metadata={"help": "Also log to a tracker: wandb, tensorboard or mlflow (default: off)."})

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        check_value("scaling_rule", self.scaling_rule)
        for name, rule in BUNDLES.get(self.scaling_rule, {}).items():
            given = getattr(self, name)
            if given not in ("none", rule):
                raise UserError(f"--scaling-rule {self.scaling_rule} sets {option_flag(name)} {rule}, but {option_flag(name)} is "
                                f"{given}; drop one of the two")
            object.__setattr__(self, name, rule)
        if self.ebs_schedule is not None:  # canonical text, and the EBS it starts at
            text, start = normalized(self.ebs_schedule, self.effective_batch_size, self.micro_batch_size, self.budget,
                                     self.scheduler, self.noise_scale)
            object.__setattr__(self, "ebs_schedule", text)
            object.__setattr__(self, "effective_batch_size", start)
        if self.save_states is not None:
            parse_points(self.save_states)
        self._validate()

    @property
    def schedule(self) -> EbsSchedule | None:
        """--ebs-schedule parsed (None: one EBS throughout)."""
        return None if self.ebs_schedule is None else parse_schedule(self.ebs_schedule, None)

    def settings_at(self, effective_batch_size: int) -> OptimizerSettings:
        """The optimizer settings at another EBS under the run's rules: each stage of an --ebs-schedule."""
        return dataclasses.replace(self, ebs_schedule=None, effective_batch_size=effective_batch_size).optimizer_settings

    @property
    def kappa(self) -> float:
        """EBS / --base-batch-size: how far every scaling rule moves its setting."""
        return self.effective_batch_size / self.base_batch_size

    @property
    def rules(self) -> dict[str, str]:
        """{rule field: rule}, e.g. {'lr_scaling': 'sqrt', 'beta2_scaling': 'half-life', ...}."""
        return {name: getattr(self, name) for name in RULE_FIELDS}

    @property
    def scales_beyond_lr(self) -> bool:
        """Whether a β, ε or weight-decay rule scales anything (the base batch size then matters beyond the lr)."""
        return any(getattr(self, name) != "none" for name in OTHER_RULE_FIELDS)

    @property
    def rule_bundle(self) -> str:
        """The rules by name: 'sde', 'sqrt lr, β2 half-life', or 'none'."""
        return bundle_name(self.rules)

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        """What the run's optimizer uses: lr, betas, eps and weight decay, each scaled under its rule
        (optim_scaling.py says why each rule is what it is)."""
        return scaled_settings(kappa=self.kappa, lr=self.lr, beta1=self.adam_beta1, beta2=self.adam_beta2,
                               eps=self.adam_eps, weight_decay=self.weight_decay, rules=self.rules)

    @property
    def scaled_lr(self) -> float:
        """The learning rate the run uses: --lr scaled by EBS / --base-batch-size under --lr-scaling."""
        return self.optimizer_settings.lr

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
        if self.weight_decay_scaling == "timescale" and self.optimizer != "adamw":
            # tau = B / (lr wd D) is the timescale of decoupled decay; Adam's L2 term goes through the moments.
            raise UserError("--weight-decay-scaling timescale holds AdamW's timescale, and adam's weight decay is L2 "
                            "(coupled to the gradient); add --optimizer adamw or drop the rule")
        if self.budget == "steps" and self.train_steps is None:
            raise UserError("--budget steps needs the number of optimizer steps; pass e.g. --train-steps 200")
        if self.budget == "epochs" and self.train_steps is not None:
            raise UserError("--train-steps only applies with --budget steps; add --budget steps or drop --train-steps")

    def to_dict(self) -> dict[str, Any]:
        """All fields plus the derived accumulation_steps and the scaled optimizer settings, as stored in
        runs.config_json."""
        settings = self.optimizer_settings
        return {**dataclasses.asdict(self), "accumulation_steps": self.accumulation_steps, "scaled_lr": settings.lr,
                "scaled_beta1": settings.beta1, "scaled_beta2": settings.beta2, "scaled_eps": settings.eps,
                "scaled_weight_decay": settings.weight_decay}

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
        # At the base batch size (kappa = 1) the beta, eps and weight-decay rules are the identity.
        for name in OTHER_RULE_FIELDS if self.kappa == 1 else ():
            hashed[name] = "none"
        if all(hashed[name] == "none" for name in RULE_FIELDS):
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
# A sweep axis's values are comma-separated, unless a field's values hold commas themselves (a schedule's do).
LIST_SEPARATORS = {f.name: f.metadata.get("separator", ",") for f in fields(RunConfig)}
_DERIVED = ("accumulation_steps", "scaled_lr", "scaled_beta1", "scaled_beta2", "scaled_eps", "scaled_weight_decay")  # in to_dict() for readers, not fields


_POSITIVE = ("effective_batch_size", "micro_batch_size", "epochs", "max_length")
_POSITIVE_OR_NONE = ("max_train_samples", "max_eval_samples", "train_steps", "eval_every")
_CHOICES = {"backend": BACKENDS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "pooling": POOLINGS,
            "precision": PRECISIONS, "lr_scaling": LR_SCALINGS, "budget": BUDGETS,
            "beta1_scaling": BETA_SCALINGS, "beta2_scaling": BETA_SCALINGS, "eps_scaling": EPS_SCALINGS,
            "weight_decay_scaling": WEIGHT_DECAY_SCALINGS, "scaling_rule": SCALING_RULES,
            "cuda_graphs": CUDA_GRAPHS, "compile_mode": COMPILE_MODES}
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
        raise UserError(unknown_choice("--log-with", log_with, TRACKERS))
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
            raise UserError(f"{option_flag(name)} must be a positive integer, got {plain_number(value)}; pass a value >= 1")
    elif name in _POSITIVE_OR_NONE:
        if value is not None and value <= 0:
            raise UserError(f"{option_flag(name)} must be a positive integer, got {plain_number(value)}; pass a value >= 1 or leave it out")
    elif name == "base_batch_size" and value <= 0:
        raise UserError(f"--base-batch-size must be a positive integer, got {plain_number(value)}; pass e.g. 64")
    elif name == "lr" and not (value > 0 and math.isfinite(value)):
        raise UserError(f"--lr must be a positive number, got {plain_number(value)}; pass e.g. --lr 5e-5")
    elif name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(unknown_choice(option_flag(name), value, _CHOICES[name]))
    elif name in _UNIT_INTERVAL and not 0.0 <= value < 1.0:
        raise UserError(f"{option_flag(name)} must be in [0, 1), got {plain_number(value)}; pass e.g. {_UNIT_INTERVAL[name]}")
    elif name == "noise_scale_every" and value <= 0:
        raise UserError(f"--noise-scale-every must be a positive integer, got {plain_number(value)}; pass e.g. 10")
    elif name in ("adam_beta1", "adam_beta2") and not 0.0 < value < 1.0:
        raise UserError(f"{option_flag(name)} must be in (0, 1), got {plain_number(value)}; pass e.g. {option_flag(name)} "
                        f"{0.9 if name == 'adam_beta1' else 0.999}")
    elif name == "adam_eps" and not (value > 0 and math.isfinite(value)):
        raise UserError(f"--adam-eps must be a positive number, got {plain_number(value)}; pass e.g. --adam-eps 1e-8")
    elif name == "weight_decay" and value < 0:
        raise UserError(f"--weight-decay must be >= 0, got {plain_number(value)}")
    elif name == "grad_clip" and value is not None and not value > 0:
        raise UserError(f"--grad-clip must be a positive norm, got {plain_number(value)}; leave it out to disable clipping")
    elif name == "log_with":
        require_tracker(value)


def coerce_field(name: str, value: Any) -> Any:
    """One value for the RunConfig field `name`, converted as flags and YAML values are."""
    return _coerce(name, value, next(f.type for f in fields(RunConfig) if f.name == name))


def base_type(annotation: str) -> str:
    """A field's type without Optional: "Optional[int]" -> "int"."""
    if annotation.startswith("Optional["):
        return annotation.removeprefix("Optional[").removesuffix("]")
    return annotation


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


FIX_SUFFIX = "; fix the value in the flag or the YAML file"


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Turn YAML/CLI values into the field's type, or explain which value is wrong."""
    if value is None:
        if annotation.startswith("Optional"):
            return None
        raise UserError(f"{option_flag(name)} needs a value; remove the empty key or give one")
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
    raise UserError(f"{option_flag(name)} must be {expected}, got {value!r}{FIX_SUFFIX}")
