"""Hugging Face TrainingArguments names that people bring from the Trainer, mapped to accumbench's options.

An unknown YAML key or flag that is one of them gets accumbench's name back ("did you mean --lr?"), rather
than a list of every key. Standard library only: the CLI's parse errors use it.
"""

from __future__ import annotations


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The accumbench option each Trainer name is (or stands for), and what to know about it.
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
    "adam_epsilon": ("adam_eps", ""),
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
