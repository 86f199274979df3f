"""`heteromoe.schedule()`: loads -> plan from the public API."""
from __future__ import annotations

import numpy as np

from heteromoe.cost.model import CostModel
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import Placement, as_placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.policy import Policy
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["schedule"]


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
            but `gpu-only` (DESIGN.md section 2).
        token_origin: optional [G, E] tokens of each expert by the GPU their token lives on (attention is
            data-parallel); sets the all-to-all time. Default: origins uniform over the GPUs.
    Returns:
        A validated Plan.
    """
    model_spec = models.get(model)
    system_spec = systems.get(system)
    system_spec.check_gpus(gpus)
    slots: Placement = as_placement(placement, model_spec.num_experts, gpus)
    cost = CostModel(system_spec, model_spec, gpu_other_s=gpu_other_s, pim_fixed_s=pim_fixed_s,
                     attn_kv_bytes=attn_kv_bytes)
    return get_policy(policy).plan(np.asarray(counts), slots, gpus, cost, origin=token_origin)
