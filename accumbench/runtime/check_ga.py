"""`accumbench check-ga`: the user's own proof that gradient accumulation is exact on their model.

One group of real tokenized examples, dropout off, no optimizer step. The full-batch gradient of
the group's mean loss (one pass, fp32) is the reference; each backend's accumulated gradient over
micro-batches must match it, and so must the torch loop's at static shapes (--compile) and, on a GPU in
bf16, its CUDA graphs; the naive 1/k rule is shown beside them for contrast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from accumbench import accumulation
from accumbench.backends.base import BackendSetup, build_backend
from accumbench.backends.device import local_device, require_supported_precision, to_device
from accumbench.backends.static_step import resolve_cuda_graphs
from accumbench.config import BACKENDS, REFERENCE_BACKEND
from accumbench.data import pipeline
from accumbench.errors import UserError
from accumbench.formatting import unknown_choice
from accumbench.model import TextClassifier, load_tokenizer_and_encoder

# Relative max deviation allowed per precision: fp32 differs only by summation order; bf16 and
# fp16 forward passes round activations, so accumulated and full-batch gradients drift apart more.
TOLERANCES = {"no": 1e-5, "bf16": 5e-2, "fp16": 1e-2}


@dataclass
class GradientCheck:
    name: str
    max_abs_deviation: float
    relative_deviation: float  # max |g - ref| / max |ref|
    norm_ratio: float  # |g| / |ref|
    tolerance: float | None  # None: shown for contrast, not judged

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.relative_deviation <= self.tolerance


def _gradient(model: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


def _compare(name: str, grad: torch.Tensor, reference: torch.Tensor, tolerance: float | None) -> GradientCheck:
    deviation = (grad - reference).abs().max().item()
    return GradientCheck(name, deviation, deviation / reference.abs().max().item(),
                         (grad.norm() / reference.norm()).item(), tolerance)


def check_gradient_accumulation(model: str = "minilm", samples: int = 50, micro_batch_size: int = 16,
                                backends: tuple[str, ...] = tuple(BACKENDS), precision: str = "no",
                                dataset: str = "demo", max_length: int = 128, seed: int = 0) -> list[GradientCheck]:
    """Checks for each backend named (config.BACKENDS, in its order), then the naive 1/k rule (not judged)."""
    if samples < 2 or micro_batch_size < 1:
        raise UserError("--samples must be >= 2 and --micro-batch-size >= 1; e.g. --samples 50 --micro-batch-size 16")
    if micro_batch_size >= samples:
        raise UserError(f"--micro-batch-size {micro_batch_size} >= --samples {samples} leaves nothing to accumulate; "
                        "use a micro-batch smaller than the group")
    if precision not in TOLERANCES:
        raise UserError(unknown_choice("--precision", precision, TOLERANCES))
    require_supported_precision(precision)
    texts = pipeline.load_text_dataset(dataset, seed=seed, max_train_samples=samples).train
    if len(texts) < samples:
        raise UserError(f"dataset '{dataset}' has only {len(texts)} training examples; lower --samples")
    tokenizer, encoder = load_tokenizer_and_encoder(model)
    split = pipeline.tokenize(texts, tokenizer, max_length)
    torch.manual_seed(seed)
    classifier = TextClassifier(encoder, num_labels=max(2, max(split.labels) + 1), dropout=0.0, pooling="cls")
    classifier.eval()  # dropout off everywhere, so every pass computes the same function
    device = local_device()
    classifier.to(device)
    batch_for = lambda indices: pipeline.collate(split, indices, tokenizer.pad_token_id)  # noqa: E731

    # The reference: the mean loss over the whole group, in one fp32 pass.
    batch = to_device(batch_for(range(samples)), device)
    F.cross_entropy(classifier(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    reference = _gradient(classifier)

    group = accumulation.cut_group(list(range(samples)), micro_batch_size)
    k = math.ceil(samples / micro_batch_size)
    setup = BackendSetup(optimizer="adam", lr=1e-5, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0,
                         total_steps=1, precision=precision, accumulation_steps=k)
    # The reference backend is built first, whatever is checked: the naive rule runs through its loop too.
    reference_loop = build_backend(REFERENCE_BACKEND, classifier, setup)
    checks = []
    for name in (name for name in BACKENDS if name in backends):
        backend = reference_loop if name == REFERENCE_BACKEND else build_backend(name, classifier, setup)
        next(iter(backend.accumulated([group], batch_for)))  # stops at the group's boundary: .grad holds it
        checks.append(_compare(name, _gradient(classifier), reference, TOLERANCES[precision]))
    # The torch loop's other paths, where a run could take them: static shapes (--compile) and CUDA graphs.
    for path, switch in torch_paths(precision) if REFERENCE_BACKEND in backends else ():
        static = dataclasses.replace(setup, micro_batch_size=micro_batch_size, max_length=max_length, **switch)
        next(iter(build_backend(REFERENCE_BACKEND, classifier, static).accumulated([group], batch_for)))
        checks.append(_compare(f"{REFERENCE_BACKEND}, {path}", _gradient(classifier), reference, TOLERANCES[precision]))
    naive = accumulation.cut_group_naively(range(samples), micro_batch_size, k)
    next(iter(reference_loop.accumulated([naive], batch_for)))
    checks.append(_compare(f"naive 1/{k} rule", _gradient(classifier), reference, None))
    return checks


def torch_paths(precision: str) -> list[tuple[str, dict[str, bool]]]:
    """The torch loop's paths besides eager, as check-ga names them: static shapes always (what --compile trains
    at), and CUDA graphs where --cuda-graphs auto would take them (a CUDA GPU, bf16)."""
    paths = [("static shapes", {"static_shapes": True})]
    if resolve_cuda_graphs("auto", precision, REFERENCE_BACKEND, 1) == "on":
        paths.append(("CUDA graphs", {"cuda_graphs": True}))
    return paths
