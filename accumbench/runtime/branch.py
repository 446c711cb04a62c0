"""accumbench branch: the critical batch size at a run's saved states, measured by training short branches.

    check (every UserError before anything loads or is written: the run, its states, the points, the EBS,
           the samples, the tolerance)
      -> prepare the run's own configuration once (data, tokenizer, model)
      -> for each state, seed and EBS: the state's weights and Adam moments back in the model and a fresh
         optimizer, the optimizer's settings at that EBS (the run's rules, or --lr), `samples` samples of the
         next epoch's order in groups of that EBS (the same accumulation plan as training), validation loss
      -> one branches row per branch; analysis/critical_batch.py turns them into the curve

A branch at the run's own seed and EBS that trains a whole epoch from an epoch's end is that run's next
epoch, step for step (tests/test_branch.py holds it to that): a branch is training, resumed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from accumbench import accumulation
from accumbench.analysis.critical_batch import DEFAULT_TOLERANCE, CriticalCurve, check_tolerance, curves_of
from accumbench.config import RunConfig
from accumbench.ebs_schedule import EPOCH, parse_points
from accumbench.errors import UserError
from accumbench.formatting import plain_number
from accumbench.store import Store, display_url, resolve_db_url


@dataclass(frozen=True)
class BranchPlan:
    """What `accumbench branch` was asked for, checked."""

    run_id: int
    at: str | None  # --at: epochs '1,2' or steps 'step20'; None: every saved state
    sizes: tuple[int, ...]  # the branches' EBS
    samples: int  # trained in every branch
    seeds: tuple[int, ...]
    lr: float | None = None  # one lr at every EBS; None: the run's rules at each EBS
    tolerance: float = DEFAULT_TOLERANCE


def chosen_states(plan: BranchPlan, run: dict[str, Any], states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The saved states --at names (all of them without --at); UserError for a point the run has no state at."""
    if not states:
        raise UserError(f"run {plan.run_id} has no saved states; train it with --save-states, e.g. "
                        "accumbench train ... --save-states 0,1,2, and branch from that run")
    if plan.at is None:
        return states
    unit, points = parse_points(plan.at, "--at")
    key = "epoch" if unit == EPOCH else "step"
    saved = {state[key]: state for state in states}
    end = run["epochs"] if unit == EPOCH else run["train_steps"]
    chosen = []
    for point in points:
        if end is not None and point > end:
            length = f"{end} {'epoch' if unit == EPOCH else 'step'}{'s' if end != 1 else ''}"
            raise UserError(f"--at {point if unit == EPOCH else f'step{point}'} is past the end of run {plan.run_id} "
                            f"({length}); pick a saved point: {_points(states, key)}")
        if point not in saved:
            raise UserError(f"run {plan.run_id} saved no state at {key} {point}; it saved at {key}s {_points(states, key)}")
        chosen.append(saved[point])
    return chosen


def _points(states: list[dict[str, Any]], key: str) -> str:
    return ", ".join(plain_number(state[key]) for state in states)


def check_plan(plan: BranchPlan, config: RunConfig) -> None:
    """Every EBS a multiple of the run's micro-batch and a divisor of the branch length; a tolerance in (0, 1)."""
    check_tolerance(plan.tolerance)
    if not plan.sizes or not plan.seeds:
        raise UserError("--ebs and --seeds need at least one value each; e.g. --ebs 16,64,256 --seeds 1,2")
    micro = config.micro_batch_size
    for size in plan.sizes:
        if size <= 0 or size % micro:
            raise UserError(f"--ebs {size} is not a multiple of run's micro-batch size {micro}; "
                            f"use multiples such as {micro * 2},{micro * 8}")
        if plan.samples % size:
            raise UserError(f"--samples {plan.samples} is not a multiple of EBS {size}: every branch must take whole "
                            f"steps on the same samples; use --samples {max(plan.sizes) * max(1, plan.samples // max(plan.sizes))}")
    if plan.lr is not None and not plan.lr > 0:
        raise UserError(f"--lr must be a positive number, got {plan.lr:g}; pass e.g. --lr 3e-5 or leave it out")


