"""Policy names -> policy objects.

Selection: a `Policy` instance is used as is; a name is looked up in `POLICIES` (built-ins:
`gpu-only`, `all-exp`, `sieve`); anything else raises, listing the known names. `register_policy`
adds a user's policy class under its `name`.
"""
from __future__ import annotations

from heteromoe.sched.policies.all_exp import AllExpPolicy
from heteromoe.sched.policies.gpu_only import GpuOnlyPolicy
from heteromoe.sched.policies.sieve import SievePolicy
from heteromoe.sched.policy import Policy

__all__ = ["POLICIES", "get_policy", "register_policy"]

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (GpuOnlyPolicy, AllExpPolicy, SievePolicy)}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Register a Policy subclass under `cls.name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"policy class {cls.__name__} has no name")
    POLICIES[cls.name] = cls
    return cls


def get_policy(policy: "str | Policy") -> Policy:
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {policy!r}; known policies: {', '.join(sorted(POLICIES))}") from None
