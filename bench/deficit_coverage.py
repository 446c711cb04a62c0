"""Is the deficit bound calibrated? Candidates simulated from a known model, the bound checked against the truth.

Each simulated validation example has a difficulty shared by every run (the pairing), each run a skill of its
own (the training seed's noise), and each (run, example) a noise of its own:

    run j of candidate c gets example i right when  mu_c + skill_cj - difficulty_i + noise_cji > 0
    skill ~ N(0, seed_sd^2), difficulty ~ N(0, 1), noise ~ N(0, 1)
    so its true accuracy is Phi(mu_c / sqrt(seed_sd^2 + 2)), and the true deficit is the difference of two.

The one-sided 95% upper bound of accumbench.deficit should lie above the true deficit in 95% of simulations
(93-97% with a few hundred of them). Beside it, the plain two-level percentile bootstrap (seeds resampled
within each candidate, examples with shared indices) is scored the same way: it is what deficit.py does not do.
It also times a 72-cell comparison (pick-best's worst case in the issue: 872 examples, 2,000 resamples).

    python bench/deficit_coverage.py              # ~15 min on 2 CPU cores: every regime, 300 simulations each
    python bench/deficit_coverage.py --sims 100   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from accumbench import deficit  # noqa: E402

# (seeds per candidate, validation examples, seed sd on the latent scale, paired by seed): few seeds and many,
# small splits and large, training noise that dominates and noise that hardly shows. Paired is pick-best's
# usual case (a sweep trains every cell at the same seeds); unpaired, where the seeds differ.
REGIMES = [(2, 872, 0.05, True), (2, 872, 0.25, True), (3, 872, 0.15, True), (3, 300, 0.05, True),
           (5, 2000, 0.15, True), (2, 872, 0.25, False), (3, 872, 0.15, False), (1, 872, 0.0, False)]
MU_BEST, MU_OTHER = 1.3, 1.2  # true accuracies ~0.80 and ~0.78 at seed sd 0.15


def true_accuracy(mu: float, seed_sd: float) -> float:
    return 0.5 * math.erfc(-mu / math.sqrt(seed_sd**2 + 2.0) / math.sqrt(2.0))


def simulate_runs(rng: np.random.Generator, mu: float, seeds: int, difficulty: np.ndarray, labels: np.ndarray,
                  seed_sd: float) -> list[deficit.RunPredictions]:
    runs = []
    for _ in range(seeds):
        right = mu + rng.normal(0.0, seed_sd) - difficulty + rng.normal(size=len(difficulty)) > 0
        runs.append(deficit.RunPredictions(labels, np.where(right, labels, 1 - labels)))
    return runs


def two_level_percentile(best: list, other: list, confidence: float, rng: np.random.Generator,
                         resamples: int = deficit.RESAMPLES) -> float:
    """The plain two-level bootstrap: resample seeds within each candidate and examples (shared), percentile."""
    weights = deficit.example_weights(len(best[0].labels), resamples, int(rng.integers(1 << 30)))
    _, scores = deficit.run_scores([*best, *other], "accuracy", 2, 1, weights)
    k, m = len(best), len(other)
    pick_a = rng.integers(0, k, size=(resamples, k))
    pick_b = k + rng.integers(0, m, size=(resamples, m))
    rows = np.arange(resamples)[:, None]
    deficits = scores[rows, pick_a].mean(axis=1) - scores[rows, pick_b].mean(axis=1)
    return float(np.quantile(deficits, confidence))


def coverage(seeds: int, examples: int, seed_sd: float, sims: int, confidence: float = 0.95, seed: int = 1,
             resamples: int = deficit.RESAMPLES, plain: bool = True, paired: bool = False) -> dict[str, float]:
    """The share of simulations whose upper bound covers the true deficit, for deficit.py and the plain bootstrap."""
    rng = np.random.default_rng(seed)
    truth = true_accuracy(MU_BEST, seed_sd) - true_accuracy(MU_OTHER, seed_sd)
    covered = covered_plain = 0
    for sim in range(sims):
        difficulty = rng.normal(size=examples)
        labels = rng.integers(0, 2, size=examples)
        best = simulate_runs(rng, MU_BEST, seeds, difficulty, labels, seed_sd)
        other = simulate_runs(rng, MU_OTHER, seeds, difficulty, labels, seed_sd)
        bound = deficit.from_predictions(best, other, confidence=confidence, resamples=resamples, seed=sim,
                                         paired=paired)
        covered += bound.upper >= truth
        if plain:
            covered_plain += two_level_percentile(best, other, confidence, rng, resamples) >= truth
    return {"seeds": seeds, "examples": examples, "seed_sd": seed_sd, "paired": paired, "true_deficit": truth,
            "simulations": sims,
            "coverage": covered / sims, "coverage_plain_bootstrap": covered_plain / sims if plain else math.nan}


def time_grid(cells: int = 72, seeds: int = 3, examples: int = 872, resamples: int = deficit.RESAMPLES) -> float:
    """Seconds to bound every other cell of a `cells`-cell grid against its best, as pick-best does."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=examples)
    difficulty = rng.normal(size=examples)
    grid = [[deficit.RunPredictions(r.labels, r.predicted, key=(c, j)) for j, r in enumerate(
        simulate_runs(rng, 1.2 + 0.01 * c, seeds, difficulty, labels, 0.1))] for c in range(cells)]
    start = time.perf_counter()
    scorer = deficit.Scorer("accuracy", 2, 1, resamples=resamples)
    for other in grid[1:]:
        scorer.bound(grid[0], other)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deficit_coverage.json")
    args = parser.parse_args()
    rows = [coverage(seeds, examples, seed_sd, sims=args.sims, paired=paired)
            for seeds, examples, seed_sd, paired in REGIMES]
    seconds = time_grid()
    print("| seeds | paired | examples | seed sd | true deficit | coverage (deficit.py) | coverage (plain two-level) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seeds']} | {'yes' if r['paired'] else 'no'} | {r['examples']} | {r['seed_sd']} | "
              f"{r['true_deficit']:.4f} | {r['coverage']:.1%} | {r['coverage_plain_bootstrap']:.1%} |")
    print(f"\n72 cells x 3 seeds, 872 examples, {deficit.RESAMPLES} resamples: {seconds:.2f} s for the 71 bounds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"regimes": rows, "grid_seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
