"""Training throughput side by side: a bare PyTorch loop, accumbench's two backends and HF Trainer.

Same model (the encoder + dropout + linear head), data, EBS, micro-batch and precision for all of:
  (a) bare     a minimal PyTorch loop written here: shuffled micro-batches padded to their own
               longest, loss / k, backward, one Adam step per k micro-batches
  (b) torch    accumbench's PyTorch backend (its defaults: length-grouped micro-batches)
  (c) accel    accumbench's Accelerate backend (the same)
  (d) trainer  HF Trainer with the same micro-batch, accumulation and optimizer, fed by its usual
               dynamic-padding collator (DataCollatorWithPadding)
Each measure is one epoch over the same samples. Variants run interleaved (a b c d a b c d ...),
the first round is a warm-up and is dropped, and the median of the rest is reported.

Three experiments:
  fixed     long texts, all truncated to --max-length: every micro-batch is full, no padding
  variable  SST-2 (../shared/data/sst2, else the demo data) at EBS 256 on micro-batch 16, where
            padding decides the speed; (e) torch-ungrouped is accumbench with --no-group-by-length
  ga        accumbench with 16 micro-batches per optimizer step against 1 (e.g. 16 x 8 vs 1 x 8)

Nothing is asserted: the script prints a table and writes every number to --out (JSON).

    python bench/throughput.py                 # MiniLM on this machine (~10 min on 2 CPU cores)
    python bench/throughput.py --model bert    # any --model accumbench takes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
TARGETS = {  # the targets, as ratios of medians
    "fixed: torch / bare": 0.98, "fixed: accel / bare": 0.97, "fixed: torch / trainer": 1.0,
    "variable: torch / trainer": 1.7,
}


def long_texts_csv(path: Path, n: int) -> None:
    """n texts of 200 words each: every one is truncated to the max length."""
    words = "the film was long and the plot kept turning around itself while the cast tried hard ".split()
    rows = [f'"{" ".join(words[(i + j) % len(words)] for j in range(200))}",{i % 2}' for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")


class Workload:
    """One experiment's data and sizes, tokenized once with accumbench's own loader and tokenizer."""

    def __init__(self, name: str, model: str, dataset: str, samples: int, ebs: int, micro: int, max_length: int,
                 precision: str, db: Path) -> None:
        from accumbench.backends.device import resolve_precision
        from accumbench.data import pipeline
        from accumbench.model import load_tokenizer_and_encoder

        self.name, self.model, self.dataset, self.samples = name, model, dataset, samples
        self.ebs, self.micro, self.max_length, self.db = ebs, micro, max_length, db
        self.precision = resolve_precision(precision)
        self.text = pipeline.load_text_dataset(dataset, seed=42, max_train_samples=samples, max_eval_samples=8)
        self.tokenizer, _ = load_tokenizer_and_encoder(model)
        self.train = pipeline.tokenize(self.text.train, self.tokenizer, max_length)
        self.samples = len(self.train)
        self.real_tokens = sum(self.train.lengths)

    def classifier(self):
        import torch

        from accumbench.model import TextClassifier, load_tokenizer_and_encoder

        _, encoder = load_tokenizer_and_encoder(self.model)
        torch.manual_seed(0)
        return TextClassifier(encoder, self.text.num_labels, dropout=0.1, pooling="cls")

    def config(self, backend: str, **overrides: Any):
        from accumbench.config import RunConfig

        values = dict(model=self.model, dataset=self.dataset, backend=backend, epochs=1,
                      effective_batch_size=self.ebs, micro_batch_size=self.micro, max_length=self.max_length,
                      max_train_samples=self.samples, max_eval_samples=8, precision=self.precision,
                      lr=5e-5, checkpoint=False, data_seed=42)
        return RunConfig(**{**values, **overrides})


def run_bare(work: Workload) -> float:
    """(a): the loop most people write. Returns train seconds for one epoch."""
    import torch
    import torch.nn.functional as F

    from accumbench.backends.device import AUTOCAST_DTYPES, local_device
    from accumbench.data.pipeline import collate, token_counts

    device = local_device()
    model = work.classifier().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    k = work.ebs // work.micro
    order = torch.randperm(work.samples, generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i : i + work.micro] for i in range(0, work.samples, work.micro)]
    real, padded = token_counts(batches, work.train.lengths)
    work.bare_padding = 1 - real / padded  # Trainer's random micro-batches pad alike
    dtype = AUTOCAST_DTYPES.get(work.precision)
    _sync(device)
    start = time.perf_counter()
    for i, indices in enumerate(batches):
        batch = collate(work.train, indices, work.tokenizer.pad_token_id)  # the same padding as accumbench's
        batch = {key: None if v is None else v.to(device, non_blocking=True) for key, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"]) / k
        loss.backward()
        if (i + 1) % k == 0 or i == len(batches) - 1:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def run_accumbench(work: Workload, backend: str, **overrides: Any) -> tuple[float, dict[str, Any]]:
    """(b), (c): a recorded accumbench run; its epoch's own train_seconds (evaluation excluded)."""
    from accumbench.runtime.engine import train

    row = train(work.config(backend, **overrides), db=str(work.db)).epochs[0]
    return row["train_seconds"], row


