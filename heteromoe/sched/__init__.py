"""Policies -> Plan, the plan validator, and `schedule()`."""
from heteromoe.sched.api import Scheduler, schedule
from heteromoe.sched.factory import POLICIES, get_policy, register_policy
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import Plan, PlanError
from heteromoe.sched.policy import Policy

__all__ = ["POLICIES", "Placement", "Plan", "PlanError", "Policy", "get_policy", "Scheduler", "register_policy", "schedule"]
