"""The dispatch / combine role: where a layer call's routed pairs run, and how their outputs come back.

    count (this process's loads; with several ranks, AllGather of the counts) -> the plan's counts
    dispatch (the plan's GPU / PIM share of the pairs to the side that runs them) -> run each side
    combine (each pair's weighted output summed over the token's k slots, in the promoted dtype)

`LocalDispatch` runs every pair in this process; `runtime.distributed.AllToAllDispatch` sends each pair to
the rank of its slot over a process group. Both plan the same way (`Dispatch.plan`): they differ only in
how the counts are gathered, whether the plan must be agreed on, and how rows travel.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from heteromoe.routing.loads import loads_from_topk
from heteromoe.runtime.call import LayerCall
from heteromoe.runtime.split import split_work, token_origins
from heteromoe.runtime.work import WorkSlice
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.replicas import ReplicaPlanner

__all__ = ["GPU_SIDE", "PIM_SIDE", "Dispatch", "LocalDispatch", "RunSide"]

GPU_SIDE, PIM_SIDE = 0, 1

#: How a dispatch runs one side's pairs: (side, hidden [R, d], weights [R, k'], work) -> [P, d] outputs.
RunSide = Callable[[int, torch.Tensor, torch.Tensor, WorkSlice], torch.Tensor]


class Dispatch(ABC):
    """Moves a layer call's pairs to where the plan runs them and their outputs back.

    Class attributes:
        name: for logs and reports.
        local: every pair runs in this process (the fused kernels need it).
    """

    name: ClassVar[str] = ""
    local: ClassVar[bool] = True
    num_gpus: int = 1
    rank: int = 0

    def plan(self, call: LayerCall, policy) -> Plan:
        """The call's plan, made from the counts every process sees; sets `call.loads`."""
        call.loads = loads_from_topk(call.top_k_index, call.layer.num_experts, where=call.layer.name)
        counts, origin = self.counts(call)
        placement = self.placement(call, counts)
        return self.agree(policy.plan(counts, placement, self.num_gpus, call.cost, origin=origin), policy)

    def counts(self, call: LayerCall) -> tuple[np.ndarray, np.ndarray | None]:
        """[E] tokens per expert the plan is made for, and [G, E] their origin GPUs (None: uniform)."""
        return call.loads.counts, token_origins(call.loads, self.num_gpus)

    def placement(self, call: LayerCall, counts: np.ndarray) -> Placement:
        """The placement this call is planned with (a replica planner first observes the counts)."""
        if isinstance(call.placement, ReplicaPlanner):
            return call.placement.observe(counts)
        return call.placement

    def agree(self, plan: Plan, policy) -> Plan:
        """The plan every process runs (one process: this one)."""
        return plan

    @abstractmethod
    def run(self, call: LayerCall, plan: Plan, run_side: RunSide) -> torch.Tensor:
        """Dispatch the pairs by `plan`, run each side's with `run_side`, combine: [T, d] in hidden's dtype."""


class LocalDispatch(Dispatch):
    """Every pair in this process: the plan's two slices of the routed pairs, then the weighted sum."""

    name = "local"
    local = True

    def __init__(self, num_gpus: int = 1) -> None:
        self.num_gpus = int(num_gpus)

    def run(self, call: LayerCall, plan: Plan, run_side: RunSide) -> torch.Tensor:
        hidden, weights = call.hidden, call.top_k_weights
        gpu_work, pim_work = split_work(call.loads, plan)
        out_dtype = call.out_dtype
        pairs_out = torch.zeros(call.num_tokens * call.top_k, hidden.shape[-1], dtype=out_dtype,
                                device=hidden.device)  # (T*k, d)
        for side, work in ((GPU_SIDE, gpu_work), (PIM_SIDE, pim_work)):
            if work.is_empty():
                continue
            pairs_out[work.pair_index_on(hidden.device)] = run_side(side, hidden, weights, work).to(out_dtype)
        return combine(pairs_out, call)


def combine(pairs_out: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """[T*k, d] weighted pair outputs -> [T, d]: summed over each token's k slots, cast to hidden's dtype."""
    return pairs_out.view(call.num_tokens, call.top_k, call.hidden.shape[-1]).sum(dim=1).to(call.hidden.dtype)
