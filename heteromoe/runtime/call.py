"""LayerCall: one MoE layer call's inputs, as the three roles of the executor pass them around."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from heteromoe.cost.model import CostModel
from heteromoe.routing.loads import RoutingLoads
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.sched.plan import Plan

__all__ = ["CallPlan", "LayerCall"]


@dataclass(eq=False, slots=True)
class LayerCall:
    """One layer call (slots: one is made per call, on the host's share of every decode layer).

    Attributes:
        layer: the experts; cost: the layer's cost model.
        placement: a Placement, or a ReplicaPlanner that observes the loads and returns one.
        hidden: [T, d]; top_k_index: [T, k]; top_k_weights: [T, k].
        loads: this process's routing loads, once the dispatch has counted them (None before).
        rank_counts: [G, E] tokens of each expert on each rank, once an all-to-all dispatch has gathered
            them for this call's plan (None before, and with one process); its `run` routes the pairs by them.
    """

    layer: ExpertLayer
    cost: CostModel
    placement: object
    hidden: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor
    loads: RoutingLoads | None = None
    rank_counts: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.top_k_index.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.top_k_index.shape[1])

    @property
    def out_dtype(self) -> torch.dtype:
        """The dtype each pair's weighted output is kept in (transformers' promotion of hidden and weights)."""
        return torch.promote_types(self.hidden.dtype, self.top_k_weights.dtype)


class CallPlan(NamedTuple):
    """What a plan source hands the experts runner for one call.

    Attributes:
        plan: the call's plan on the host (None where it is made on the device, or not at all).
        kernel: keyword arguments of `FusedLayerPath.run` that carry the plan to the fused kernels
            (`gpu_set`, `pim_set_max_tokens`, `gpu_set_nonempty`, `device_plan`, `plan_out`; empty: the kernels'
            own choice, every expert on the GPU).
    """

    plan: Plan | None
    kernel: dict