def branch(plan: BranchPlan, db: str | None = None, report: Callable[[dict[str, Any]], None] = lambda row: None
           ) -> CriticalCurve:
    """Train the plan's branches and record them; the run's critical-batch curve from every branch it has."""
    url = resolve_db_url(db)
    with Store.open_readonly(url) as store:  # every check before anything is written
        try:
            run = store.get_run(plan.run_id)
        except KeyError:
            raise UserError(f"no run {plan.run_id} in {display_url(url)}; list runs with accumbench report") from None
        config = RunConfig.from_dict(json.loads(run["config_json"]))
        states = chosen_states(plan, run, store.states_of([plan.run_id]))
    check_plan(plan, config)
    if plan.samples > (run["num_train_samples"] or plan.samples):
        raise UserError(f"--samples {plan.samples} is more than run {plan.run_id}'s {run['num_train_samples']} "
                        "training samples; a branch trains part of one epoch")
    with Store.open(url) as store:
        _train_branches(plan, config, states, store, report)
        [curve] = curves_of(store, [plan.run_id], plan.tolerance)
    return curve


def _train_branches(plan: BranchPlan, config: RunConfig, states: Sequence[dict[str, Any]], store: Store,
                    report: Callable[[dict[str, Any]], None]) -> None:
    from accumbench.runtime.preparation import prepare
    from accumbench.runtime.states import load_state

    # The run's own data and model (the model's weights are replaced by each state's).
    prepared = prepare(dataclasses.replace(config, ebs_schedule=None, noise_scale=False, checkpoint=False,
                                           save_states=None))
    for state in states:
        saved = load_state(state["path"])
        for seed in plan.seeds:
            for size in plan.sizes:
                row = train_one_branch(prepared, saved, state, size, seed, plan)
                store.add_branch(**row)
                report(row)


def train_one_branch(prepared: Any, saved: dict[str, Any], state: dict[str, Any], size: int, seed: int,
                     plan: BranchPlan) -> dict[str, Any]:
    """One branch from `saved`: its branches row."""
    import torch

    from accumbench.data import pipeline
    from accumbench.runtime.engine import evaluate
    from accumbench.runtime.preparation import make_backend

    # A constant lr through the branch: the rule's at this EBS (or --lr), times where the run's own lr schedule
    # (warmup, decay) stood at the state.
    config = dataclasses.replace(prepared.config, effective_batch_size=size, scheduler="constant", warmup_ratio=0.0,
                                 **({"lr": plan.lr, "lr_scaling": "none"} if plan.lr is not None else {}))
    prepared.model.load_state_dict(saved["model"])
    backend = make_backend(dataclasses.replace(prepared, config=config, total_steps=plan.samples // size))
    try:
        _resume_optimizer(backend, saved["optimizer"], prepared.config.settings_at(state["effective_batch_size"]).lr)
        torch.manual_seed(seed)
        train = prepared.splits["train"]
        next_epoch = int(state["epoch"]) + 1
        # The next epoch's order, its first `samples` samples in groups of this EBS: the training plan's own cut.
        groups = accumulation.cut_groups(accumulation.epoch_order(len(train), seed, next_epoch)[: plan.samples],
                                         [size] * (plan.samples // size), config.micro_batch_size, backend.world_size,
                                         train.lengths if config.group_by_length else None)
        started = time.perf_counter()
        stats = backend.train_epoch(groups, lambda idx: pipeline.collate(train, idx, prepared.pad_token_id), next_epoch,
                                    config.grad_clip, state["step"], state["samples_seen"])
        seconds = time.perf_counter() - started
        val = evaluate(backend, prepared.splits["validation"], prepared.pad_token_id, config.micro_batch_size)
    finally:
        backend.close()
    return dict(state_id=state["id"], run_id=state["run_id"], effective_batch_size=size, seed=seed,
                lr=backend.optimizer.param_groups[0]["lr"], samples=plan.samples, steps=stats.optimizer_steps,
                train_loss=stats.loss, val_loss=val.loss, val_accuracy=val.accuracy, seconds=seconds,
                tolerance=plan.tolerance)


def _resume_optimizer(backend: Any, saved: dict[str, Any], peak_lr: float) -> None:
    """The saved optimizer's state (Adam's moments and step counts) under the fresh optimizer's settings (this
    EBS's lr, betas, eps, weight decay), the lr scaled by where the run's lr schedule (warmup, decay) stood at the
    state: the saved lr over `peak_lr`, the run's rule's lr at the EBS it had then (an --ebs-schedule moves that
    peak, so the saved initial_lr is not it)."""
    factor = saved["param_groups"][0]["lr"] / peak_lr
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in backend.optimizer.param_groups]
    backend.optimizer.load_state_dict(saved)
    for group, settings in zip(backend.optimizer.param_groups, fresh):
        group.update(settings, lr=settings["lr"] * factor)
    scheduler = getattr(backend.scheduler, "scheduler", backend.scheduler)
    scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
