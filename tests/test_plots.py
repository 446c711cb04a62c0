"""accumbench.present.plots on small synthetic runs: the files written, what the figures show (titles, axis
labels, legend order, the seed mean and its band), NaN and inf from diverged runs, file naming, and
the UserError without matplotlib."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from accumbench.errors import UserError
from accumbench.formatting import slugify, unique_slugs
from accumbench.present.plots import MISSING, build_figures, figure_pngs, write_pngs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ["/tmp/x/tiny-bert", "answerdotai/ModernBERT-base"]
# Given out of legend order on purpose: `order` decides the legend, not the row order or the name.
LABELS = [("EBS 256 sqrt", 2), ("EBS 64", 0), ("EBS 256", 1)]
SEEDS = [1, 2]
EPOCHS = 3
STEPS = 30


def accuracy(model_index: int, order: int, seed: int, epoch: int) -> float:
    """A known value per point, so the expected seed mean can be computed independently."""
    return 0.5 + 0.1 * epoch + 0.01 * order + 0.02 * seed + 0.001 * model_index


def make_runs(models=MODELS, with_steps=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """2 seeds x 3 labels x 3 epochs per model, and 30 steps per run for the models in with_steps (default: all)."""
    with_steps = models if with_steps is None else with_steps
    epochs, steps = [], []
    rng = np.random.default_rng(0)
    run_id = 0
    for m, model in enumerate(models):
        for label, order in LABELS:
            for seed in SEEDS:
                run_id += 1
                for epoch in range(1, EPOCHS + 1):
                    epochs.append(dict(run_id=run_id, model=model, label=label, order=order, seed=seed, epoch=epoch,
                                       val_accuracy=accuracy(m, order, seed, epoch), val_loss=1.0 / epoch + 0.1 * seed))
                if model in with_steps:
                    for step in range(1, STEPS + 1):
                        steps.append(dict(run_id=run_id, model=model, label=label, order=order, seed=seed,
                                          samples_seen=step * 64, loss=2.0 / step + 0.1 * rng.random()))
    epochs, steps = pd.DataFrame(epochs), pd.DataFrame(steps)
    # A diverged run: NaN validation loss in its last epoch, NaN and inf training losses at its end.
    diverged = (epochs["model"] == models[0]) & (epochs["label"] == "EBS 256") & (epochs["seed"] == 2)
    epochs.loc[diverged & (epochs["epoch"] == EPOCHS), "val_loss"] = math.nan
    if not steps.empty:
        run = steps["run_id"] == epochs.loc[diverged, "run_id"].iloc[0]
        steps.loc[run & (steps["samples_seen"] > 25 * 64), "loss"] = math.nan
        steps.loc[run & (steps["samples_seen"] == STEPS * 64), "loss"] = math.inf
    return epochs, steps


def png_size(path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG file must start with after its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_writes_one_validation_and_one_train_loss_png_per_model(tmp_path):
    epochs, steps = make_runs()
    out = tmp_path / "figures" / "nested"  # created on demand

    paths = write_pngs(figure_pngs(epochs, steps, out), out)

    names = ["tiny-bert-validation.png", "tiny-bert-train-loss.png",
             "answerdotai_ModernBERT-base-validation.png", "answerdotai_ModernBERT-base-train-loss.png"]
    # Models sorted by name ("/tmp/..." < "answerdotai/..."), validation before training loss.
    assert paths == [out / name for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for path in paths:
        width, height = png_size(path)
        assert 600 <= width <= 2000 and 300 <= height <= 1200, (path.name, width, height)
    width, height = png_size(out / "tiny-bert-validation.png")
    assert width > height  # two side-by-side axes
    from matplotlib.image import imread

    assert imread(out / "tiny-bert-validation.png").shape[:2] == (height, width)  # a PNG that decodes


def test_model_without_steps_gets_only_the_validation_figure(tmp_path):
    epochs, steps = make_runs(with_steps=[MODELS[1]])

    paths = write_pngs(figure_pngs(epochs, steps, tmp_path), tmp_path)
    assert [p.name for p in paths] == ["tiny-bert-validation.png", "answerdotai_ModernBERT-base-validation.png",
                                       "answerdotai_ModernBERT-base-train-loss.png"]

    # No steps at all, as an empty frame without columns: validation figures only.
    paths = write_pngs(figure_pngs(epochs, pd.DataFrame(), tmp_path / "none"), tmp_path / "none")
    assert [p.name for p in paths] == ["tiny-bert-validation.png", "answerdotai_ModernBERT-base-validation.png"]


def test_validation_figure_shows_the_seed_mean_band_and_labels_in_order(tmp_path):
    epochs, steps = make_runs()
    figures = build_figures(epochs, steps, tmp_path)
    fig = figures[tmp_path / "tiny-bert-validation.png"]

    assert fig._suptitle.get_text() == "tiny-bert: validation per epoch (mean over 2 seeds, band: min-max)"
    acc, loss = fig.axes
    assert (acc.get_xlabel(), acc.get_ylabel()) == ("epoch", "validation accuracy")
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "validation loss")
    assert legend_texts(acc) == ["EBS 64", "EBS 256", "EBS 256 sqrt"]
    assert len(acc.lines) == len(loss.lines) == len(LABELS)
    assert len(acc.collections) == len(LABELS)  # one min-max band per label (two seeds each)
    assert all(tick == int(tick) for tick in acc.get_xticks())

    # The "EBS 256" line (order 1) is the mean over seeds 1 and 2 at each epoch, with a marker there.
    line = acc.lines[1]
    assert line.get_label() == "EBS 256" and line.get_marker() == "o"
    assert list(line.get_xdata()) == [1, 2, 3]
    expected = [np.mean([accuracy(0, 1, seed, epoch) for seed in SEEDS]) for epoch in (1, 2, 3)]
    np.testing.assert_allclose(line.get_ydata(), expected)
    # The band spans min to max over the seeds.
    band = acc.collections[1].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([band.min(), band.max()], [accuracy(0, 1, 1, 1), accuracy(0, 1, 2, 3)])

    # Seed 2 of "EBS 256" has a NaN loss in epoch 3: that point is the other seed alone, not NaN.
    loss_256 = loss.lines[1]
    np.testing.assert_allclose(loss_256.get_ydata(), [np.mean([1.1, 1.2]), np.mean([0.6, 0.7]), 1 / 3 + 0.1])
    # Same label, same colour, in both axes.
    assert [ln.get_color() for ln in acc.lines] == [ln.get_color() for ln in loss.lines]


def test_train_loss_figure_averages_smoothed_runs_and_drops_non_finite_losses(tmp_path):
    epochs, steps = make_runs()
    figures = build_figures(epochs, steps, tmp_path)
    fig = figures[tmp_path / "tiny-bert-train-loss.png"]

    (ax,) = fig.axes
    assert ax.get_title().startswith("tiny-bert: training loss")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("samples seen", "training loss (per optimizer step)")
    assert legend_texts(ax) == ["EBS 64", "EBS 256", "EBS 256 sqrt"]
    assert len(ax.lines) == len(LABELS)
    for line in ax.lines:
        assert np.isfinite(line.get_ydata()).all()

    # "EBS 64": both runs on the same grid, so the curve is the mean of their rolling means (window 30 // 20 = 1).
    run_means = (steps[(steps["model"] == MODELS[0]) & (steps["label"] == "EBS 64")]
                 .groupby("samples_seen")["loss"].mean())
    np.testing.assert_allclose(ax.lines[0].get_xdata(), run_means.index)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), run_means.to_numpy())
    # "EBS 256": past step 25 only the run that did not diverge remains.
    line = ax.lines[1]
    assert line.get_xdata()[-1] == STEPS * 64
    healthy = steps[(steps["model"] == MODELS[0]) & (steps["label"] == "EBS 256") & (steps["seed"] == 1)]
    assert line.get_ydata()[-1] == pytest.approx(healthy["loss"].iloc[-1])


def test_smoothing_uses_a_centred_rolling_window_of_a_twentieth_of_the_steps(tmp_path):
    n = 100  # window 5
    loss = np.where(np.arange(n) % 2 == 0, 1.0, 3.0)
    steps = pd.DataFrame(dict(run_id=1, model="m", label="EBS 8", order=0, seed=1,
                              samples_seen=np.arange(1, n + 1) * 8, loss=loss))
    epochs = pd.DataFrame(columns=["run_id", "model", "label", "order", "seed", "epoch", "val_accuracy", "val_loss"])

    figures = build_figures(epochs, steps, tmp_path)
    assert list(figures) == [tmp_path / "m-train-loss.png"]  # no epochs: no validation figure
    y = figures[tmp_path / "m-train-loss.png"].axes[0].lines[0].get_ydata()
    expected = pd.Series(loss).rolling(5, center=True, min_periods=1).mean()
    np.testing.assert_allclose(y, expected)


def test_all_nan_epochs_and_single_seed_do_not_crash(tmp_path):
    epochs, steps = make_runs(models=["solo"])
    epochs = epochs[epochs["seed"] == 1]
    epochs.loc[epochs["label"] == "EBS 64", ["val_accuracy", "val_loss"]] = math.nan  # a run that diverged at once
    steps = steps[steps["seed"] == 1].assign(loss=lambda f: f["loss"].where(f["label"] != "EBS 64", math.inf))

    figures = build_figures(epochs, steps, tmp_path)
    fig = figures[tmp_path / "solo-validation.png"]
    assert fig._suptitle.get_text() == "solo: validation per epoch (mean over 1 seed)"
    assert legend_texts(fig.axes[0]) == ["EBS 256", "EBS 256 sqrt"]
    assert not fig.axes[0].collections  # one seed: no band
    assert legend_texts(figures[tmp_path / "solo-train-loss.png"].axes[0]) == ["EBS 256", "EBS 256 sqrt"]
    assert all(p.stat().st_size > 0 for p in write_pngs(figure_pngs(epochs, steps, tmp_path), tmp_path))


@pytest.mark.parametrize("model, slug", [
    ("/tmp/x/tiny-bert", "tiny-bert"),
    ("/tmp/x/tiny-bert/", "tiny-bert"),
    ("./checkpoints/best", "best"),
    ("answerdotai/ModernBERT-base", "answerdotai_ModernBERT-base"),
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers_all-MiniLM-L6-v2"),
    ("minilm", "minilm"),
    ("my model:v2", "my_model_v2"),
    ("/", "model"),
])
def test_slug_rule(model, slug):
    assert slugify(model) == slug


def test_slugs_are_unique_within_a_call(tmp_path):
    assert unique_slugs(["/a/bert", "/b/bert", "/c/BERT", "bert-2"]) == {
        "/a/bert": "bert", "/b/bert": "bert-2", "/c/BERT": "BERT-3", "bert-2": "bert-2-2"}

    epochs, steps = make_runs(models=["/a/tiny", "/b/tiny"])
    paths = write_pngs(figure_pngs(epochs, steps, tmp_path), tmp_path)
    assert [p.name for p in paths] == ["tiny-validation.png", "tiny-train-loss.png",
                                       "tiny-2-validation.png", "tiny-2-train-loss.png"]


def test_missing_matplotlib_is_a_user_error(tmp_path, monkeypatch):
    epochs, steps = make_runs()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError

    with pytest.raises(UserError) as info:
        write_pngs(figure_pngs(epochs, steps, tmp_path / "out"), tmp_path / "out")
    assert str(info.value) == MISSING
    assert not (tmp_path / "out").exists()


def test_the_fix_that_a_missing_matplotlib_names_installs_it():
    """The error's pip command names an extra of the installed package, and that extra brings matplotlib."""
    import re
    from importlib.metadata import requires

    (extra,) = re.findall(r"pip install 'accumbench\[(\w+)\]'", MISSING)
    brought = [need for need in requires("accumbench") if need.endswith(f'extra == "{extra}"')]
    assert [re.match(r"[\w-]+", need).group() for need in brought] == ["matplotlib"]
    assert MISSING.startswith("--plot needs matplotlib")


