"""`heteromoe`: ours. Sieve's order with the best split instead of the first stop, token splitting,
and, where the placement has replicas of hot experts, routing them to the least-loaded GPU.

Per GPU, on the slots sorted by token count (descending):
1. evaluate *every* prefix on the GPU and keep the best (with non-negative costs the GPU side grows and
   the PIM side shrinks along the order, so this equals Sieve's first stop; the scan keeps it so for cost
   tables that are not monotone, e.g. measured ones);
2. try splitting the slot just past the boundary (its first k tokens join the GPU) and the last one
   inside it (its last tokens go back to PIM), for every k, and keep a strictly better split. This pays
   where the GPU side is compute-bound (large token counts, fat experts); where the GPU is bound by
   weight reads a partial move costs the whole read and does not help.
With replicas (`sched.replicas`), the same is done once with every token on its home slot and once with
replicated experts routed to their least-loaded GPU; the better plan wins. So it is never worse than
`sieve` on the same homes: Sieve's plan is one of the candidates. Runs in C++
(`heteromoe._C.heteromoe_plan`) with numba / python twins.
"""
from __future__ import annotations

from heteromoe.sched.policy import PlacementContext, Policy, Split
from heteromoe.sched.replicas import route_to_replicas


class HeteromoePolicy(Policy):
    name = "heteromoe"
    summary = "best prefix of Sieve's order on the GPU, one expert split between GPU and PIM, replica routing"

    def _place(self, ctx: PlacementContext) -> Split:
        gpu_tokens, t_gpu, t_pim = ctx.fast_path("heteromoe")
        best = Split(gpu_tokens, t_gpu_s=t_gpu, t_pim_s=t_pim)
        if not ctx.placement.has_replicas:
            return best
        routed = route_to_replicas(ctx.counts, ctx.placement)
        comm = ctx.comm_for(routed)
        r_tokens, r_gpu, r_pim = ctx.fast_path("heteromoe", routed, comm)
        if _makespan(comm, r_gpu, r_pim) < _makespan(ctx.comm_s, t_gpu, t_pim):
            return Split(r_tokens, slot_counts=routed, t_comm_s=comm, t_gpu_s=r_gpu, t_pim_s=r_pim)
        return best


def _makespan(comm, t_gpu, t_pim) -> float:
    return float(max(comm.max(), t_gpu.max(), t_pim.max()))
