"""The seed study's classifier: a pretrained encoder, dropout, then one linear layer.

`--model` is an alias, a local `save_pretrained` directory, or a hub id, loaded through
transformers' own Auto classes. The CLI imports this module only when it trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from accumbench.errors import UserError, first_line
from accumbench.model_names import cannot_load, resolve_model_source


def _load_error(name: str, exc: Exception) -> UserError:
    return cannot_load(name, f"{type(exc).__name__}: {first_line(exc)}")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers and huggingface_hub without progress bars ("Loading weights", downloads) or info and
    warning logs (the load report of a checkpoint's unused head) while a model loads: a model that cannot be
    used is then one error line with nothing printed before it, and the run's own display is the one that
    matters. Scoped, not process-wide: transformers offers a switch and a way to read it (its progress switch
    is huggingface_hub's too), so the state before comes back after. HF_HUB_DISABLE_PROGRESS_BARS, when the
    user set it, has priority, as huggingface_hub has it (it warns when code overrides it)."""
    from huggingface_hub import constants
    from transformers.utils import logging as hf_logging

    bars = constants.HF_HUB_DISABLE_PROGRESS_BARS is None and hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    if bars:
        hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_model(name: str, local_files_only: bool = False) -> None:
    """Raise the UserError that loading `--model name` would, without loading its weights: a sweep
    checks every model of its grid this way before it claims its first cell."""
    source = resolve_model_source(name)
    from transformers import AutoConfig, AutoTokenizer

    try:
        with quiet_loading():
            AutoConfig.from_pretrained(source, local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(name, exc) from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of model '{name}' has no padding token; pick a model whose tokenizer has one")


def load_tokenizer_and_encoder(name: str) -> tuple[Any, Any]:
    """(tokenizer, encoder) for `--model name`, or a UserError that says why it cannot be had."""
    source = resolve_model_source(name)
    from transformers import AutoModel, AutoTokenizer

    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source)
            encoder = AutoModel.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(name, exc) from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer of model '{name}' has no padding token; pick a model whose tokenizer has one")
    return tokenizer, encoder


def embeds_segments(encoder: Any) -> bool:
    """Whether the encoder has a token type (segment) embedding to tell a pair's two texts apart: BERT's
    type_vocab_size is 2; ModernBERT has none and sees the pair through its separator token alone."""
    return (getattr(encoder.config, "type_vocab_size", 0) or 0) >= 2


class TextClassifier(nn.Module):
    """encoder -> pooled [CLS] or mean of real tokens -> dropout -> linear.

    The encoder keeps the dropout its own config sets; `dropout` is the head's."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float, pooling: str) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            # BERT's pooler (dense + tanh on [CLS]) is not part of the seed's head. Left in, it costs
            # compute and gets no gradient, which DDP treats as an error.
            encoder.pooler = None
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask None: no padding in this batch (see data.collate). token_type_ids: a pair's
        segments, given only to encoders that embed them (ModernBERT's forward takes none)."""
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=encoder_mask(self.encoder.config, attention_mask),
                              **segments).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:  # mean over real tokens only, so padding never changes a sample's representation
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.head(self.dropout(pooled))


# Encoders whose masks transformers builds with masking_utils, which passes a ready 4D mask through untouched.
_PREBUILT_MASKS = ("bert", "modernbert")


def encoder_mask(config: Any, attention_mask: torch.Tensor | None) -> Any:
    """The encoder's attention mask, built here from the [batch, length] 0/1 mask where transformers would ask
    the GPU about it. Given a 2D mask, transformers' SDPA path checks `padding_mask.all()` in a Python `if`,
    once per mask it builds (BERT one, ModernBERT two): a host-device sync on every forward, and an error
    inside a CUDA graph capture. A ready boolean mask (True: attend) is used as-is, and computes the same
    numbers (the same mask, bit for bit). ModernBERT takes one per layer type: its local layers see only keys
    within `sliding_window` positions. Other encoders and attention implementations get the 2D mask as before."""
    if (attention_mask is None or attention_mask.dim() != 2 or getattr(config, "model_type", None) not in _PREBUILT_MASKS
            or getattr(config, "_attn_implementation", None) != "sdpa"):
        return attention_mask
    keys = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, length]: every query sees the real keys
    if config.model_type != "modernbert":
        return keys
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    window = (positions[:, None] - positions[None, :]).abs() <= config.sliding_window
    return {"full_attention": keys, "sliding_attention": keys & window}
