"""Policy names -> policy objects.

Selection: a `Policy` instance is used as is; a name is looked up in `POLICIES`; anything else raises,
listing the known names. The published baselines (`gpu-only`, `no-exp`, `all-exp`,
`duplex`, `pimoe`, `sieve`), the OR-Tools yardstick `exact`, and ours, `heteromoe`. `register_policy`
adds a user's Policy subclass under its `name`.
"""
from __future__ import annotations

from heteromoe.errors import UserError
from heteromoe.sched.policies.all_exp import AllExpPolicy
from heteromoe.sched.policies.duplex import DuplexPolicy
from heteromoe.sched.policies.exact import ExactPolicy
from heteromoe.sched.policies.gpu_only import GpuOnlyPolicy
from heteromoe.sched.policies.heteromoe_policy import HeteromoePolicy
from heteromoe.sched.policies.no_exp import NoExpPolicy
from heteromoe.sched.policies.pimoe import PimoePolicy
from heteromoe.sched.policies.sieve import SievePolicy
from heteromoe.sched.policy import Policy

__all__ = ["BASELINES", "POLICIES", "get_policy", "register_policy"]

BASELINES = ("gpu-only", "no-exp", "all-exp", "duplex", "pimoe", "sieve")
POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (
    GpuOnlyPolicy, NoExpPolicy, AllExpPolicy, DuplexPolicy, PimoePolicy, SievePolicy, ExactPolicy, HeteromoePolicy)}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Register a Policy subclass under `cls.name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"policy class {cls.__name__} has no name")
    POLICIES[cls.name] = cls
    return cls


def get_policy(policy: str | Policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]()
    except (KeyError, TypeError):
        raise UserError(f"unknown policy {policy!r}; known policies: {', '.join(sorted(POLICIES))}") from None
