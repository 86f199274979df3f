"""`heteromoe.schedule()` and `heteromoe.Scheduler`: loads -> plan from the public API.

A layer call's plan needs a cost model (the system's and the model's specs, the shipped GPU tables, the PIM
timing model's tables) and a placement. Building those costs far more than planning, so both calls reuse them:

- `Scheduler(model=..., system=..., gpus=..., policy=...)` builds them once; its `plan(counts)` is the
  per-layer call, as cheap as the policy's own `Policy.plan`.
- `schedule(counts, model=..., ...)` resolves its arguments on every call but keeps what cannot change in
  small caches: presets are parsed once (a user's TOML file again when it changes on disk, see
  `heteromoe.spec.presets`), cost models are kept per (model spec, system spec, extra seconds, attention
  bytes), keyed by the specs' identity, so a new spec object always gets its own cost model, and contiguous
  placements per (experts, GPUs), with read-only arrays.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from heteromoe.cost.model import CostModel
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import Placement, as_placement, contiguous_placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.policy import Policy
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["Scheduler", "clear_caches", "schedule"]

#: Cost models kept by `schedule()`: enough for every preset pair with a few attention sizes.
COST_CACHE_SIZE = 64

_costs: OrderedDict[tuple, tuple[MoEModelSpec, SystemSpec, CostModel]] = OrderedDict()
_placements: dict[tuple[int, int], Placement] = {}
_lock = threading.Lock()  # guards the caches' updates; a hit reads without it


def clear_caches() -> None:
    """Forget the cached cost models and placements (presets stay parsed)."""
    with _lock:
        _costs.clear()
        _placements.clear()


def _cost_model(model_spec: MoEModelSpec, system_spec: SystemSpec, gpu_other_s: float, pim_fixed_s: float,
                attn_kv_bytes: float) -> CostModel:
    """A cached CostModel for these exact spec objects and extra times.

    Keyed by the specs' `id`; the entry holds the specs themselves, so an id cannot be reused by another
    object while its entry lives. The oldest entries go first once there are COST_CACHE_SIZE."""
    key = (id(model_spec), id(system_spec), gpu_other_s, pim_fixed_s, attn_kv_bytes)
    entry = _costs.get(key)
    if entry is not None and entry[0] is model_spec and entry[1] is system_spec:
        return entry[2]
    cost = CostModel(system_spec, model_spec, gpu_other_s=gpu_other_s, pim_fixed_s=pim_fixed_s,
                     attn_kv_bytes=attn_kv_bytes)
    with _lock:
        _costs[key] = (model_spec, system_spec, cost)
        while len(_costs) > COST_CACHE_SIZE:
            _costs.popitem(last=False)
    return cost


def _placement(placement, num_experts: int, gpus: int) -> Placement:
    if placement is not None:
        return as_placement(placement, num_experts, gpus)
    key = (num_experts, gpus)
    cached = _placements.get(key)
    if cached is None:
        cached = Placement.from_homes(contiguous_placement(num_experts, gpus), gpus)
        for arr in (cached.phys2log, cached.slot_gpu):
            arr.setflags(write=False)  # shared by every plan made with it
        with _lock:
            cached = _placements.setdefault(key, cached)
    return cached


def schedule(counts, *, model: str | MoEModelSpec, system: str | SystemSpec, gpus: int = 1,
             policy: str | Policy = "sieve", placement=None, gpu_other_s: float = 0.0,
             pim_fixed_s: float = 0.0, attn_kv_bytes: float = 0.0, token_origin=None) -> Plan:
    """Plan one MoE layer call.

    Args:
        counts: [E] tokens routed to each expert (non-negative integers).
        model: a model preset name, TOML path or MoEModelSpec (gives d, f, E, bytes per weight).
        system: a system preset name, TOML path or SystemSpec.
        gpus: GPUs in expert parallelism (experts in contiguous blocks unless `placement` is given).
        policy: a policy name (see `heteromoe.sched.POLICIES`) or a Policy instance.
        placement: optional [E] home GPU of each expert, or a Placement (with replicas of hot experts, which
            the `heteromoe` policy routes tokens to; see `heteromoe.sched.replicas`).
        gpu_other_s: other GPU work of the step overlapping the experts (seconds, per GPU).
        pim_fixed_s: other fixed PIM work (seconds, per GPU).
        attn_kv_bytes: KV-cache bytes decode attention reads per GPU in this layer; on PIM for every policy
            but `gpu-only`.
        token_origin: optional [G, E] tokens of each expert by the GPU their token lives on (attention is
            data-parallel); sets the all-to-all time. Default: origins uniform over the GPUs.
    Returns:
        A validated Plan.

    For many calls with the same model, system and policy, `Scheduler` skips the per-call look-ups.
    """
    model_spec = models.get(model)
    system_spec = systems.get(system)
    system_spec.check_gpus(gpus)
    slots = _placement(placement, model_spec.num_experts, gpus)
    cost = _cost_model(model_spec, system_spec, gpu_other_s, pim_fixed_s, attn_kv_bytes)
    return get_policy(policy).plan(np.asarray(counts), slots, gpus, cost, origin=token_origin)


class Scheduler:
    """A reusable planner for one model on one system: `Scheduler(...).plan(counts)` per layer call.

    Args:
        model, system, gpus, policy, placement, gpu_other_s, pim_fixed_s, attn_kv_bytes: as in `schedule()`;
            resolved and checked once, here.

    Attributes:
        model, system: the resolved specs.
        gpus: G.
        policy: the Policy instance every call uses.
        placement: the Placement every call uses.
        cost: the CostModel every call uses.
    """

    def __init__(self, *, model: str | MoEModelSpec, system: str | SystemSpec, gpus: int = 1,
                 policy: str | Policy = "sieve", placement=None, gpu_other_s: float = 0.0,
                 pim_fixed_s: float = 0.0, attn_kv_bytes: float = 0.0) -> None:
        self.model = models.get(model)
        self.system = systems.get(system)
        self.system.check_gpus(gpus)
        self.gpus = gpus
        self.policy = get_policy(policy)
        self.placement = _placement(placement, self.model.num_experts, gpus)
        self.cost = CostModel(self.system, self.model, gpu_other_s=gpu_other_s, pim_fixed_s=pim_fixed_s,
                              attn_kv_bytes=attn_kv_bytes)

    def plan(self, counts, token_origin=None) -> Plan:
        """Plan one layer call: `counts [E]` tokens per expert, optional `token_origin [G, E]`."""
        return self.policy.plan(counts, self.placement, self.gpus, self.cost, origin=token_origin)

    def __repr__(self) -> str:
        return (f"Scheduler(model={self.model.name!r}, system={self.system.name!r}, gpus={self.gpus}, "
                f"policy={self.policy.name!r})")
