"""Sentence pairs on real data: GLUE RTE (../shared/data/rte, test labels hidden as on the hub) with the
packaged MiniLM, on this machine's CPU.

    1. pair encoding ([CLS] premise [SEP] hypothesis [SEP], segment ids, longest_first truncation) against
       the glued-string workaround (premise + " " + hypothesis as one text), same seed, budget and grid
    2. accuracy, F1 and MCC at each EBS of the grid, on validation and test
    3. the pick under --metric val_accuracy, val_f1 and val_mcc: does the metric change the answer?
    4. what the loader did with the unlabelled test split (the runs' split_source)
    5. how often truncation at max length 128 cuts into the hypothesis: never for the pair (longest_first
       shortens the premise), but for the glued string it is the end that goes

    python bench/pairs.py                   # ~15 min on 2 CPU cores; a rerun analyses again, trains nothing
    python bench/pairs.py --tiny MODEL_DIR  # seconds, on a tiny model and demo-pairs: the smoke test

Writes bench/results/pairs.json, and the sweeps' runs to bench/results/pairs.db. The glued copy of the
data goes to a temporary directory: the shared data is never copied into the project.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
RTE = ROOT.parent / "shared" / "data" / "rte"
RESULTS = ROOT / "bench" / "results"
METRICS = ("val_accuracy", "val_f1", "val_mcc")

from commands import accumbench, machine, sweep_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model directory on demo-pairs: a smoke run")
    parser.add_argument("--samples", type=int, default=640, help="training pairs (the first N of the shuffled split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ebs", default="16,64")
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--seed", default="42")
    parser.add_argument("--out", type=Path, default=RESULTS / "pairs.json")
    parser.add_argument("--fresh", action="store_true", help="delete the sweeps' database first and train it all again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            model, samples, eval_samples, epochs, ebs, max_length = args.tiny, 96, 48, 1, "16,32", 64
            source = _demo_pairs_dir(Path(tmp) / "demo-pairs")
            work = Path(tmp)
        else:
            if not RTE.is_dir():
                raise SystemExit(f"no RTE at {RTE}; this benchmark needs the shared data (or --tiny)")
            model, samples, eval_samples, epochs, ebs, max_length = "minilm", args.samples, None, args.epochs, args.ebs, 128
            source, work = RTE, RESULTS
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ACCUMBENCH_CACHE", str(Path(tmp) / "cache"))
        glued = _glue(source, Path(tmp) / "glued")
        db = work / "pairs.db"
        if args.fresh or args.tiny:
            db.unlink(missing_ok=True)
        shared = ["--models", model, "--seeds", args.seed, "--micro-batch-size", "16", "--epochs", str(epochs),
                  "--max-train-samples", str(samples), "--max-length", str(max_length), "--data-seed", "42",
                  "--effective-batch-sizes", ebs, "--lrs", args.lr, "--no-checkpoint", "--db", str(db)]
        if eval_samples:
            shared += ["--max-eval-samples", str(eval_samples)]
        encodings = {"pair": ["--dataset", str(source)],
                     "glued": ["--dataset", str(glued), "--text-column", "text"]}
        results: dict[str, Any] = {"machine": machine(), "model": model, "dataset": "rte" if not args.tiny else "demo-pairs",
                                   "train_samples": samples, "epochs": epochs, "effective_batch_sizes": ebs,
                                   "lr": args.lr, "seed": args.seed, "max_length": max_length, "encodings": {}}
        for name, dataset in encodings.items():
            accumbench("sweep", *shared, *dataset, "--name", f"rte-{name}", cwd=work)
            results["encodings"][name] = analyse(db, work, f"rte-{name}")
        results["truncation"] = truncation(source, model, max_length)
        results["sweep_seconds"] = sweep_seconds(db)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _demo_pairs_dir(path: Path) -> Path:
    """demo-pairs as a GLUE-like directory (test labels hidden), so the tiny run takes the same path as RTE."""
    from accumbench.data.demo import generate_demo_pairs

    columns = generate_demo_pairs(n=400)
    rows = list(zip(columns["premise"], columns["hypothesis"], columns["label"]))
    path.mkdir(parents=True)
    for name, part, hidden in (("train", rows[:300], False), ("validation", rows[300:350], False), ("test", rows[350:], True)):
        _write(path / f"{name}.tsv", ["sentence1", "sentence2", "label"],
               [(a, b, -1 if hidden else y) for a, b, y in part])
    return path


def _glue(source: Path, out: Path) -> Path:
    """The workaround without pair support: each premise and hypothesis glued into one 'text', same rows."""
    out.mkdir(parents=True)
    for path in sorted(source.glob("*.tsv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        _write(out / path.name, ["text", "label"], [(f"{r['sentence1']} {r['sentence2']}", r["label"]) for r in rows])
    return out


def _write(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)


def analyse(db: Path, work: Path, sweep: str) -> dict[str, Any]:
    """Per EBS: accuracy, F1 and MCC on validation and test (at each run's best epoch on that metric),
    the pick under each metric, and what the loader did with the splits."""
    import sqlite3

    cells = {}
    for metric in METRICS:
        report = json.loads(accumbench("report", "--format", "json", "--metric", metric, "--sweep", sweep,
                                       "--db", str(db), cwd=work))
        for cell in report["cells"]:
            row = cells.setdefault(int(cell["effective_batch_size"]), {"train_seconds": cell["train_seconds_mean"]})
            name = metric.removeprefix("val_")
            row[f"val_{name}"], row[f"test_{name}"] = cell[f"{metric}_mean"], cell[f"test_{name}_mean"]
    picks = {}
    for metric in METRICS:
        [pick] = json.loads(accumbench("pick-best", "--json", "--metric", metric, "--sweep", sweep, "--db", str(db),
                                       cwd=work))["picks"]
        picks[metric] = {"pick": pick["pick"], "effective_batch_size": pick["effective_batch_size"],
                         "answer": pick["answer"], "test_accuracy": pick["test_accuracy"],
                         "test_metric": pick["test_metric"]}
    with sqlite3.connect(db) as con:
        split_sources = sorted({row[0] for row in con.execute(
            "SELECT split_source FROM runs JOIN sweeps ON sweeps.id = runs.sweep_id WHERE sweeps.name = ?", (sweep,))})
        sizes = con.execute("SELECT num_train_samples, num_val_samples, num_test_samples, text_columns FROM runs "
                            "JOIN sweeps ON sweeps.id = runs.sweep_id WHERE sweeps.name = ? LIMIT 1", (sweep,)).fetchone()
    return {"per_ebs": {str(k): v for k, v in sorted(cells.items())}, "picks": picks, "split_source": split_sources,
            "sizes": {"train": sizes[0], "validation": sizes[1], "test": sizes[2]}, "text_columns": sizes[3],
            "pick_changes_with_metric": len({p["effective_batch_size"] for p in picks.values()}) > 1}


def truncation(source: Path, model: str, max_length: int) -> dict[str, Any]:
    """On the training file: how many examples exceed max_length as a pair, and in how many the glued
    string's truncation cuts into the hypothesis (the pair's longest_first never does unless the
    hypothesis alone is the longer text)."""
    from transformers import AutoTokenizer

    from accumbench.model import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(model))
    with (source / "train.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    premises, hypotheses = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
    full = tokenizer(premises, hypotheses)["input_ids"]
    hyp_tokens = [len(ids) - 2 for ids in tokenizer(hypotheses)["input_ids"]]
    pair = tokenizer(premises, hypotheses, truncation="longest_first", max_length=max_length,
                     return_token_type_ids=True)["token_type_ids"]
    long = sum(len(ids) > max_length for ids in full)
    # The pair keeps the hypothesis whole when its segment (type 1, less the final [SEP]) keeps every token.
    pair_cut = sum(sum(types) - 1 < n for types, n in zip(pair, hyp_tokens))
    # The glued string is truncated from its end, where the hypothesis is: cut whenever it is too long.
    glued = tokenizer([f"{a} {b}" for a, b in zip(premises, hypotheses)])["input_ids"]
    return {"examples": len(rows), "longer_than_max_length": long, "hypothesis_cut_as_pair": pair_cut,
            "hypothesis_cut_glued": sum(len(ids) > max_length for ids in glued)}


def table(results: dict[str, Any]) -> str:
    """The note's tables: per encoding and EBS, validation and test accuracy, F1 and MCC; the picks."""
    lines = ["| encoding | EBS | val acc | val F1 | val MCC | test acc | test F1 | test MCC | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, section in results["encodings"].items():
        for ebs, row in section["per_ebs"].items():
            lines.append(f"| {name} | {ebs} | {row['val_accuracy']:.4f} | {row['val_f1']:.4f} | {row['val_mcc']:.4f} | "
                         f"{row['test_accuracy']:.4f} | {row['test_f1']:.4f} | {row['test_mcc']:.4f} | "
                         f"{row['train_seconds']:.0f} |")
    lines += ["", "| encoding | --metric | pick | answer |", "|---|---|---|---|"]
    for name, section in results["encodings"].items():
        for metric, pick in section["picks"].items():
            lines.append(f"| {name} | {metric} | {pick['pick']} | {pick['answer']} |")
    lines.append("")
    for name, section in results["encodings"].items():
        lines.append(f"{name}: columns {section['text_columns']}; {'; '.join(section['split_source'])}; "
                     f"train/val/test {section['sizes']['train']}/{section['sizes']['validation']}/"
                     f"{section['sizes']['test']}; the pick {'changes' if section['pick_changes_with_metric'] else 'does not change'} "
                     "with the metric")
    t = results["truncation"]
    lines.append(f"truncation at {results['max_length']} tokens, train file: {t['longer_than_max_length']} of "
                 f"{t['examples']} pairs are longer; the hypothesis is cut in {t['hypothesis_cut_as_pair']} as a pair "
                 f"(longest_first) and in {t['hypothesis_cut_glued']} glued")
    lines.append(f"{results['sweep_seconds'] / 60:.1f} min of training and evaluation on {results['machine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
