"""Named sweeps: the seed study as it was run, the same study with every EBS at its own best lr, and an
offline demo that runs anywhere in a few minutes."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The original study (see README): IMDB pooled and split 8:1:1 once with seed 42; the grid's
    # seeds vary only the training order and the head. Needs the Hugging Face Hub and a CUDA GPU.
    "seed-study": dict(
        dataset="imdb", data_seed=42, max_length=128, models=["bert", "modernbert"], dropout=0.1,
        effective_batch_sizes=[64, 256, 1024], micro_batch_size=64, epochs=5, optimizer="adam", lr=5e-5,
        scheduler="constant", backends=["torch", "accelerate"], seeds=[42, 43, 44], lr_scaling=["none"],
        checkpoint=False,
    ),
    # Offline, on the packaged MiniLM and the synthetic reviews: about 4 minutes on 2 CPU cores. The
    # split is fixed like the study's, so that added seeds (--seeds 42,43,44) vary only the training.
    "demo": dict(
        models=["minilm"], dataset="demo", data_seed=42, effective_batch_sizes=[16, 32, 64], micro_batch_size=16,
        backends=["torch"], seeds=[42], lr_scaling=["none"], epochs=2, lr=1e-4, max_train_samples=480,
        max_eval_samples=120, checkpoint=False,
    ),
}
# The seed study re-run the way its own conclusion asked: every EBS at each of four learning rates, so
# that pick-best compares the EBS each at its own best lr (the tuned protocol). 72 cells, torch only.
PRESETS["tuned-study"] = {**{k: v for k, v in PRESETS["seed-study"].items() if k != "lr"},
                          "lrs": [1e-5, 3e-5, 1e-4, 3e-4], "backends": ["torch"]}
NEEDS_GPU_AND_HUB = ("seed-study", "tuned-study")

