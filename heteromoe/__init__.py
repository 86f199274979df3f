"""heteromoe: Mixture-of-Experts inference across GPU and HBM-PIM.

The pipeline, named once (every module uses these stage names):

    routing -> loads -> plan -> (runtime | sim)

- routing: the router's `top_k_index [T, k]` of one MoE layer call;
- loads: tokens per expert and the expert-contiguous order of pairs (`heteromoe.routing`);
- plan: a policy's split of each expert's tokens between the GPU's SMs and its PIM stacks, with
  predicted times from the shared cost models (`heteromoe.sched`, `heteromoe.cost`);
- runtime: executes the plan on backends for real tensors (`heteromoe.runtime`, `heteromoe.wrap`);
- sim: times whole decode steps from plans (`heteromoe.sim`).
"""
from heteromoe.sched import Plan, PlanError, Scheduler, schedule
from heteromoe.spec import MoEModelSpec, SystemSpec, models, systems

__version__ = "0.1.0"


def wrap(model, **kwargs):
    """Wrap a transformers MoE model; see `heteromoe.integrations.hf.wrap`."""
    from heteromoe.integrations.hf import wrap as _wrap

    return _wrap(model, **kwargs)


__all__ = [
    "MoEModelSpec",
    "Plan",
    "PlanError",
    "Scheduler",
    "SystemSpec",
    "__version__",
    "models",
    "schedule",
    "systems",
    "wrap",
]
