"""The study page's figures agree with the text and with each other, read from matplotlib's Figure objects (no
pixels): the headline's cost panel draws the count the pick was decided on (cost.py), labelled so, and each EBS
has one colour in the headline, the validation curves and the time figure of one store."""

from __future__ import annotations

import pandas as pd
import pytest
from test_pick_best import predictions

from accumbench.config import RunConfig
from accumbench.runtime.preparation import run_columns
from accumbench.store import FINISHED, Store, resolve_db_url

pytest.importorskip("matplotlib")

N = 200  # validation and test examples (test_pick_best.predictions')


def add_run(store: Store, ebs: int, seed: int, val: float, seconds: float, steps: int, samples: int,
            offset: int = 0) -> None:
    """One finished run of one epoch at `ebs`: `samples` trained in `steps` optimizer steps taking `seconds`,
    right on val*N validation examples from `offset` on."""
    config = RunConfig(model="m", effective_batch_size=ebs, micro_batch_size=8, seed=seed, data_seed=42, epochs=1)
    run_id = store.create_run(**run_columns(config), num_test_samples=N, num_val_samples=N)
    store.add_epoch(run_id, epoch=1, train_loss=0.3, train_accuracy=0.9, val_loss=1 - val, val_accuracy=val,
                    test_loss=0.1, test_accuracy=0.9, optimizer_steps=steps, samples_seen=samples,
                    epoch_seconds=seconds + 1, train_seconds=seconds, eval_seconds=1,
                    samples_per_second=samples / seconds, peak_memory_mb=100.0)
    store.update_run(run_id, best_epoch=1)
    for split, accuracy, start in (("validation", val, offset), ("test", 0.9, 0)):
        store.save_predictions(run_id, split, 1, f"{split}-42", *predictions(accuracy, start))
    store.finish_run(run_id, FINISHED)


# EBS 16 and 32 shown within a point of each other (the same predictions per seed, half a point apart), 64 ten
# points behind; 64 trained fastest by the clock. Equal epochs: the same 128 samples each, in 8, 4 and 2
# optimizer steps, so the steps decide (32). Equal steps (--budget steps): 4 each, on 64, 128 and 256 samples,
# at the same seconds per sample for 16 and 32, so the samples decide (16). The same, but 32 measured 3.3x
# faster per sample than 16 in every seed: far beyond their spread, the clock decides (32).
STUDIES = {  # EBS -> (optimizer steps, samples, seconds)
    "steps": {16: (8, 128, 100.0), 32: (4, 128, 60.0), 64: (2, 128, 30.0)},
    "samples": {16: (4, 64, 40.0), 32: (4, 128, 80.0), 64: (4, 256, 30.0)},
    "clock": {16: (4, 64, 100.0), 32: (4, 128, 60.0), 64: (4, 256, 30.0)},
}
NOTES = {"steps": ["1m40s", "1m00s", "30s"], "samples": ["40s", "1m20s", "30s"], "clock": ["1m40s", "1m00s", "30s"]}


def drawn(study: str, ebs: int) -> float:
    """What the cost panel should draw for `ebs`: the count (or the clock) the pick was decided on."""
    steps, samples, seconds = STUDIES[study][ebs]
    return {"steps": steps, "samples": samples, "clock": seconds / samples}[study]


def figures_of(tmp_path, study: str) -> tuple:
    """The headline, the page's figures (built as `report --format html` builds them) and the pick."""
    from accumbench.analysis.cells import plot_frames
    from accumbench.analysis.headline import headline
    from accumbench.analysis.pick import pick_best
    from accumbench.analysis.runs import load_predictions, load_runs
    from accumbench.present.plots import build_figures

    url = resolve_db_url(str(tmp_path / "runs.db"))
    with Store.open(url) as store:
        for seed, wobble in ((1, 0.0), (2, 0.005), (3, -0.005)):
            for ebs, (steps, samples, seconds) in STUDIES[study].items():
                behind = 0.10 if ebs == 64 else 0.0
                add_run(store, ebs, seed, 0.90 + wobble - behind, seconds, steps, samples, offset=100 if behind else 0)
    with Store.open_readonly(url) as store:
        data = load_runs(store)
        [answer] = pick_best(data, load_predictions(store, data))
        shown = headline(answer)
        figures = build_figures(*plot_frames(store, data), tmp_path, headlines=(shown,))
    return shown, {path.name.removeprefix("m-").removesuffix(".png"): fig for path, fig in figures.items()}, answer