def run_trainer(work: Workload, out_dir: Path) -> float:
    """(d): HF Trainer, timed from on_train_begin to on_train_end (the training loop alone)."""
    import datasets
    import torch
    from torch import nn
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from accumbench.backends.device import local_device

    class WithLoss(nn.Module):
        """The same classifier, returning the loss as Trainer expects of a model."""

        def __init__(self, classifier: nn.Module) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, labels):
            logits = self.classifier(input_ids, attention_mask)
            return {"loss": nn.functional.cross_entropy(logits.float(), labels), "logits": logits}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            _sync(local_device())
            self.seconds = time.perf_counter() - self.start

    train_set = datasets.Dataset.from_dict({"input_ids": work.train.input_ids, "labels": work.train.labels})
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=work.micro,
        gradient_accumulation_steps=work.ebs // work.micro, num_train_epochs=1, learning_rate=5e-5,
        lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=1e9,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), bf16=work.precision == "bf16", seed=0,
    )
    clock = Clock()
    trainer = Trainer(model=WithLoss(work.classifier()), args=args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(work.tokenizer), callbacks=[clock])
    trainer.train()
    return clock.seconds


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, warmup: bool, log: Callable[[str], None]
                ) -> dict[str, list[float]]:
    """Seconds per variant, measured round-robin so that drift in machine speed hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeats + int(warmup)):
        for name, measure in variants.items():
            value = measure()
            label = "warm-up" if warmup and round_ == 0 else f"repeat {round_ + 1 - int(warmup)}"
            log(f"  {name:>16} {label}: {value:.2f} s")
            if not (warmup and round_ == 0):
                seconds[name].append(value)
    return seconds


def summarise(work: Workload, seconds: dict[str, list[float]]) -> dict[str, Any]:
    rows = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        rows[name] = {"seconds": values, "median_seconds": median, "samples_per_second": work.samples / median,
                      "tokens_per_second": work.real_tokens / median}
    return {"samples": work.samples, "real_tokens": work.real_tokens, "effective_batch_size": work.ebs,
            "micro_batch_size": work.micro, "max_length": work.max_length, "precision": work.precision,
            "dataset": work.dataset, "variants": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="any --model of accumbench (default minilm)")
    parser.add_argument("--variable-data", default=str(SST2) if SST2.is_dir() else "demo",
                        help="the variable-length dataset (default: ../shared/data/sst2 if present, else demo)")
    parser.add_argument("--fixed-samples", type=int, default=128, help="samples per fixed-length measure")
    parser.add_argument("--variable-samples", type=int, default=1024, help="samples per variable-length measure")
    parser.add_argument("--fixed-ebs", type=int, default=32)
    parser.add_argument("--fixed-micro", type=int, default=16)
    parser.add_argument("--variable-ebs", type=int, default=256)
    parser.add_argument("--variable-micro", type=int, default=16)
    parser.add_argument("--ga-micro", type=int, default=8, help="the ga experiment: 16 x this vs 1 x this")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-warmup", action="store_true", help="keep the first round (smoke runs only)")
    parser.add_argument("--only", default="fixed,variable,ga", help="comma list of experiments to run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    log = lambda line: print(line, flush=True)  # noqa: E731

    import torch

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "model": args.model, "repeats": args.repeats, "warmup": not args.no_warmup, "experiments": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        db = tmp_path / "bench.db"
        if "fixed" in only:
            long_csv = tmp_path / "long.csv"
            long_texts_csv(long_csv, args.fixed_samples * 2)  # 8:1:1, then the train split cut to --fixed-samples
            work = Workload("fixed", args.model, str(long_csv), args.fixed_samples, args.fixed_ebs, args.fixed_micro,
                            args.max_length, args.precision, db)
            log(f"fixed length {args.max_length}: EBS {work.ebs} = {work.ebs // work.micro} x {work.micro}, "
                f"{work.samples} samples per measure")
            seconds = interleaved({
                "bare": lambda: run_bare(work),
                "torch": lambda: run_accumbench(work, "torch")[0],
                "accel": lambda: run_accumbench(work, "accelerate")[0],
                "trainer": lambda: run_trainer(work, tmp_path / "trainer"),
            }, args.repeats, not args.no_warmup, log)
            results["experiments"]["fixed"] = summarise(work, seconds)
        if "variable" in only:
            work = Workload("variable", args.model, args.variable_data, args.variable_samples, args.variable_ebs,
                            args.variable_micro, args.max_length, args.precision, db)
            log(f"variable length ({args.variable_data}): EBS {work.ebs} = {work.ebs // work.micro} x {work.micro}, "
                f"{work.samples} samples per measure, mean length {work.real_tokens / work.samples:.1f} tokens")
            padding: dict[str, float] = {}

            def accumbench_variant(name: str, **overrides: Any) -> Callable[[], float]:
                def measure() -> float:
                    seconds, row = run_accumbench(work, "torch" if name != "accel" else "accelerate", **overrides)
                    padding[name] = row["padding_fraction"]
                    return seconds
                return measure

            seconds = interleaved({
                "bare": lambda: run_bare(work),
                "torch": accumbench_variant("torch"),
                "accel": accumbench_variant("accel"),
                "trainer": lambda: run_trainer(work, tmp_path / "trainer"),
                "torch-ungrouped": accumbench_variant("torch-ungrouped", group_by_length=False),
            }, args.repeats, not args.no_warmup, log)
            padding["bare"] = work.bare_padding
            results["experiments"]["variable"] = summarise(work, seconds)
            results["experiments"]["variable"]["padding_fraction"] = padding
        if "ga" in only:
            work = Workload("ga", args.model, str(tmp_path / "long.csv") if "fixed" in only else "demo",
                            args.fixed_samples, 16 * args.ga_micro, args.ga_micro, args.max_length, args.precision, db)
            log(f"accumulation overhead: EBS {16 * args.ga_micro} = 16 x {args.ga_micro} against "
                f"EBS {args.ga_micro} = 1 x {args.ga_micro}, {work.samples} samples per measure")
            seconds = interleaved({
                "16 micro-batches": lambda: run_accumbench(work, "torch")[0],
                "1 micro-batch": lambda: run_accumbench(work, "torch", effective_batch_size=args.ga_micro)[0],
            }, args.repeats, not args.no_warmup, log)
            results["experiments"]["ga"] = summarise(work, seconds)

    results["ratios"] = ratios(results["experiments"])
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log(f"wrote {args.out}")
    return results


def ratios(experiments: dict[str, Any]) -> dict[str, float]:
    """Throughput ratios of medians (samples/s), named "experiment: A / B"."""
    out = {}
    for name, pairs in (("fixed", [("torch", "bare"), ("accel", "bare"), ("trainer", "bare"), ("torch", "trainer"),
                                   ("accel", "trainer")]),
                        ("variable", [("torch", "bare"), ("accel", "bare"), ("torch", "trainer"), ("accel", "trainer"),
                                      ("torch-ungrouped", "trainer"), ("torch", "torch-ungrouped")]),
                        ("ga", [("16 micro-batches", "1 micro-batch")])):
        if name in experiments:
            rows = experiments[name]["variants"]
            for a, b in pairs:
                out[f"{name}: {a} / {b}"] = rows[a]["samples_per_second"] / rows[b]["samples_per_second"]
    return out


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['model']} on {results['machine']}; median of {results['repeats']} after a warm-up")
    print(f"{'experiment':<10} {'variant':<17} {'samples/s':>10} {'tokens/s':>10} {'padding':>8}")
    for name, experiment in results["experiments"].items():
        padding = experiment.get("padding_fraction", {})
        for variant, row in experiment["variants"].items():
            pad = f"{padding[variant]:.0%}" if variant in padding else ""
            print(f"{name:<10} {variant:<17} {row['samples_per_second']:>10.2f} {row['tokens_per_second']:>10.0f} {pad:>8}")
    print(f"\n{'ratio':<42} {'value':>6} {'target':>7}")
    for name, value in results["ratios"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f">= {target:<4} {'met' if value >= target else 'MISSED'}"
        print(f"{name:<42} {value:>6.3f} {verdict}")


if __name__ == "__main__":
    main()
