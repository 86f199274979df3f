"""Cutting one layer call's routed pairs by a plan: where each slot's range starts, and the two slices.

An expert's pairs are in one order (the counting sort's, or on several ranks (origin rank, local order));
the plan gives each of the expert's slots a consecutive range of that order, slots in slot order, and of
each range the first `gpu_tokens[s]` pairs go to the GPU, the rest to the PIM. `slot_starts` is that
arithmetic, shared by the local split (`split_work`) and the all-to-all dispatch (`runtime.distributed`).
"""
from __future__ import annotations

import numpy as np

from heteromoe.routing.loads import RoutingLoads
from heteromoe.runtime.work import WorkSlice
from heteromoe.sched.plan import Plan, PlanError

__all__ = ["slot_starts", "split_work", "token_origins"]


def slot_starts(plan: Plan) -> np.ndarray:
    """[S] where each slot's range starts within its expert's pairs (the earlier slots of the expert first)."""
    slot_expert = plan.slot_expert
    totals = plan.gpu_tokens + plan.pim_tokens
    by_expert = np.argsort(slot_expert, kind="stable")
    ends = np.cumsum(totals[by_expert])
    first_of_expert = np.searchsorted(slot_expert[by_expert], slot_expert[by_expert])  # index of the expert's first slot
    start = np.empty_like(totals)
    start[by_expert] = ends - totals[by_expert] - np.concatenate([[0], ends])[first_of_expert]
    return start


def token_origins(loads: RoutingLoads, num_gpus: int) -> np.ndarray | None:
    """[G, E] tokens of each expert by origin GPU, with the batch's tokens in contiguous blocks per GPU
    (data-parallel attention: GPU g holds tokens [g T / G, (g+1) T / G)). None on one GPU."""
    if num_gpus == 1:
        return None
    token = loads.order // loads.top_k  # (P,) token of each pair, grouped by expert
    expert = np.repeat(np.arange(loads.num_experts), loads.counts)
    gpu = token * num_gpus // max(loads.num_tokens, 1)
    return np.bincount(gpu * loads.num_experts + expert, minlength=num_gpus * loads.num_experts).reshape(
        num_gpus, loads.num_experts)


def split_work(loads: RoutingLoads, plan: Plan) -> tuple[WorkSlice, WorkSlice]:
    """Cut the routed pairs by the plan: per slot, a range of its expert's pairs; of each range the first
    `gpu_tokens[s]` go to the GPU slice, the rest to the PIM slice.

    Also checks that the two slices together hold every routed pair exactly once.
    """
    order = loads.order
    slot_expert = plan.slot_expert
    start = loads.offsets[slot_expert] + slot_starts(plan)  # where each slot's range starts inside `order`

    def take(begin: np.ndarray, length: np.ndarray) -> WorkSlice:
        used = np.flatnonzero(length > 0)
        offsets = np.zeros(used.size + 1, dtype=np.int64)
        np.cumsum(length[used], out=offsets[1:])
        idx = np.repeat(begin[used] - offsets[:-1], length[used]) + np.arange(offsets[-1])
        return WorkSlice(experts=slot_expert[used], offsets=offsets, pair_index=order[idx], top_k=loads.top_k)

    gpu = take(start, plan.gpu_tokens)
    pim = take(start + plan.gpu_tokens, plan.pim_tokens)
    covered = np.bincount(np.concatenate([gpu.pair_index, pim.pair_index]), minlength=order.shape[0])
    if covered.shape[0] != order.shape[0] or (covered != 1).any():
        raise PlanError(f"plan of policy {plan.policy!r} does not run every routed pair exactly once")
    return gpu, pim
