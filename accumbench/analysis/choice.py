"""pick-best's answer, whichever was asked: the picks (pick.py), the pick under every protocol the runs
support (does the lr choice change the EBS answer?), or racing replayed over the grid (race_replay.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd

from accumbench.analysis.pick import Pick, PickOptions, pick_among, pick_best, pick_by_protocol, pick_groups
from accumbench.analysis.race_replay import RaceReplay, replay_race
from accumbench.analysis.runs import RunData, load_predictions, lr_free_key, optim_rules, series_key
from accumbench.analysis.tuning import has_lr_grid
from accumbench.deficit import DEFAULT_EVIDENCE, Margin
from accumbench.formatting import format_lr, rate_key
from accumbench.optim_scaling import OTHER_RULE_FIELDS
from accumbench.vocabulary import POOLED, TUNED

# --- the same runs under every protocol they support -------------------------------------------------


@dataclass
class ProtocolPick:
    kind: str  # 'single lr', 'scaling rule', 'pooled', 'tuned' or 'rule bundle'
    name: str  # e.g. 'single lr 1e-4', 'sqrt scaling of 1e-4 at EBS 64', 'pooled', 'tuned', 'tuned, rules sde β, ε'
    pick: Pick


@dataclass
class ProtocolComparison:
    group: str
    protocols: list[ProtocolPick]

    @property
    def picked(self) -> list[int]:
        return sorted({p.pick.chosen.effective_batch_size for p in self.protocols})

    @property
    def answer_changes(self) -> bool:
        return len(self.picked) > 1

    @property
    def text(self) -> str:
        if not self.protocols:
            return "no protocol can be compared: every lr was tried at one EBS only"
        if not self.answer_changes:
            return f"every protocol picks EBS {self.picked[0]}"
        by_ebs = {ebs: [p.name for p in self.protocols if p.pick.chosen.effective_batch_size == ebs] for ebs in self.picked}
        return "the EBS picked depends on the protocol: " + "; ".join(
            f"EBS {ebs} under {', '.join(names)}" for ebs, names in by_ebs.items())


Rows = list[tuple[str, Pick]]  # (the protocol's name as shown, its pick)


def _at_each_lr(name: str, group: pd.DataFrame, data: RunData, predictions: Any, metric: str, evidence: Margin) -> Rows:
    """Every EBS at one lr (the seed study's way): one per lr trained at 2+ EBS, whatever rule led there."""
    rows = []
    rates = group.assign(rate=group["lr"].map(rate_key))
    for _, at_rate in sorted(rates.groupby("rate"), key=lambda item: float(item[0])):
        if at_rate["effective_batch_size"].nunique() > 1:
            rows.append((f"single lr {format_lr(float(at_rate['lr'].iloc[0]))}",
                         pick_among(name, at_rate.drop(columns="rate"), predictions, metric, evidence)))
    return rows


def _by_scaling_rule(name: str, group: pd.DataFrame, data: RunData, predictions: Any, metric: str,
                     evidence: Margin) -> Rows:
    """Each recorded lr scaling rule from each base lr (and base EBS)."""
    scaled = group[group["lr_scaling"] != "none"]
    return [(f"{rule} scaling of {format_lr(base)} at EBS {at}" + (f", {others}" if others else ""),
             pick_among(name, rule_runs, predictions, metric, evidence))
            for (rule, others, base, at), rule_runs in scaled.groupby(["lr_scaling", "optim_rules", "base_lr",
                                                                       "base_batch_size"], sort=True)
            if rule_runs["effective_batch_size"].nunique() > 1]


def _as_protocol(protocol: str) -> Any:
    """pick.py's protocol (pooled or tuned) over the group, where it has an lr grid to choose from."""
    def rows(name: str, group: pd.DataFrame, data: RunData, predictions: Any, metric: str, evidence: Margin) -> Rows:
        if not has_lr_grid(group, data.pruned):
            return []
        return [(protocol, pick_by_protocol(name, group, data, predictions, metric, evidence, protocol))]
    return rows


def _per_rule_bundle(name: str, group: pd.DataFrame, data: RunData, predictions: Any, metric: str,
                     evidence: Margin) -> Rows:
    """Tuned (pooled without an lr grid) within each bundle of the β, ε and weight-decay rules."""
    rows = []
    for label, bundle_runs in rule_bundles(group):
        if bundle_runs["effective_batch_size"].nunique() > 1:
            protocol = TUNED if has_lr_grid(bundle_runs, data.pruned) else POOLED
            rows.append((f"{protocol}, rules {label}",
                         pick_by_protocol(name, bundle_runs, data, predictions, metric, evidence, protocol)))
    return rows


@dataclass(frozen=True)
class ComparedProtocol:
    """A kind of protocol --compare-protocols shows: the picks it makes in a group, and what it means (the
    comparison's footnote)."""

    kind: str
    picks: Any  # (group name, runs, data, predictions, metric, evidence) -> [(shown name, Pick)]
    meaning: str


# The protocols --compare-protocols shows, in order. A new protocol is one entry here (and, for --protocol,
# one in pick.PICK_PROTOCOLS).
COMPARED = (
    ComparedProtocol("single lr", _at_each_lr, "every EBS at one shared lr, as the seed study trained them"),
    ComparedProtocol("scaling rule", _by_scaling_rule, "every EBS at the lr its scaling rule gave it from one base lr"),
    ComparedProtocol(POOLED, _as_protocol(POOLED), "every (EBS, lr) cell competes as it is"),
    ComparedProtocol(TUNED, _as_protocol(TUNED), "each EBS at its best lr on validation, then EBS against EBS"),
    ComparedProtocol("rule bundle", _per_rule_bundle,
                     "tuned (or pooled) within one bundle of the β, ε and weight-decay rules"),
)


def compare_protocols(data: RunData, predictions: dict[str, dict[int, dict[str, Any]]], metric: str = "val_accuracy",
                      evidence: Margin = DEFAULT_EVIDENCE, by: str = "model") -> list[ProtocolComparison]:
    """Per group, the pick under each protocol the runs support (COMPARED). Whether the EBS picked changes is
    the finding."""
    return [ProtocolComparison(name, [ProtocolPick(protocol.kind, shown, found) for protocol in COMPARED
                                      for shown, found in protocol.picks(name, group, data, predictions, metric,
                                                                         evidence)])
            for name, group in pick_groups(data.runs, by)]


def rule_bundles(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Where the runs were trained under two or more bundles of the β, ε and weight-decay rules: each bundle
    (its rules and the base EBS they scale from) with its runs, for "does the answer change when β2 is scaled
    too?". A run of another bundle that trained the very same thing counts for this one as well: at the base
    EBS (kappa 1) every rule is the identity, so one run there serves every bundle (one config hash). Such a
    run is seen as the bundle's own (its config, rules and grid keys), so that it joins the bundle's lr x EBS
    grid and the lr scaling fit."""
    bundles: dict[tuple[Any, ...], dict[str, Any]] = {}
    for config in runs["config"]:
        others = {name: getattr(config, name) for name in OTHER_RULE_FIELDS}
        bundle = {**others, "base_batch_size": config.base_batch_size} if config.scales_beyond_lr else others
        bundles.setdefault(tuple(sorted(bundle.items())), bundle)
    if len(bundles) < 2:
        return []
    bases = {bundle.get("base_batch_size") for bundle in bundles.values()} - {None}
    out = []
    for bundle in bundles.values():
        moved = runs["config"].map(lambda config, bundle=bundle: dataclasses.replace(config, scaling_rule="none", **bundle))
        same = [a.config_hash == b.config_hash for a, b in zip(moved, runs["config"])]
        own = runs[same].assign(config=moved[same])
        own = own.assign(optim_rules=own["config"].map(optim_rules), lr_free=own["config"].map(lr_free_key),
                         series=own["config"].map(series_key))
        label = optim_rules(moved.iloc[0]) or "none"
        if len(bases) > 1 and "base_batch_size" in bundle:
            label += f" from EBS {bundle['base_batch_size']}"
        out.append((label, own))
    return sorted(out, key=lambda item: item[0] != "none")



def choose(store: Any, data: RunData, options: PickOptions) -> list[Pick] | list[ProtocolComparison] | list[RaceReplay]:
    """pick-best's answer from an open store: the picks; with compare_protocols the pick under every protocol;
    with replay_race, racing replayed over the grid."""
    if options.replay_race:
        return replay_race(store, data, options.race_rule, evidence=options.evidence)
    predictions = load_predictions(store, data)
    if options.compare_protocols:
        return compare_protocols(data, predictions, metric=options.metric, evidence=options.evidence, by=options.by)
    return pick_best(data, predictions, metric=options.metric, evidence=options.evidence, by=options.by,
                     target=options.target, protocol=options.protocol)