def test_importing_the_module_stays_light():
    code = ("import sys, accumbench.present.plots; heavy = {'matplotlib', 'pandas', 'numpy'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_accuracy_against_time_and_the_noise_scale_beside_the_ebs_tried(tmp_path):
    """Each epoch takes 10 s at EBS 64 and 4 s at EBS 256 (seed 2 twice as long): the time figure's x is
    the mean cumulative time over seeds. B_simple is 100·epoch at EBS 64 and unmeasured (NaN) at 256;
    the noise figure draws it on a log axis with a grey line at each EBS tried and B_crit in red."""
    epochs, steps = make_runs(models=["m"])
    epochs = epochs[epochs["label"] != "EBS 256 sqrt"].copy()
    epochs["effective_batch_size"] = epochs["label"].map({"EBS 64": 64, "EBS 256": 256})
    epochs["train_seconds"] = epochs["effective_batch_size"].map({64: 10.0, 256: 4.0}) * epochs["seed"]
    epochs["noise_scale"] = np.where(epochs["effective_batch_size"] == 64, 100.0 * epochs["epoch"], np.nan)
    figures = build_figures(epochs, steps, tmp_path, b_crit={"m": 150.0})
    assert list(figures) == [tmp_path / f"m-{kind}.png" for kind in ("validation", "train-loss", "time", "noise-scale")]
    [ax] = figures[tmp_path / "m-time.png"].axes
    line = next(ln for ln in ax.lines if ln.get_label() == "EBS 64")
    assert list(line.get_xdata()) == pytest.approx([15, 30, 45])  # seeds 1, 2 at 10 and 20 s per epoch
    assert list(line.get_ydata()) == pytest.approx([np.mean([accuracy(0, 0, s, e) for s in SEEDS]) for e in (1, 2, 3)])
    [ax] = figures[tmp_path / "m-noise-scale.png"].axes
    assert ax.get_yscale() == "log"
    series = [ln for ln in ax.lines if ln.get_label() == "EBS 64"]
    assert len(series) == 1 and list(series[0].get_ydata()) == pytest.approx([100, 200, 300])
    levels = sorted(ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() in (":", "--"))
    assert levels == [64, 150, 256] and "B_crit ≈ 150" in legend_texts(ax)


def test_curves_show_each_ebs_at_its_best_lr_in_one_colour_per_ebs_and_fade_the_rest():
    """Three series (their labels are only names here): 'EBS 256' at EBS 256; 'EBS 256 sqrt' and 'EBS 64' at EBS
    64, the first its best lr. By default the best lrs are drawn in their EBS's colour, the same in every figure,
    with one legend entry each, and the other lr thin and grey; --curves all gives every series its own colour
    and legend entry."""
    epochs, steps = make_runs(models=["m"])
    series = {"EBS 64": (64, True), "EBS 256": (256, False), "EBS 256 sqrt": (64, False)}  # label -> (EBS, faded)
    for frame in (epochs, steps):
        frame["effective_batch_size"] = frame["label"].map(lambda label: series[label][0])
        frame["faded"] = frame["label"].map(lambda label: series[label][1])
    figures = build_figures(epochs, steps, Path("."))
    validation, loss = (figures[Path(f"m-{kind}.png")].axes[0] for kind in ("validation", "train-loss"))
    assert legend_texts(validation) == legend_texts(loss) == ["EBS 256", "EBS 256 sqrt"]  # the faded one has none
    def colour(ax, label):
        return next(line.get_color() for line in ax.get_lines() if line.get_label() == label)
    assert colour(validation, "EBS 256") == colour(loss, "EBS 256") != colour(validation, "EBS 256 sqrt")
    assert colour(validation, "EBS 256 sqrt") == colour(loss, "EBS 256 sqrt")
    grey = [line for line in validation.get_lines() if line.get_color() == "#bbb"]
    assert len(grey) == 1 and grey[0].get_linewidth() < 1 and grey[0].get_label().startswith("_")
    everything = build_figures(epochs, steps, Path("."), curves="all")[Path("m-validation.png")].axes[0]
    assert legend_texts(everything) == ["EBS 64", "EBS 256", "EBS 256 sqrt"]
    assert len({line.get_color() for line in everything.get_lines()}) == 3
