"""`sieve`: Sieve's greedy split (arXiv 2605.11277), per GPU.

1. Sort the GPU's active experts by token count, descending (ties: lower expert id first).
2. Start with all of them on PIM.
3. Move the hottest remaining expert to the GPU while max(T_comm, T_GPU, T_PIM) strictly falls; stop at
   the first move that does not lower it.
The decision runs in the C++ fast path (`heteromoe._C.sieve_greedy`) or its numba / numpy twins.
"""
from __future__ import annotations

import numpy as np

from heteromoe import _ext
from heteromoe.sched.policy import PlacementContext, Policy


def greedy_order(counts: np.ndarray, expert_gpu: np.ndarray, num_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """Active experts grouped by GPU, each group by count descending.

    Returns:
        order: [A] expert ids (A = experts with tokens).
        seg: [G+1] GPU g's experts are `order[seg[g]:seg[g+1]]`.
    """
    active = np.flatnonzero(counts > 0)
    # lexsort: last key is primary -> by GPU, then count descending, then expert id
    order = active[np.lexsort((active, -counts[active], expert_gpu[active]))]
    seg = np.zeros(num_gpus + 1, dtype=np.int64)
    np.cumsum(np.bincount(expert_gpu[order], minlength=num_gpus), out=seg[1:])
    return order.astype(np.int64), seg


class SievePolicy(Policy):
    name = "sieve"
    summary = "Sieve: hottest experts move from PIM to GPU while the max of comm/GPU/PIM time falls"

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        counts, cost, G = ctx.counts, ctx.cost, ctx.num_gpus
        order, seg = greedy_order(counts, ctx.expert_gpu, G)
        comm = cost.comm_s(counts, ctx.expert_gpu, G)
        moved = _ext.sieve_greedy(
            order, seg,
            cost.gpu.read_s(counts), cost.gpu.flop_s(counts), cost.pim.times_s(counts),
            comm, np.full(G, cost.gpu_other_s), cost.gpu.launch_s, np.full(G, cost.pim_fixed_s),
        )
        gpu_tokens = np.zeros_like(counts)
        for g in range(G):
            chosen = order[seg[g]:seg[g] + moved[g]]
            gpu_tokens[chosen] = counts[chosen]
        return gpu_tokens
