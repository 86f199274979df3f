"""`sieve`: Sieve's greedy split (arXiv 2605.11277), per GPU.

1. Sort the GPU's active experts by token count, descending (ties: lower expert id first).
2. Start with all of them on PIM (decode attention on PIM too).
3. Move the hottest remaining expert to the GPU while max(T_comm, T_GPU, T_PIM) strictly falls; stop at
   the first move that does not lower it.
Its PIM estimates come from an EMA table of observed times where the caller keeps one (the step simulator
does), else from the timing model. The decision runs in the C++ fast path (`heteromoe._C.sieve_plan`) or
its numba / python twins.
"""
from __future__ import annotations

from heteromoe.sched.policy import PlacementContext, Policy, Split


class SievePolicy(Policy):
    name = "sieve"
    summary = "Sieve: hottest experts move from PIM to GPU while the max of comm/GPU/PIM time falls"
    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2
    #: plans with the observed PIM times of an EMA table keyed by token count (§5.1), where one is kept
    learns_pim_costs = True

    def _place(self, ctx: PlacementContext) -> Split:
        gpu_tokens, t_gpu, t_pim = ctx.fast_path("sieve")
        return Split(gpu_tokens, t_gpu_s=t_gpu, t_pim_s=t_pim)


SievePolicy._device_rule = (SievePolicy, "sieve")  # the CUDA planner's rule 0 (kernels.DEVICE_RULES)
