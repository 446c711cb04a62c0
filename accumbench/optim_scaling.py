"""How each batch-size-dependent optimizer setting moves with the effective batch size: pure math.

With kappa = EBS / --base-batch-size, every rule maps the setting given at the base batch size to the one
a run at EBS uses. The rules and where they come from:

    lr            linear   lr * kappa          Goyal et al. 2017: the same step size per sample (SGD)
                  sqrt     lr * sqrt(kappa)    Malladi et al. 2022: the SDE rule for Adam
    beta1, beta2  half-life  beta ** kappa     Marek et al. 2025: the moving average keeps its half-life in
                                               samples (1 - beta ~ kappa (1 - beta) to first order: the SDE rule,
                                               but valid for any kappa, where 1 - kappa (1 - beta) can go negative)
    eps           sqrt     eps / sqrt(kappa)   Malladi et al. 2022: the gradient's scale shrinks by sqrt(kappa)
    weight decay  timescale  wd * kappa * lr_base / lr
                                               Bergsma et al. 2025: AdamW's timescale tau = B / (lr wd D) stays put

`--scaling-rule sde` is the bundle of Malladi et al.: sqrt lr, half-life beta1 and beta2, sqrt eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCALINGS = ("none", "linear", "sqrt")
BETA_SCALINGS = ("none", "half-life")
EPS_SCALINGS = ("none", "sqrt")
WEIGHT_DECAY_SCALINGS = ("none", "timescale")
SCALING_RULES = ("none", "sde")

# The RunConfig field of each rule; those beyond the lr's; every option that names a rule (the bundle too: the
# sweep's rule axes); and the rule each takes under --scaling-rule sde.
RULE_FIELDS = ("lr_scaling", "beta1_scaling", "beta2_scaling", "eps_scaling", "weight_decay_scaling")
OTHER_RULE_FIELDS = RULE_FIELDS[1:]
RULE_OPTIONS = (*RULE_FIELDS, "scaling_rule")
BUNDLES = {"sde": {"lr_scaling": "sqrt", "beta1_scaling": "half-life", "beta2_scaling": "half-life",
                   "eps_scaling": "sqrt"}}
# How a rule reads in a table: "β2 half-life".
_SHORT = {"lr_scaling": "lr", "beta1_scaling": "β1", "beta2_scaling": "β2", "eps_scaling": "ε",
          "weight_decay_scaling": "wd"}


@dataclass(frozen=True)
class OptimizerSettings:
    """The values a run's optimizer actually uses (after scaling), as recorded on the run."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float


def scale_lr(lr: float, rule: str, kappa: float) -> float:
    return lr * {"none": 1.0, "linear": kappa, "sqrt": math.sqrt(kappa)}[rule]


def scale_beta(beta: float, rule: str, kappa: float) -> float:
    # beta ** kappa: after kappa times fewer steps, the average has forgotten as much as before.
    return beta**kappa if rule == "half-life" else beta


def scale_eps(eps: float, rule: str, kappa: float) -> float:
    return eps / math.sqrt(kappa) if rule == "sqrt" else eps


def scale_weight_decay(weight_decay: float, rule: str, kappa: float, lr_ratio: float) -> float:
    """`lr_ratio` is the scaled lr over the base lr: tau = B / (lr wd D) is held when wd * lr grows as B does."""
    return weight_decay * kappa / lr_ratio if rule == "timescale" else weight_decay


def scaled_settings(*, kappa: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                    rules: dict[str, str]) -> OptimizerSettings:
    """The settings at kappa = EBS / base batch size, from those at the base under `rules` (RULE_FIELDS: rule)."""
    scaled_lr = scale_lr(lr, rules["lr_scaling"], kappa)
    return OptimizerSettings(
        lr=scaled_lr,
        beta1=scale_beta(beta1, rules["beta1_scaling"], kappa),
        beta2=scale_beta(beta2, rules["beta2_scaling"], kappa),
        eps=scale_eps(eps, rules["eps_scaling"], kappa),
        weight_decay=scale_weight_decay(weight_decay, rules["weight_decay_scaling"], kappa, scaled_lr / lr),
    )


def bundle_name(rules: dict[str, str], with_lr: bool = True) -> str:
    """The rules as people name them: 'sde' for the SDE bundle (plus any rule beyond it: 'sde, wd timescale'),
    else the rules that scale something, e.g. 'sqrt lr, β2 half-life'; 'none' when nothing scales. Without
    `with_lr` the lr rule is left out (over a tuned lr grid it only relabels the grid): the SDE bundle's other
    rules are then 'sde β, ε'."""
    named = {f: f"{rules[f]} {_SHORT[f]}" if f == "lr_scaling" else f"{_SHORT[f]} {rules[f]}"
             for f in RULE_FIELDS if rules[f] != "none" and (with_lr or f != "lr_scaling")}
    for name, bundle in BUNDLES.items():
        covered = [f for f in bundle if with_lr or f != "lr_scaling"]
        if all(rules[f] == bundle[f] for f in covered):
            return ", ".join([name if with_lr else f"{name} β, ε", *(text for f, text in named.items() if f not in covered)])
    return ", ".join(named.values()) or "none"