@pytest.mark.parametrize("study, words, picked", [("steps", "optimizer steps", 32), ("samples", "samples trained", 16),
                                                  ("clock", "seconds per sample (measured)", 32)])
def test_the_cost_panel_draws_the_count_the_pick_was_decided_on(tmp_path, study, words, picked):
    from matplotlib.colors import to_rgba

    shown, figures, answer = figures_of(tmp_path, study)
    assert answer.chosen.effective_batch_size == picked and shown.cost_basis == study
    assert {p.effective_batch_size: p.as_good for p in shown.points} == {16: True, 32: True, 64: False}
    cost = figures["headline"].axes[1]
    bars = cost.patches
    assert [bar.get_height() for bar in bars] == pytest.approx([drawn(study, ebs) for ebs in (16, 32, 64)])
    assert cost.get_ylabel() == f"cost: {words}"
    # The lowest filled bar is the pick's (the clock's cheapest, EBS 64, is hollow: not shown within the margin).
    filled = [(bar.get_height(), ebs) for bar, ebs in zip(bars, (16, 32, 64)) if bar.get_facecolor() != to_rgba("white")]
    assert min(filled) == (pytest.approx(drawn(study, picked)), picked) and len(filled) == 2
    # The seconds are a note over each bar, not the bar.
    assert [t.get_text() for t in cost.texts] == NOTES[study]
    # The caption says what the panel draws.
    from accumbench.present.study_page import COST_IN_WORDS, headline_caption

    caption = headline_caption([shown])
    assert f"the lowest filled bar is the pick's: {COST_IN_WORDS[study]};" in caption and "green" not in caption


def test_each_ebs_has_one_colour_in_the_headline_and_the_curves(tmp_path):
    from matplotlib.colors import to_hex

    shown, figures, _ = figures_of(tmp_path, "steps")
    top, cost = figures["headline"].axes[:2]
    points = {int(line.get_xdata()[0]): to_hex(line.get_color()) for line in top.get_lines()
              if line.get_marker() == "o" and len(line.get_xdata()) == 1}
    bars = {ebs: to_hex(bar.get_edgecolor()) for ebs, bar in zip((16, 32, 64), cost.patches)}
    curves = {kind: {int(line.get_label().removeprefix("EBS ")): to_hex(line.get_color())
                     for line in figures[kind].axes[0].get_lines() if line.get_label().startswith("EBS ")}
              for kind in ("validation", "time")}
    assert points == bars == curves["validation"] == curves["time"]
    assert len(set(points.values())) == 3
    # Within the margin is the marker's fill, not its hue: 16 and 32 filled in their colour, 64 hollow.
    fills = {int(line.get_xdata()[0]): to_hex(line.get_markerfacecolor()) for line in top.get_lines()
             if line.get_marker() == "o" and len(line.get_xdata()) == 1}
    assert fills == {16: points[16], 32: points[32], 64: "#ffffff"}
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert "filled: shown within the margin" in legend and "hollow: not shown within it" in legend


def test_curves_all_keep_each_ebs_hue_and_lighten_its_other_lrs():
    from accumbench.present.colours import ebs_colours, shade
    from accumbench.present.plots import _styles

    frame = pd.DataFrame(dict(label=["EBS 16 lr 1e-4", "EBS 16 lr 3e-5", "EBS 32 lr 1e-4"],
                              effective_batch_size=[16, 16, 32], faded=[True, False, False]))
    labels = list(frame["label"])
    colours = ebs_colours([32, 16])
    styles = _styles([frame], labels, "all", colours)
    assert styles["EBS 16 lr 3e-5"] == (colours[16], "-")  # the best lr of EBS 16 in its colour
    assert styles["EBS 16 lr 1e-4"] == (shade(colours[16], 1, 2), "-") != styles["EBS 16 lr 3e-5"]
    assert styles["EBS 32 lr 1e-4"] == (colours[32], "-")
    best = _styles([frame], labels, "best", colours)
    assert best == {"EBS 16 lr 1e-4": None, "EBS 16 lr 3e-5": (colours[16], "-"), "EBS 32 lr 1e-4": (colours[32], "-")}
    assert shade("#000000", 1, 2) == "#999999" and shade("#123456", 0, 3) == "#123456"
