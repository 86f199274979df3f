"""Choosing the executor's three roles once, when it is built.

    dispatch      LocalDispatch, or AllToAllDispatch over a process group
    runner        FusedRunner where it can stand in for the backends, else BackendsRunner
    plan source   KernelChoice (the policy puts every expert on the GPU), DevicePlans, AheadPlans or HostPlans

Each candidate answers `supports(...) -> (bool, reason)`; the first that can is taken and the choice is
logged once with the reasons of those passed over. The backends runner with host plans is always
possible: it is also what a layer the chosen runner cannot take (`accepts`) or whose call fails runs on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from heteromoe.runtime.dispatch import Dispatch
from heteromoe.runtime.plan_sources import AheadPlans, DevicePlans, HostPlans, KernelChoice, PlanSource
from heteromoe.runtime.runners import BackendsRunner, ExpertsRunner

logger = logging.getLogger(__name__)

__all__ = ["Roles", "choose_plans", "choose_roles"]


@dataclass(frozen=True, eq=False)
class Roles:
    """The executor's roles: `runner` with `plans` for the calls it accepts, `generic` with `host_plans`
    for the others (the same objects where the backends runner was chosen)."""

    dispatch: Dispatch
    runner: ExpertsRunner
    plans: PlanSource
    generic: BackendsRunner
    host_plans: HostPlans


def choose_plans(policy, runner: ExpertsRunner, plan_ahead: bool, plan_on_device: bool,
                 host: HostPlans | None = None) -> tuple[PlanSource, list[str]]:
    """The plan source for `runner`: the first of the asked ones it supports, in this order (device before
    ahead), kernel choice first for a policy that runs every expert on the GPU; `host` (default: new host
    plans) otherwise. Also returns why each one passed over could not serve."""
    candidates: list[PlanSource] = []
    if not runner.needs_host_plan and policy.every_expert_on_gpu:
        candidates.append(KernelChoice(policy))
    if plan_on_device:
        candidates.append(DevicePlans(policy))
    if plan_ahead:
        candidates.append(AheadPlans(policy))
    passed_over = []
    for source in candidates:
        ok, reason = source.supports(runner)
        if ok:
            return source, passed_over
        passed_over.append(f"{source.name} plans: {reason}")
    return host if host is not None else HostPlans(policy), passed_over


def choose_roles(policy, dispatch: Dispatch, generic: BackendsRunner, runner: ExpertsRunner | None = None,
                 plan_ahead: bool = False, plan_on_device: bool = False) -> Roles:
    """The roles of an executor: `runner` (e.g. a FusedRunner) where it supports the dispatch and policy,
    else the backends runner; its plan source by `choose_plans`. Logs the choice once."""
    host = HostPlans(policy)
    passed_over: list[str] = []
    chosen = generic
    if runner is not None:
        ok, reason = runner.supports(dispatch, policy)
        if ok:
            chosen = runner
        else:
            passed_over.append(f"{runner.name} runner: {reason}")
    plans, skipped = choose_plans(policy, chosen, plan_ahead, plan_on_device, host) if chosen is not generic else (host, [])
    passed_over += skipped
    logger.info("executor roles: %s dispatch, %s runner, %s plans, policy %s%s", dispatch.name, chosen.name,
                plans.name, policy.name, f" ({'; '.join(passed_over)})" if passed_over else "")
    return Roles(dispatch, chosen, plans, generic, host)
