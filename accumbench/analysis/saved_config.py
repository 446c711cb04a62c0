"""pick-best --save-config: the picked cell as a `train` YAML, so that `accumbench train --config FILE` trains
it again, seed included.

    Pick -> its best run on the selection metric (the seed to retrain) -> that run's RunConfig as YAML, with
    what the optimizer uses after scaling, and why, as comments

Every field is written as the run had it (the base lr, β and ε, and the rules that scale them), so the file
names the same configuration, config hash included; the values those rules give at the picked EBS are in the
comments. epochs becomes the best epoch where that trains exactly the run up to it: a constant lr without
warmup. A schedule (linear, cosine, warmup) is sized on the whole run, so cutting it short would train
something else: the run's epochs are kept, and the best epoch's checkpoint is what --checkpoint keeps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from accumbench.analysis.pick import Pick
from accumbench.config import RunConfig
from accumbench.errors import UserError
from accumbench.formatting import format_lr
from accumbench.vocabulary import METRICS, higher_is_better


def picked_run(pick: Pick) -> pd.Series:
    """The picked cell's run to train again: its best seed on the selection metric (ties: the lower seed)."""
    runs = pick.chosen.runs.sort_values([pick.metric, "seed"], ascending=[not higher_is_better(pick.metric), True])
    return runs.iloc[0]


def saved_config(picks: list[Pick]) -> tuple[RunConfig, str, str]:
    """(the config, the YAML text, a line saying what it is) for the one pick among `picks`."""
    if len(picks) != 1:
        groups = ", ".join(p.group for p in picks)
        raise UserError(f"--save-config writes one cell, but pick-best made {len(picks)} picks ({groups}); "
                        "choose one with --model (or --backend)")
    [pick] = picks
    run = picked_run(pick)
    config: RunConfig = run["config"]
    best_epoch = int(run["best_epoch"])
    cut_short = config.budget == "epochs" and config.scheduler == "constant" and config.warmup_ratio == 0
    if cut_short:
        config = dataclasses.replace(config, epochs=best_epoch)
    # Written with its rules spelled out: --scaling-rule is a shorthand for them.
    config = dataclasses.replace(config, scaling_rule="none", checkpoint=True)
    settings = config.optimizer_settings
    epochs = (f"epochs {best_epoch} = the best epoch: at a constant lr that is the run up to it, exactly" if cut_short
              else f"epochs kept at {config.epochs}: the lr schedule spans them; the checkpoint keeps the best "
                   f"epoch ({best_epoch})")
    comments = [
        f"accumbench train --config FILE trains the cell pick-best picked again: run {run['run_id']}, seed "
        f"{config.seed}",
        f"picked: {pick.chosen.label} ({pick.protocol} protocol) on {METRICS[pick.metric]}, {run[pick.metric]:.4f} "
        f"for this seed, {pick.chosen.metric_mean:.4f} mean over {len(pick.chosen.runs)}",
        f"the optimizer uses: lr {format_lr(settings.lr)}, beta1 {settings.beta1:.6g}, beta2 {settings.beta2:.6g}, "
        f"eps {settings.eps:.3g}, weight decay {settings.weight_decay:.3g}" + (
            f" (rules {config.rule_bundle}, from EBS {config.base_batch_size})" if config.rule_bundle != "none" else ""),
        epochs,
    ]
    text = "".join(f"# {line}\n" for line in comments) + _yaml(config)
    return config, text, f"run {run['run_id']} ({pick.chosen.label}, seed {config.seed})"


def _yaml(config: RunConfig) -> str:
    """The config's fields in their declared order; the ones still at their defaults left out, but for the
    few that say what is trained (model, dataset, EBS, micro-batch, lr, epochs, seed)."""
    import yaml

    always = {"model", "dataset", "effective_batch_size", "micro_batch_size", "lr", "epochs", "seed"}
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in always or value != f.default:
            values[f.name] = value
    return yaml.safe_dump(values, sort_keys=False)
