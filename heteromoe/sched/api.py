"""`heteromoe.schedule()`: loads -> plan from the public API."""
from __future__ import annotations

import numpy as np

from heteromoe.cost.model import CostModel
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import check_placement, contiguous_placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.policy import Policy
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["schedule"]


def schedule(counts, *, model: "str | MoEModelSpec", system: "str | SystemSpec", gpus: int = 1,
             policy: "str | Policy" = "sieve", placement=None, gpu_other_s: float = 0.0,
             pim_fixed_s: float = 0.0) -> Plan:
    """Plan one MoE layer call.

    Args:
        counts: [E] tokens routed to each expert (non-negative integers).
        model: a model preset name, TOML path or MoEModelSpec (gives d, f, E, bytes per weight).
        system: a system preset name, TOML path or SystemSpec.
        gpus: GPUs in expert parallelism (experts in contiguous blocks unless `placement` is given).
        policy: a policy name (`gpu-only`, `all-exp`, `sieve`) or a Policy.
        placement: optional [E] home GPU of each expert.
        gpu_other_s: other GPU work of the step overlapping the experts (seconds, per GPU).
        pim_fixed_s: fixed PIM work, e.g. decode attention on PIM (seconds, per GPU).
    Returns:
        A validated Plan.
    """
    model_spec = models.get(model)
    system_spec = systems.get(system)
    system_spec.check_gpus(gpus)
    expert_gpu = (contiguous_placement(model_spec.num_experts, gpus) if placement is None
                  else check_placement(placement, model_spec.num_experts, gpus))
    cost = CostModel(system_spec, model_spec, gpu_other_s=gpu_other_s, pim_fixed_s=pim_fixed_s)
    return get_policy(policy).plan(np.asarray(counts), expert_gpu, gpus, cost)
